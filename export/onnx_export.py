"""torch -> ONNX for one component: trace, name, mark dynamic axes, check.

Uses the ``torch.export``-based exporter (``dynamo=True``, the default since PyTorch 2.9;
the TorchScript one is deprecated), at ``OPSET`` (18: the exporter's native opset, and one
that ONNX Runtime >= 1.14 and TensorRT >= 8.6 parse; it has LayerNormalization as one op,
which keeps the fp16 conversion's block list simple). The graph is then checked with
``onnx.checker.check_model(full_check=True)`` and its I/O is compared with the
component's spec, so a renamed or re-typed input never reaches a manifest.

Example::

    export_onnx(component, Path("out/image_encoder.onnx"))
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import onnx
import torch

from vqclip.export.graphs import Component
from vqclip.manifest import TensorSpec

log = logging.getLogger(__name__)

__all__ = ["OPSET", "export_onnx", "graph_io", "check_graph"]

OPSET = 18
_MAX_PROTO_BYTES = 2**31 - 2**26  # protobuf's 2 GB limit, less room for the graph itself

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}


def export_onnx(component: Component, path: Path, opset: int = OPSET) -> None:
    """Export ``component.traced()`` to a self-contained ONNX file at ``path`` and check it.

    Raises ``NotImplementedError`` when the weights need ONNX external data (> 2 GB; none
    of the zoo's models do per component), ``RuntimeError`` when the exported graph's I/O
    differs from the component's spec (a bug in the wrapper, not user input).
    """
    module = component.traced()
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    if n_bytes > _MAX_PROTO_BYTES:
        raise NotImplementedError(f"{component.name}: {n_bytes / 2**30:.1f} GiB of weights needs ONNX "
                                  "external data, which this exporter does not write yet")
    names_in = [s.name for s in component.inputs]
    # Trace with placeholder output names: the exporter names intermediate values after
    # their ops, so "embedding" (the token-embedding Gather) would clash with the output.
    names_out = [f"vqclip_output_{i}" for i in range(len(component.outputs))]
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            module, component.dummy(), input_names=names_in, output_names=names_out,
            dynamic_shapes=component.dynamic_shapes, opset_version=opset, dynamo=True,
            external_data=False, verbose=False, optimize=True,
        )
    model = program.model_proto
    for tmp_name, spec in zip(names_out, component.outputs):
        _rename_value(model, spec.name, f"{spec.name}_inner")  # free the name
        _rename_value(model, tmp_name, spec.name)
    _rename_dims(model, component)
    onnx.save_model(model, str(path))
    check_graph(path, component)
    log.info("exported %s (%d nodes, opset %d)", path.name, len(model.graph.node), opset)


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notes that are about torch itself, not the user's model.

    It logs a warning per torchvision op it cannot register when torchvision is absent
    (vqclip does not need it) and torch.export raises a FutureWarning about its own
    pytree internals; neither says anything about the graph being exported.
    """
    reg = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = reg.level
    reg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*treespec.*LeafSpec", category=FutureWarning)
            warnings.filterwarnings("ignore", module=r"torch\.onnx")
            yield
    finally:
        reg.setLevel(level)


def _rename_value(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a value everywhere it appears (node inputs/outputs, graph I/O, value_info)."""
    g = model.graph
    for node in g.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name == old:
                    field[i] = new
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.name == old:
            vi.name = new


def _rename_dims(model: onnx.ModelProto, component: Component) -> None:
    """Give the graph's dynamic dims the spec's names ("batch", "h"), so tools show them."""
    for specs, values in ((component.inputs, model.graph.input), (component.outputs, model.graph.output)):
        for spec, vi in zip(specs, values):
            for dim, want in zip(vi.type.tensor_type.shape.dim, spec.shape):
                if isinstance(want, str):
                    dim.ClearField("dim_value")
                    dim.dim_param = want


def graph_io(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's declared inputs and outputs as ``TensorSpec`` (dynamic dims by name)."""

    def spec(vi: onnx.ValueInfoProto) -> TensorSpec:
        tt = vi.type.tensor_type
        dims = tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in tt.shape.dim)
        return TensorSpec(vi.name, _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)), dims)

    inits = {i.name for i in model.graph.initializer}
    return ([spec(v) for v in model.graph.input if v.name not in inits],
            [spec(v) for v in model.graph.output])


def check_graph(path: Path, component: Component) -> None:
    """``onnx.checker`` with ``full_check`` (strict shape inference) and the I/O spec check."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    inputs, outputs = graph_io(model)
    if inputs != list(component.inputs) or outputs != list(component.outputs):
        raise RuntimeError(f"{path.name}: graph I/O {inputs} -> {outputs} differs from the spec "
                           f"{list(component.inputs)} -> {list(component.outputs)}")
