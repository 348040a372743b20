"""From the checked fp32 graph to the fp16 and int8 graphs, optimised and saved.

- fp16: ONNX Runtime's transformer fusions first (``onnxruntime.transformers.optimizer``:
  SkipLayerNormalization, QuickGelu, ... where its patterns match; recorded per graph),
  then ``float16.convert_float_to_float16`` with float32 graph I/O (casts inside) and a
  block list that keeps the numerically fragile ops in fp32: LayerNorm (and its fused
  forms), Softmax, the norm layers of the VQGAN, and the final L2 normalisation (the nodes
  after the last MatMul), whose sum of squares overflows fp16 for large activations.
  The fused contrib ops run on ONNX Runtime's CPU and CUDA providers, not in TensorRT,
  which builds from the fp32 graph instead.
- int8: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations
  quantised per batch at run time) on MatMul/Gemm, then ONNX Runtime's offline
  optimisation at the extended level for the CPU provider, saved, so a session skips it.
  int8 dynamic quantisation is a CPU precision: that is where its kernels are fast.

Example::

    to_fp16(Path("d/image_encoder.onnx"), Path("d/image_encoder.fp16.onnx"), component)
"""
from __future__ import annotations

import logging
from pathlib import Path

import onnx

from export.graphs import Component

log = logging.getLogger(__name__)

__all__ = ["to_fp16", "to_int8", "ort_optimize", "FP16_KEEP_FP32"]

# Op types kept in fp32 in fp16 graphs (on top of ONNX Runtime's default list).
FP16_KEEP_FP32 = [
    "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",  # mean/var in fp16 lose the small tail
    "Softmax",  # exp overflows fp16 above ~11; TensorRT #2564/#2709 saw ViT accuracy drop
    "GroupNormalization", "InstanceNormalization", "ReduceMean",  # VQGAN's GroupNorm, decomposed or not
    "ReduceL2", "ReduceSumSquare",  # L2 norms: squares overflow fp16 past 255
]


def _tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes between the last MatMul and the outputs (the final normalisation).

    Walks back from each graph output and stops at MatMul/Gemm nodes, which are not
    included. Nodes without a name get one, as the block list goes by name.
    """
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    producer = {o: n for n in model.graph.node for o in n.output}
    tail, stack = [], [o.name for o in model.graph.output]
    seen: set[str] = set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen or node.op_type in ("MatMul", "Gemm", "FusedMatMul"):
            continue
        seen.add(node.name)
        tail.append(node.name)
        stack.extend(node.input)
    return tail


def to_fp16(src: Path, dst: Path, component: Component) -> dict:
    """Write the fp16 graph of ``src`` to ``dst``; returns the fusion counts applied.

    Graph inputs and outputs stay float32 (token ids stay int64), so callers never change
    dtype. Deterministic: the same ``src`` gives the same bytes.
    """
    from onnxruntime.transformers import float16

    model = onnx.load(str(src))
    fused: dict = {}
    if component.transformer:
        from onnxruntime.transformers import optimizer

        # opt_level=0: pattern fusions only, no provider-specific session rewrites, so
        # the graph runs on CPU and CUDA providers alike.
        opt = optimizer.optimize_model(model, opt_level=0, use_gpu=False, **component.transformer)
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        model = opt.model
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            # The fused ops live in ONNX Runtime's contrib domain; the optimiser only
            # declares it when saving to a file, and shape inference needs it now.
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    block_nodes = _tail_nodes(model) if component.normalised else []
    model = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=float16.DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FP32,
        node_block_list=block_nodes,
    )
    from onnxruntime.transformers.onnx_model import OnnxModel

    OnnxModel(model).topological_sort()  # the converter appends its Casts at the end
    # Its value_info keeps some pre-conversion types, which full_check's inference rejects;
    # they are only hints, so drop them and let the runtime infer.
    model.graph.ClearField("value_info")
    onnx.save_model(model, str(dst))
    log.info("fp16 %s: fusions %s, %d tail nodes kept fp32", dst.name, fused or "none", len(block_nodes))
    return fused


def to_int8(src: Path, dst: Path) -> None:
    """Write the dynamically quantised int8 graph of ``src`` to ``dst``, CPU-optimised.

    Weights of MatMul/Gemm become int8 (symmetric, per tensor), activations are
    quantised per batch at run time; everything else stays fp32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    raw = dst.with_name(dst.name + ".raw")
    try:
        quantize_dynamic(src, raw, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
        ort_optimize(raw, dst)
    finally:
        raw.unlink(missing_ok=True)


def ort_optimize(src: Path, dst: Path, level: str = "extended") -> None:
    """Save ONNX Runtime's optimised form of ``src`` for its CPU provider to ``dst``.

    ``level`` "basic" (provider-independent rewrites) or "extended" (adds CPU fusions such
    as MatMulIntegerToFloat, which make int8 fast). Not "all": layout rewrites tie the
    file to this machine's CPU features.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
