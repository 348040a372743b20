"""A Triton Inference Server model repository for an export folder.

One model per exported graph, named ``{model}_{component}[_{precision}]`` (``_trt_`` for
TensorRT plans), each ``<repo>/<name>/config.pbtxt`` plus ``<repo>/<name>/1/model.onnx``
(or ``model.plan``). The config gives the platform (``onnxruntime_onnx`` /
``tensorrt_plan``), ``max_batch_size`` with dynamic batching, and the inputs/outputs
with the batch dim left out, -1 for the other dynamic dims. int8 graphs hold ONNX
Runtime CPU kernels (MatMulIntegerToFloat), so their instances are pinned to the CPU.

Written atomically per model: built in a temp folder beside the repository, then each
model folder is renamed in; an existing model folder is refused unless ``force``.

Example::

    write_triton_repo(read_manifest("exports/vit-b-32"), Path("triton-models"))
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from vqclip._files import make_temp_dir
from vqclip.errors import OutputExistsError
from vqclip.manifest import GraphRecord, Manifest, TensorSpec

log = logging.getLogger(__name__)

__all__ = ["write_triton_repo", "triton_model_name", "render_config", "DEFAULT_MAX_BATCH"]

DEFAULT_MAX_BATCH = 64
_TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def triton_model_name(model: str, record: GraphRecord) -> str:
    """``vit-b-32_image_encoder``, ``vit-b-32_image_encoder_int8``, ``vit-b-32_image_encoder_trt_fp16``."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", model).strip("_").lower() or "model"
    name = f"{base}_{record.component}"
    if record.format == "tensorrt":
        return f"{name}_trt_{record.precision}"
    return name if record.precision == "fp32" else f"{name}_{record.precision}"


def _tensor(spec: TensorSpec) -> str:
    dims = [d if isinstance(d, int) else -1 for d in spec.shape[1:]]  # batch is Triton's own
    return (f'  {{\n    name: "{spec.name}"\n    data_type: {_TRITON_DTYPES[spec.dtype]}\n'
            f'    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}')


def render_config(name: str, record: GraphRecord, max_batch_size: int = DEFAULT_MAX_BATCH) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``)."""
    platform = "tensorrt_plan" if record.format == "tensorrt" else "onnxruntime_onnx"
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(_tensor(s) for s in record.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(s) for s in record.outputs) + "\n]",
        "dynamic_batching { }",
    ]
    if record.precision == "int8" and record.format == "onnx":
        lines.append("instance_group [\n  {\n    kind: KIND_CPU\n    count: 1\n  }\n]")
    return "\n".join(lines) + "\n"


def _place(src: Path, dst: Path) -> None:
    # A hard link costs nothing for GB-sized graphs; copy across file systems.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_triton_repo(manifest: Manifest, repo: str | Path, *, force: bool = False,
                      max_batch_size: int = DEFAULT_MAX_BATCH) -> list[str]:
    """Add one Triton model per graph in ``manifest`` to ``repo``; returns the model names.

    ``repo`` is created if missing; other models in it are left alone. Raises
    ``OutputExistsError`` (before writing anything) when a model folder exists and
    ``force`` is off.
    """
    repo = Path(repo)
    names = {triton_model_name(manifest.model, g): g for g in manifest.graphs}
    clash = sorted(n for n in names if (repo / n).exists())
    if clash and not force:
        raise OutputExistsError(f"{repo}: model folders {', '.join(clash)} already exist; "
                                "pass --force to replace them or choose another --triton repository")
    repo.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{repo.name}.tmp-", repo.parent)
    try:
        for name, record in names.items():
            (tmp / name / "1").mkdir(parents=True)
            suffix = "plan" if record.format == "tensorrt" else "onnx"
            _place(manifest.path(record), tmp / name / "1" / f"model.{suffix}")
            (tmp / name / "config.pbtxt").write_text(render_config(name, record, max_batch_size))
        for name in names:
            if (repo / name).exists():
                shutil.rmtree(repo / name)
            (tmp / name).rename(repo / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %d Triton models to %s", len(names), repo)
    return list(names)
