"""From the checked fp32 graph to the fp16 and int8 graphs, optimised and saved.

- fp16: ONNX Runtime's transformer fusions first (``onnxruntime.transformers.optimizer``:
  SkipLayerNormalization, QuickGelu, ... where its patterns match; recorded per graph),
  then ``float16.convert_float_to_float16`` with float32 graph I/O (casts inside) and a
  block list that keeps the numerically fragile ops in fp32: LayerNorm (and its fused
  forms), Softmax, the norm layers of the VQGAN, and the final L2 normalisation (the nodes
  after the last MatMul), whose sum of squares overflows fp16 for large activations.
  The fused contrib ops run on ONNX Runtime's CPU and CUDA providers, not in TensorRT,
  which builds from the fp32 graph instead.
- int8: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights in the 7-bit range,
  activations quantised per batch at run time) on MatMul/Gemm, then ONNX Runtime's
  offline optimisation at the extended level for the CPU provider, saved, so a session
  skips it. The 7-bit weights (``reduce_range``) are what keep the graph right on every
  x86 CPU: without VNNI, ORT's uint8 x int8 GEMM sums pairs of products in int16
  (VPMADDUBSW), which saturates for full-range weights (2 x 255 x 127 > 32767) but not
  for 7-bit ones (2 x 255 x 64 < 32767); with VNNI the same graph runs at full speed.
  uint8 weights would also hold, but run off the VNNI path (benchmarks/bench_int8_formats.py).
  int8 dynamic quantisation is a CPU precision: that is where its kernels are fast. The
  CLIP graphs are traced so that every weight product is a MatMul with an initializer
  (``export.graphs.ImageEncoderGraph``: the patch stem too), so all of them are quantised.
  Not used: ONNX Runtime's fused ``Attention`` / ``QAttention``, which were not faster
  where the MatMuls dominate (benchmarks/RESULTS.md; ``benchmarks/bench_export.py`` times
  ONNX Runtime's own transformer fusions against the saved graph).

Example::

    to_fp16(Path("d/image_encoder.onnx"), Path("d/image_encoder.fp16.onnx"), component)
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from pathlib import Path

import onnx

from vqclip.export.graphs import Component

log = logging.getLogger(__name__)

__all__ = ["to_fp16", "to_int8", "ort_optimize", "FP16_KEEP_FP32"]

# Op types kept in fp32 in fp16 graphs (on top of ONNX Runtime's default list).
FP16_KEEP_FP32 = [
    # mean/variance in fp16 lose the small tail
    "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
    "Softmax",  # exp overflows fp16 above ~11; TensorRT #2564/#2709 saw ViT accuracy drop
    "GroupNormalization", "InstanceNormalization", "ReduceMean",  # VQGAN's GroupNorm, decomposed or not
    "ReduceL2", "ReduceSumSquare",  # L2 norms: squares overflow fp16 past 255
]


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _quiet_fusion_tools():
    """Keep the fusion tools' chatter out of the user's terminal, in our debug log instead.

    Their symbolic shape inference fails on torch.export graphs (an Expand whose target
    shape it cannot follow), which they print and log as warnings on every graph; the only
    effect is that SkipLayerNormalization is not fused, which the manifest's notes show.
    """
    names = ("fusion_skiplayernorm", "fusion_base", "fusion_utils", "onnx_model", "onnx_model_bert",
             "onnx_model_clip")
    saved = {n: logging.getLogger(n).level for n in names}
    out = io.StringIO()
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        with contextlib.redirect_stdout(out):
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
        if out.getvalue().strip():
            log.debug("onnxruntime.transformers said: %s", out.getvalue().strip())


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
    dtype.
    """
    from onnxruntime.transformers import float16

    model = onnx.load(str(src))
    fused: dict = {}
    if component.transformer:
        from onnxruntime.transformers import optimizer

        # opt_level=0: pattern fusions only, no provider-specific session rewrites, so
        # the graph runs on CPU and CUDA providers alike.
        before = Counter(n.op_type for n in model.graph.node)  # the pass edits the proto in place
        with _quiet_fusion_tools():
            opt = optimizer.optimize_model(model, opt_level=0, use_gpu=False, **component.transformer)
        after = Counter(n.op_type for n in opt.model.graph.node)
        # Only ops the pass created: its own statistics also count LayerNormalization
        # nodes that the exporter already wrote as one op.
        fused = {k: after[k] - before[k] for k in opt.get_fused_operator_statistics() if after[k] > before[k]}
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

    _drop_fp16_round_trips(model)
    OnnxModel(model).topological_sort()  # the converter appends its Casts at the end
    # Its value_info keeps some pre-conversion types, which full_check's inference rejects;
    # they are only hints, so drop them and let the runtime infer.
    model.graph.ClearField("value_info")
    onnx.save_model(model, str(dst))
    log.info("fp16 %s: fusions %s, %d tail nodes kept fp32", dst.name, fused or "none", len(block_nodes))
    return fused


def _drop_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Turn Cast(fp32 -> fp16) -> Cast(-> fp32) pairs into Identity; returns how many.

    The converter puts such a pair between two fp32-kept nodes (e.g. ReduceL2 -> Clip ->
    Div of the final normalisation), which rounds the value to fp16 on the way: exactly
    what keeping those nodes in fp32 is meant to avoid. The first Cast's input is always
    fp32 (that is why it was inserted), so the pair is the identity without the rounding.
    """
    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    def cast_to(node: onnx.NodeProto) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    producer = {o: n for n in model.graph.node for o in n.output}
    n_dropped = 0
    for node in model.graph.node:
        first = producer.get(node.input[0]) if node.input else None
        if cast_to(node) == FLOAT and first is not None and cast_to(first) == FLOAT16:
            node.op_type = "Identity"
            node.input[0] = first.input[0]
            del node.attribute[:]
            n_dropped += 1
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    dead = [n for n in model.graph.node if cast_to(n) == FLOAT16 and not any(o in used for o in n.output)]
    for n in dead:
        model.graph.node.remove(n)
    return n_dropped


def to_int8(src: Path, dst: Path) -> None:
    """Write the dynamically quantised int8 graph of ``src`` to ``dst``, CPU-optimised.

    Weights of MatMul/Gemm become int8 in [-64, 64] (symmetric, per tensor; the reduced
    range keeps AVX2's int16 pair sums from saturating), activations are quantised per
    batch at run time; everything else stays fp32.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    raw = dst.with_name(dst.name + ".raw")
    # The quantiser logs on the root logger that a pre-processing pass (symbolic shape
    # inference) is advised; that pass fails on torch.export graphs (see _quiet_fusion_tools)
    # and dynamic quantisation does not need it, so the note is dropped.
    root, note = logging.getLogger(), _DropMessage("pre-processing before quantization")
    root.addFilter(note)
    try:
        quantize_dynamic(src, raw, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                         reduce_range=True)
        ort_optimize(raw, dst)
    finally:
        root.removeFilter(note)
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
