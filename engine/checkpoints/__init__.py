"""Loading real checkpoints from local paths, safely and strictly."""
from engine.checkpoints._io import read_tensors
from engine.checkpoints.vqgan import load_vqgan

__all__ = ["read_tensors", "load_vqgan"]
