"""Loading real checkpoints from local paths, safely and strictly."""
from engine.checkpoints._io import read_tensors
from engine.checkpoints.clip import convert_hf_clip, convert_openclip, infer_clip_config, load_clip
from engine.checkpoints.vqgan import load_vqgan

__all__ = ["convert_hf_clip", "convert_openclip", "infer_clip_config", "load_clip", "load_vqgan", "read_tensors"]
