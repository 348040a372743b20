"""vqclip: an optimised inference engine for CLIP and VQGAN."""
__version__ = "0.1.0"

__all__ = ["__version__"]
