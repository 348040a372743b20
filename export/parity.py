"""Parity of an exported graph with the PyTorch module it came from, at export time.

Each graph runs on ONNX Runtime's CPU provider beside the torch module (fp32, CPU) on the
component's fixed inputs; the figures go into the manifest, and a graph outside its
tolerance fails the export (``ParityError`` with the whole report).

Tolerances and why:
- fp32: max |diff| <= 1e-4 on the L2-normalised embeddings (float32 rounding through ~12
  layers reorders sums; a real bug, e.g. a lost mask, moves them by > 1e-2). For the VQGAN
  graphs, whose outputs are not unit vectors, the bound is relative: max |diff| <= 1e-4
  times the reference's max |value| (a 30-conv decoder accumulates the same rounding).
- fp16: cosine >= 0.999 per sample (fp16's 11-bit mantissa gives ~1e-3 relative error
  per op; LayerNorm, softmax and the final norm stay fp32).
- int8: cosine >= 0.99 per sample, and where a ``ZeroShotProbe`` is given, top-1 agreement
  with the torch model >= 99 %.

Example::

    report = measure(component, "fp16", Path("d/image_encoder.fp16.onnx"))
    report.check()  # raises ParityError when outside tolerance
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vqclip.errors import ParityError
from vqclip.export.graphs import Component
from vqclip.manifest import min_row_cosine

log = logging.getLogger(__name__)

__all__ = ["TOLERANCES", "ParityReport", "ZeroShotProbe", "measure", "zero_shot_agreement", "write_selftest",
           "SELFTEST_SAMPLES"]

SELFTEST_SAMPLES = 3  # inputs in a graph's self-test: enough to catch a broken kernel, small on disk

# precision -> (max abs diff bound or None, min cosine bound or None, min zero-shot agreement)
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_diff": 1e-4},
    "fp16": {"min_cosine": 0.999},
    "int8": {"min_cosine": 0.99, "zero_shot_agreement": 0.99},
}


@dataclass
class ZeroShotProbe:
    """A labelled set for the zero-shot agreement check (the bundled held-out set).

    ``pixels`` float32 (N, 3, S, S) preprocessed images; ``label_ids`` int64 (K, T)
    tokenised prompts, one per class. Agreement is the fraction of images whose top-1
    class under the exported graphs equals the torch model's.
    """

    pixels: torch.Tensor  # (N, 3, S, S)
    label_ids: torch.Tensor  # (K, T)


@dataclass
class ParityReport:
    """What was measured for one graph, against which bounds."""

    component: str
    precision: str
    max_abs_diff: float
    min_cosine: float
    n_samples: int
    zero_shot_agreement: float | None = None  # None: not measured (no probe)
    bounds: dict[str, float] = field(default_factory=dict)

    def failures(self) -> list[str]:
        """One line per bound broken; empty when within tolerance."""
        out = []
        for key, bound in self.bounds.items():
            value = getattr(self, key)
            if value is None:
                continue
            ok = value <= bound if key == "max_abs_diff" else value >= bound
            if not ok:
                out.append(f"{self.component} {self.precision}: {key} {value:.6g} "
                           f"{'>' if key == 'max_abs_diff' else '<'} {bound:g}")
        return out

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "min_cosine": self.min_cosine,
                "zero_shot_agreement": self.zero_shot_agreement, "n_samples": self.n_samples,
                "bounds": dict(self.bounds)}


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # the fp16 graphs' Cast warnings are expected
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_run_errors() -> tuple[type[BaseException], ...]:
    # ONNX Runtime's own exception types (they derive from Exception only) for a run that fails.
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("InvalidArgument", "Fail", "RuntimeException")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def _run(path: Path, component: Component, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    sess = _session(path)
    feed = {spec.name: t.numpy() for spec, t in zip(component.inputs, inputs)}
    return sess.run(None, feed)[0]


def measure(component: Component, precision: str, path: Path) -> ParityReport:
    """Run the graph at ``path`` and the torch module on the component's parity inputs
    (``parity_inputs`` and each of ``parity_more``, the worst of them reported).

    Cosine is per sample over the flattened output, in float64. For graphs whose outputs
    are not unit vectors, ``max_abs_diff`` is divided by the reference's max |value| so
    one bound fits any scale. A graph that cannot run one of the input shapes (it kept a
    traced size) raises ``ParityError`` naming that shape.
    """
    diff, cos_min, n = 0.0, 1.0, 0
    for inputs in [component.parity_inputs(), *component.parity_more()]:
        with torch.no_grad():
            ref = component.module(*inputs).double().numpy()  # (B, ...)
        try:
            got = _run(path, component, inputs).astype(np.float64)
        except _ort_run_errors() as e:  # e.g. InvalidArgument for an input dim the graph fixed
            shapes = [list(t.shape) for t in inputs]
            raise ParityError(f"{path.name} cannot run inputs of shape {shapes}, which the torch module "
                              f"takes ({str(e).splitlines()[0][:200]}); a dynamic axis was lost in export") from e
        if got.shape != ref.shape:
            raise ParityError(f"{path.name}: output shape {got.shape}, the torch module gives {ref.shape}")
        d = float(np.abs(got - ref).max())
        if not component.normalised:
            d /= max(float(np.abs(ref).max()), 1e-12)
        diff, cos_min, n = max(diff, d), min(cos_min, min_row_cosine(ref, got)), n + len(ref)
    bounds = {k: v for k, v in TOLERANCES[precision].items() if k != "zero_shot_agreement"}
    return ParityReport(component.name, precision, diff, cos_min, n, bounds=bounds)


def zero_shot_agreement(image: Component, text: Component, image_path: Path, text_path: Path,
                        probe: ZeroShotProbe) -> float:
    """Fraction of ``probe`` images whose top-1 label from the graphs matches torch's."""
    with torch.no_grad():
        ref = (image.module(probe.pixels) @ text.module(probe.label_ids).T).argmax(1).numpy()  # (N,)
    got_img = _run(image_path, image, (probe.pixels,))  # (N, E)
    got_txt = _run(text_path, text, (probe.label_ids,))  # (K, E)
    got = (got_img @ got_txt.T).argmax(1)
    return float((got == ref).mean())


def write_selftest(component: Component, precision: str, directory: Path) -> dict:
    """Write ``{component}.{precision}.selftest.npz`` into ``directory``: the first
    ``SELFTEST_SAMPLES`` parity inputs and the PyTorch module's outputs for them; return its
    manifest record ``{"file", "sha256", "min_cosine", "n"}``.

    Float inputs are stored as float16 and the reference is computed from those rounded
    values, so the file stays small (ViT-B/32: ~1 MB) and the comparison exact. A backend
    runs the graph on them where it is opened (``vqclip.backends``), so a graph whose
    kernels misbehave on that CPU is refused instead of giving wrong embeddings.
    """
    from vqclip._hashing import sha256_file
    from vqclip.manifest import selftest_filename

    (x,) = (t[:SELFTEST_SAMPLES] for t in component.parity_inputs())
    stored = x.half() if x.is_floating_point() else x
    with torch.no_grad():
        ref = component.module(stored.float() if x.is_floating_point() else stored).float().numpy()
    path = directory / selftest_filename(component.name, precision)
    with open(path, "wb") as f:
        np.savez(f, inputs=stored.numpy(), outputs=ref)
    return {"file": path.name, "sha256": sha256_file(path), "min_cosine": TOLERANCES[precision]["min_cosine"],
            "n": len(ref)}
