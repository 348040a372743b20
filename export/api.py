"""``export_model``: a model in, a validated export folder (and Triton repository) out.

Steps, per component of the model (``export.graphs``): torch -> fp32 ONNX (checked) ->
parity vs the torch module -> fp16 / int8 graphs -> their parity -> optionally TensorRT
plans -> ``manifest.json``. Everything is written into a temp folder beside ``out_dir``
and renamed into place at the end, so ``out_dir`` is either the complete, validated
export or untouched: a graph outside tolerance, an error or an interrupt leaves nothing
behind.

Example::

    m = export_model("ViT-B/32", "exports/vit-b-32", ["fp32", "int8"], weights="ViT-B-32.pt")
    m.graph("image_encoder", "int8").parity["min_cosine"]   # e.g. 0.9998
"""
from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import onnx
import torch
from torch import nn

from vqclip._files import make_temp_dir
from vqclip._hashing import sha256_file
from vqclip.errors import CheckpointError, OutputExistsError, ParityError
from vqclip.export.graphs import Component, components_for
from vqclip.export.onnx_export import OPSET, check_graph, export_onnx, graph_io
from vqclip.export.parity import TOLERANCES, ParityReport, ZeroShotProbe, measure, write_selftest, zero_shot_agreement
from vqclip.export.precision import to_fp16, to_int8
from vqclip.manifest import GraphRecord, Manifest, graph_filename, read_manifest, write_manifest

log = logging.getLogger(__name__)

__all__ = ["export_model", "load_source", "PRECISIONS"]

PRECISIONS = ("fp32", "fp16", "int8")


def load_source(source: str | Path | nn.Module, weights: str | Path | None = None) -> tuple[nn.Module, str, dict]:
    """Resolve what to export: ``(model in eval mode, model name, source record)``.

    ``source`` is one of:
    - a zoo name: its bundled weights, or ``weights`` (a checkpoint path) loaded strictly
      into the named architecture;
    - a checkpoint path: a Lightning ``.ckpt`` is read as a taming-transformers VQGAN,
      anything else (OpenAI ``.pt``, OpenCLIP, Hugging Face file or folder) as a CLIP;
      for another layout, give the zoo name and ``weights``;
    - a CLIP / VQGAN module (identified by ``vqclip.checkpoints.weights_digest``).

    Raises ``UnknownModelError`` for a name the zoo does not know, ``CheckpointError``
    for a zoo model without weights (random weights are never exported) or a checkpoint
    that does not fit its architecture (the loaders name the keys).
    """
    from vqclip.checkpoints import weights_digest

    if isinstance(source, nn.Module):
        return source.eval(), type(source).__name__.lower(), {"path": None, "sha256": weights_digest(source),
                                                              "kind": "module"}
    from vqclip.zoo import canonical_name, get
    from vqclip.zoo.bundled import weights_file

    path = Path(source).expanduser()
    if weights is None and path.exists():
        model = _load_checkpoint(path, None)
        return model.eval(), path.stem, _file_record(path, model)
    record = get(str(source))  # UnknownModelError lists the known names
    if weights is None:
        if record.weights is None:
            msg = f"model {record.name!r} has no bundled weights and random weights are never exported; give its " \
                  "checkpoint: "
            raise CheckpointError(f"{msg}export_model({record.name!r}, out_dir, weights=PATH)",
                                  cli=f"{msg}vqclip export {record.name} --weights PATH")
        weights = weights_file(record)
    model = _load_checkpoint(Path(weights).expanduser(), record)
    return model.eval(), canonical_name(record.name), _file_record(Path(weights).expanduser(), model)


def _file_record(path: Path, model: nn.Module) -> dict:
    """Where the weights came from and their identity (the file's digest, as everywhere)."""
    from vqclip.checkpoints import weights_digest

    return {"path": str(path.resolve()), "sha256": weights_digest(model), "kind": "file"}


def _load_checkpoint(path: Path, record) -> nn.Module:
    """The model in ``path``: CLIP or VQGAN by the record's family, or by the file's kind."""
    from vqclip import checkpoints

    family = record.family if record is not None else None
    if family is None:
        family = "vqgan" if path.suffix == ".ckpt" else "clip"  # taming saves Lightning .ckpt files
    config = record.config if record is not None else None
    if family == "vqgan":
        return checkpoints.load_vqgan(path, config=config)
    return checkpoints.load_clip(path, config=config)


def _versions() -> dict:
    import onnx
    import onnxruntime

    from vqclip import __version__

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "vqclip": __version__}


def _this_machine() -> dict:
    """The CPU the parity figures are measured on (int8 kernels differ by CPU class)."""
    import platform

    from vqclip._cpus import cpu_features, int8_gemm_path, simd_class

    isa = sorted(f for f in cpu_features() if f.startswith(("avx", "amx", "fma", "f16c", "sse4")))
    return {"machine": platform.machine(), "cpu_class": simd_class(), "int8_gemm": int8_gemm_path(), "flags": isa}


def _export_component(comp: Component, tmp: Path, precisions: list[str],
                      opset: int) -> list[tuple[GraphRecord, ParityReport]]:
    """fp32 graph, then the other precisions from it; each checked and measured, not yet judged."""
    out = []
    fp32 = tmp / graph_filename(comp.name, "fp32")
    t0 = time.perf_counter()
    export_onnx(comp, fp32, opset)
    log.info("%s: exported in %.1f s", comp.name, time.perf_counter() - t0)
    for precision in precisions:
        notes: dict = {}
        if comp.graph is not None:  # provenance: the graph holds this cheaper form of the wrapper
            notes["traced"] = type(comp.graph).__name__
        path = tmp / graph_filename(comp.name, precision)
        if precision == "fp16":
            notes["fusions"] = to_fp16(fp32, path, comp)
            notes["kept_fp32"] = "LayerNorm, Softmax, norm layers, final L2 normalisation"
        elif precision == "int8":
            if not comp.int8:
                log.warning("%s: no int8 graph (dynamic int8 covers MatMul only; this graph is convolutions)",
                            comp.name)
                continue
            to_int8(fp32, path)
            notes["quantisation"] = "dynamic, 7-bit int8 weights of MatMul/Gemm (no AVX2 saturation), CPU-optimised"
        if precision != "fp32":
            check_graph(path, comp)  # the I/O contract holds at every precision
        report = measure(comp, precision, path)
        inputs, outputs = graph_io(onnx.load(str(path), load_external_data=False))
        rec = GraphRecord(comp.name, precision, "onnx", path.name, sha256_file(path), inputs, outputs,
                          notes=notes)
        if precision == "int8":  # its kernels differ by CPU class: a backend re-checks it where it runs
            rec.selftest = write_selftest(comp, precision, tmp)
        out.append((rec, report))
    return out


def _refuse_existing(path: Path, force: bool, what: str) -> None:
    """Refuse an existing ``path``; with ``force``, refuse it unless it is what an export
    writes (a folder with a vqclip manifest) or an empty folder: never a user's files."""
    if not (path.exists() or path.is_symlink()):
        return
    if not force:
        raise _refusal(lambda force: f"{what} {path} already exists; pass {force} to replace it, or choose "
                                     "another path")
    if path.is_symlink() or not path.is_dir():
        raise _refusal(lambda force: f"{path} is a file, not an export folder; {force} replaces only a vqclip "
                                     "export folder (or an empty one): choose another path")
    if any(path.iterdir()) and not _is_export(path):  # someone else's folder
        raise _refusal(lambda force: f"{path} holds files that are not a vqclip export (no manifest.json of "
                                     f"one); {force} replaces only a vqclip export folder or an empty one: "
                                     "choose another path")


def _is_export(path: Path) -> bool:
    """A folder vqclip wrote: a model export (its manifest reads) or a generation-step export."""
    import json

    from vqclip.export.generation import FORMAT, RECORD

    try:
        read_manifest(path, verify=False)
        return True
    except Exception:
        pass
    try:
        return json.loads((path / RECORD).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _refusal(text: Callable[[str], str]) -> OutputExistsError:
    """The refusal worded for Python callers (``force=True``) and for the CLI (``--force``)."""
    return OutputExistsError(text("force=True"), cli=text("--force"))


def export_model(source: str | Path | nn.Module, out_dir: str | Path, precisions: Iterable[str] = ("fp32",), *,
                 tensorrt: bool = False, triton_repo: str | Path | None = None, force: bool = False,
                 weights: str | Path | None = None, probe: ZeroShotProbe | None = None,
                 opset: int = OPSET, name: str | None = None) -> Manifest:
    """Export a CLIP (image + text encoders) or VQGAN (decoder + encoder) to ``out_dir``.

    Args:
        source: zoo name, checkpoint path, or a built CLIP / VQGAN module.
        out_dir: the export folder to create (graphs + ``manifest.json``).
        precisions: any of "fp32", "fp16", "int8"; fp32 is always written (the others and
            TensorRT derive from it). int8 applies to the CLIP encoders only.
        tensorrt: also build ``{component}.{precision}.plan`` engines (fp32/fp16; int8
            needs calibration data). Needs the ``tensorrt`` package and a GPU; checked
            first, so without them nothing is done (``BackendUnavailableError``).
        triton_repo: also add the graphs to this Triton model repository.
        force: replace an existing ``out_dir`` (and Triton model folders).
        weights: checkpoint for a zoo ``source`` without bundled weights.
        probe: labelled images and prompts for the zero-shot agreement check of fp16/int8.
        opset: ONNX opset (recorded in the manifest).
        name: model name for the manifest and Triton (default: from the source).

    Returns the ``Manifest`` as written (``directory`` set to ``out_dir``).

    Raises ``OutputExistsError`` (``out_dir`` exists, no ``force``), ``UnknownModelError``,
    ``CheckpointError``, ``ParityError`` (the report of every graph outside tolerance;
    nothing is written), ``BackendUnavailableError`` (``tensorrt`` without TensorRT/GPU),
    ``ValueError`` for an unknown precision.
    """
    out_dir = Path(out_dir)
    if isinstance(precisions, str):  # "fp16" would otherwise iterate as "f", "p", ...
        precisions = [precisions]
    wanted = list(dict.fromkeys(["fp32", *precisions]))
    bad = [p for p in wanted if p not in PRECISIONS]
    if bad:
        raise ValueError(f"unknown precision {bad}; choose from {', '.join(PRECISIONS)}")
    if tensorrt:
        from vqclip.export.tensorrt import require_tensorrt

        require_tensorrt()
    _refuse_existing(out_dir, force, "export folder")
    model, model_name, source_record = load_source(source, weights)
    model_name = name or model_name
    comps = components_for(model)
    family = "clip" if comps[0].name == "image_encoder" else "vqgan"
    if triton_repo is not None and not force:
        _refuse_triton_clash(Path(triton_repo), model_name, comps, wanted, tensorrt)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{out_dir.name}.tmp-", out_dir.parent)
    try:
        t0 = time.perf_counter()
        results = [r for c in comps for r in _export_component(c, tmp, wanted, opset)]
        if probe is not None and family == "clip" and len(comps) == 2:  # zero-shot needs both towers
            _zero_shot(comps, tmp, results, probe)
        reports = [rep for _, rep in results]
        failures = [line for rep in reports for line in rep.failures()]
        if failures:
            table = "; ".join(failures)
            raise ParityError(f"export of {model_name} failed validation, nothing written: {table}")
        records = []
        for rec, rep in results:
            rec.parity = rep.to_dict()
            records.append(rec)
        if tensorrt:
            records += _build_plans(comps, tmp, wanted)
        manifest = Manifest(model=model_name, family=family, source=source_record, opset=opset,
                            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            versions=_versions(), config=model.config.to_dict(), graphs=records,
                            measured_on=_this_machine(), runtime=model.runtime_info() if family == "clip" else {})
        manifest.config = {k: list(v) if isinstance(v, tuple) else v for k, v in manifest.config.items()}
        write_manifest(manifest, tmp)
        _swap_in(tmp, out_dir, force)
        log.info("exported %s to %s in %.1f s", model_name, out_dir, time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest = read_manifest(out_dir, verify=False)
    if triton_repo is not None:
        from vqclip.export.triton import write_triton_repo

        write_triton_repo(manifest, triton_repo, force=force)
    return manifest


def _refuse_triton_clash(repo: Path, model_name: str, comps: list[Component], precisions: list[str],
                         tensorrt: bool) -> None:
    # Checked before exporting, so a clash costs nothing; write_triton_repo checks again.
    from types import SimpleNamespace

    from vqclip.export.triton import triton_model_name

    planned = [SimpleNamespace(component=c.name, precision=p, format="onnx")
               for c in comps for p in precisions if p != "int8" or c.int8]
    if tensorrt:
        planned += [SimpleNamespace(component=c.name, precision=p, format="tensorrt")
                    for c in comps for p in precisions if p != "int8"]
    for rec in planned:
        _refuse_existing(repo / triton_model_name(model_name, rec), False, "Triton model folder")


def _zero_shot(comps: list[Component], tmp: Path, results: list, probe: ZeroShotProbe) -> None:
    """Record top-1 agreement of each reduced-precision encoder pair with torch, on both records."""
    image, text = comps[0], comps[1]
    for precision in {rec.precision for rec, _ in results} - {"fp32"}:
        agreement = zero_shot_agreement(image, text, tmp / graph_filename("image_encoder", precision),
                                        tmp / graph_filename("text_encoder", precision), probe)
        bound = TOLERANCES[precision].get("zero_shot_agreement")
        for rec, rep in results:
            if rec.precision == precision:
                rep.zero_shot_agreement = agreement
                if bound is not None:
                    rep.bounds["zero_shot_agreement"] = bound


def _build_plans(comps: list[Component], tmp: Path, precisions: list[str]) -> list[GraphRecord]:
    from vqclip.export.tensorrt import build_engine, profile_for

    out = []
    if "int8" in precisions:
        log.warning("TensorRT int8 needs calibration data; building fp32/fp16 engines only")
    for comp in comps:
        for precision in (p for p in precisions if p != "int8"):
            plan = tmp / graph_filename(comp.name, precision, "tensorrt")
            notes = build_engine(tmp / graph_filename(comp.name, "fp32"), plan, profile_for(comp),
                                 precision=precision, timing_cache=tmp / "tensorrt.timing-cache")
            out.append(GraphRecord(comp.name, precision, "tensorrt", plan.name, sha256_file(plan),
                                   list(comp.inputs), list(comp.outputs), notes=notes))
    return out


def _swap_in(tmp: Path, out_dir: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing ``out_dir`` (force) is moved aside first."""
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    _refuse_existing(out_dir, force, "export folder")  # appeared while we worked
    old = out_dir.with_name(f".{out_dir.name}.old-{int(time.time())}")
    out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except OSError:
        old.rename(out_dir)  # put the previous export back rather than lose it
        raise
    shutil.rmtree(old, ignore_errors=True)
