"""Loading real checkpoints from local paths, safely and strictly, and naming their weights."""
from vqclip.checkpoints._io import read_tensors
from vqclip.checkpoints.clip import convert_hf_clip, convert_openclip, infer_clip_config, load_clip
from vqclip.checkpoints.identity import weights_digest
from vqclip.checkpoints.vqgan import load_vqgan

__all__ = ["convert_hf_clip", "convert_openclip", "infer_clip_config", "load_clip", "load_vqgan", "read_tensors",
           "weights_digest"]
