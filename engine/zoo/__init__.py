"""The zoo: named model configs, the registry, the shapes world and the bundled weights."""
from vqclip.zoo.records import ModelRecord, WeightsRecord
from vqclip.zoo.registry import canonical_name, get, list_models, record_with_weights, register

__all__ = ["ModelRecord", "WeightsRecord", "canonical_name", "get", "list_models", "record_with_weights", "register"]
