"""Loading real checkpoints from local paths, safely and strictly."""
from engine.checkpoints._io import read_tensors

__all__ = ["read_tensors"]
