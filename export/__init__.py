"""The export step: torch -> ONNX (fp32/fp16/int8) -> TensorRT, parity, manifest, Triton.

The contract (the backends and any other loader code against it; change it only with them)

Folder: ``manifest.json`` plus graphs named ``{component}.onnx`` (fp32) and
``{component}.{precision}.onnx`` (fp16, int8; ONNX Runtime-optimised graphs, saved) and
``{component}.{precision}.plan`` (TensorRT), for the components ``image_encoder``,
``text_encoder`` (a CLIP export) and ``vqgan_decoder``, ``vqgan_encoder`` (a VQGAN export;
no encoder for a decode-only model). fp32 is always present.

Graph I/O (every precision; fp16 graphs cast inside, so callers never change dtype):
- image_encoder: ``pixels`` float32 [batch, 3, S, S] (CLIP-normalised) -> ``embedding``
  float32 [batch, E], L2-normalised inside the graph, in fp32 even in fp16 graphs.
- text_encoder: ``input_ids`` int64 [batch, 77] (start, tokens, end-of-text, 0 padding)
  -> ``embedding`` float32 [batch, E], L2-normalised.
- vqgan_decoder: ``latent`` float32 [batch, C, h, w] (the quantised z; dynamic h, w) ->
  ``image`` float32 [batch, 3, f*h, f*w] in about [-1, 1] (post_quant_conv + decoder);
  f = 16 for the zoo's VQGANs.
- vqgan_encoder: ``image`` float32 [batch, 3, H, W] in [-1, 1], H and W multiples of f ->
  ``latent`` float32 [batch, C, H/f, W/f] (after quant_conv, before quantisation).
Batch is dynamic everywhere.

Runtimes: fp32 graphs use standard ONNX ops only (any runtime, TensorRT's parser, Triton).
fp16 graphs may hold ONNX Runtime contrib ops from its transformer fusions (CPU and CUDA
providers). int8 graphs are saved after ONNX Runtime's CPU-provider optimisation and hold
its CPU int8 kernels: run them on the CPU provider. TensorRT plans are built from fp32.

manifest.json (``vqclip.manifest``, its one definition): ``format_version``, ``model``, ``family``,
``source`` {path, sha256, kind}, ``opset``, ``created`` (ISO 8601 UTC), ``versions``
{torch, onnx, onnxruntime, vqclip}, ``config`` (architecture, incl. ``vocab_size`` for
CLIP) and ``graphs``: a list of {``component``, ``precision``, ``format`` ("onnx" |
"tensorrt"), ``file``, ``sha256``, ``inputs``/``outputs`` [{name, dtype, shape (ints
fixed, strings symbolic)}], ``parity`` {max_abs_diff, min_cosine, zero_shot_agreement
(null where not measured), n_samples, bounds}, ``notes``}.

Library::

    from vqclip.export import export_model, read_manifest
    m = export_model("ViT-B/32", "exports/vit-b-32", ["fp32", "fp16", "int8"], weights="ViT-B-32.pt")
    m = read_manifest("exports/vit-b-32")   # verifies every file's sha256 (ManifestError: re-export)
"""
from vqclip.export.api import PRECISIONS, export_model, load_source
from vqclip.export.parity import TOLERANCES, ParityReport, ZeroShotProbe
from vqclip.manifest import GraphRecord, Manifest, read_manifest

__all__ = ["export_model", "load_source", "read_manifest", "Manifest", "GraphRecord", "ParityReport",
           "ZeroShotProbe", "TOLERANCES", "PRECISIONS"]
