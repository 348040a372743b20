"""The model registry: named configs, bundled weights and their training recipe."""
from engine.zoo.registry import ModelRecord, WeightsRecord, canonical_name, get, list_models, register

__all__ = ["ModelRecord", "WeightsRecord", "canonical_name", "get", "list_models", "register"]
