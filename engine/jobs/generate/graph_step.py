"""Generation steps on ONNX Runtime: the exported step graph gives each job's loss and dL/dz.

The ``Generator``'s ``backend="onnxruntime"`` path. Per step, for each group of jobs: their
cutouts are drawn from each job's generator exactly as the PyTorch path draws them, the
draws become the graph's inputs (sampling grid, jitter, erase mask, noise), ONNX Runtime
runs forward and backward in one call, and the gradient is handed to the job's optimiser
(``torch.optim`` on a plain tensor: no autograd graph is built on this path).

A graph is made for one ``StepShape`` (size, cutouts, prompt and palette slots, padding, jobs
per call): given as an export folder (``vqclip export CLIP --generation``), or made on first
use into the cache (``<cache>/generation/``, seconds for the bundled models). On
``device="cuda"`` it runs on ONNX Runtime's CUDA provider (onnxruntime-gpu; NOT RUN here: no
machine of this project has it).

Example::

    gen = Generator(backend="onnxruntime")
    gen.add_job("a red star", GenerateSettings(steps=50, seed=1))
    for event in gen.run():
        ...
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vqclip.errors import BackendUnavailableError, ManifestError, UnsupportedOperationError
from vqclip.jobs.generate.cutouts import additive_noise, draw, keep_mask, sampling_grid
from vqclip.jobs.generate.settings import parse_colour

if TYPE_CHECKING:
    from vqclip.jobs.generate.generator import Generator, Job

log = logging.getLogger(__name__)

__all__ = ["GraphStepper", "GENERATION_BACKENDS"]

GENERATION_BACKENDS = ("torch", "onnxruntime")
_REGULARISERS = ("init", "smoothness", "symmetry", "saturation", "palette")  # the graph's ``terms`` columns
_SETTING_OF = {"init": "init_weight", "smoothness": "smoothness", "symmetry": "symmetry", "saturation": "saturation",
               "palette": "palette_weight"}


def _slots(n: int, least: int) -> int:
    """Slots for n items: ``least``, or the next power of two above it (few graph shapes)."""
    return max(least, 1 << max(0, n - 1).bit_length())


class GraphStepper:
    """Runs a ``Generator``'s steps on exported step graphs, one ONNX Runtime session per shape.

    Args:
        gen: the generator whose models, codebook range and jobs it steps.
        folder: an export folder from ``vqclip export CLIP --generation`` (its shape is the only
            one served; a job of another shape is refused with the command that exports it);
            None: graphs made on first use into the cache.
        jobs_per_call: jobs one graph call steps (bigger groups take several calls).
        threads: ONNX Runtime's intra-op threads (None: the CPUs this process may use).
    """

    def __init__(self, gen: "Generator", folder: str | Path | None = None, *, jobs_per_call: int = 1,
                 threads: int | None = None):
        try:
            import onnxruntime
        except ImportError as e:
            raise BackendUnavailableError("the onnxruntime generation backend needs onnxruntime; "
                                          "pip install onnxruntime") from e
        self.providers = ["CPUExecutionProvider"]
        if gen.device.type == "cuda":  # onnxruntime-gpu: the graph on the GPU, z and the optimiser where torch has them
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise BackendUnavailableError("the onnxruntime generation backend on a GPU needs onnxruntime-gpu "
                                              "(CUDAExecutionProvider), which this onnxruntime lacks; use --device "
                                              "cpu or the torch backend")
            self.providers = [("CUDAExecutionProvider", {"device_id": gen.device.index or 0}), "CPUExecutionProvider"]
        if gen.dtype != torch.float32:
            raise UnsupportedOperationError("the onnxruntime generation backend steps in fp32; drop --fp64 "
                                            "or use the torch backend")
        from vqclip._cpus import available_cpus

        self.ort, self.gen, self.jobs_per_call = onnxruntime, gen, jobs_per_call
        self.threads = threads or available_cpus()
        self.folder = None if folder is None else Path(folder)
        self.sessions: dict[Any, tuple[Any, Any]] = {}  # StepShape -> (session, shape)
        if self.folder is not None:
            self._given = self._read(self.folder)

    # ------------------------------------------------------------------ graphs
    def _read(self, folder: Path) -> Any:
        """The ``StepShape`` of an export folder made for these models (else ``ManifestError``)."""
        from vqclip.export.generation import FORMAT, GRAPH, RECORD, StepShape

        try:
            record = json.loads((folder / RECORD).read_text())
            if record.get("format") != FORMAT:
                raise ValueError(f"format {record.get('format')!r}")
            shape = StepShape.from_dict(record["shape"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ManifestError(f"{str(folder)!r} is not a generation-step export ({e}); make one with "
                                "`vqclip export CLIP --generation --vqgan VQGAN --out DIR`") from None
        for k in ("clip", "vqgan"):
            if record["models"].get(k) != self.gen.identity[k]:
                raise ManifestError(f"the generation step in {str(folder)!r} was exported from another {k} "
                                    f"(sha256 {str(record['models'].get(k))[:12]}); export it from this one")
        if not (folder / f"{GRAPH}.onnx").is_file():
            raise ManifestError(f"{str(folder)!r} has no {GRAPH}.onnx; export it again")
        return shape

    def check(self, settings: Any, size: tuple[int, int], prompts: int = 1) -> None:
        """Refuse (``UnsupportedOperationError``, one line) what the step graph cannot run."""
        s = settings
        if s.cutouts.method != "pooled":
            raise UnsupportedOperationError("the onnxruntime generation backend takes pooled cutouts only "
                                            f"(--cut-method {s.cutouts.method} asked); use the torch backend")
        if s.precision not in ("fp32", "auto"):
            raise UnsupportedOperationError(f"the onnxruntime generation backend steps in fp32 (precision "
                                            f"{s.precision!r} asked); use --precision fp32")
        if self.folder is None:
            return
        g, colours = self._given, len(s.palette)
        if (g.size, g.cutn, g.padding) != (tuple(size), s.cutouts.cutn, s.cutouts.padding) \
                or prompts > g.prompts or colours > g.palette:
            w, h = size
            raise UnsupportedOperationError(
                f"the generation step in {str(self.folder)!r} is for {g.size[0]}x{g.size[1]}, cutn {g.cutn}, "
                f"padding {g.padding}, <= {g.prompts} prompts and {g.palette} colours; this job needs {w}x{h}, cutn "
                f"{s.cutouts.cutn}, padding {s.cutouts.padding}, {prompts} prompts, {colours} colours: export one "
                f"with --size {w} {h} --cutn {s.cutouts.cutn} --padding {s.cutouts.padding} --prompts "
                f"{max(prompts, g.prompts)} --palette {max(1, colours, g.palette)}")

    def shape_for(self, jobs: list["Job"]) -> Any:
        """The graph shape these jobs (one size, cutn and padding) need, checked."""
        from vqclip.export.generation import StepShape

        prompts = max(len(t.prompts) for j in jobs for t in j.targets)
        for job in jobs:
            self.check(job.settings, job.size, prompts)
        if self.folder is not None:
            return self._given
        first = jobs[0].settings
        colours = max(len(j.settings.palette) for j in jobs)
        return StepShape(size=tuple(jobs[0].size), cutn=first.cutouts.cutn, prompts=_slots(prompts, 8),
                         palette=max(1, colours), padding=first.cutouts.padding, jobs=self.jobs_per_call)

    def session(self, shape: Any) -> Any:
        if shape not in self.sessions:
            from vqclip.export.generation import GRAPH

            folder = self.folder if self.folder is not None else self._cached(shape)
            so = self.ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            self.sessions[shape] = self.ort.InferenceSession(str(folder / f"{GRAPH}.onnx"), so,
                                                             providers=self.providers)
        return self.sessions[shape]

    def _cached(self, shape: Any) -> Path:
        """The cache folder holding this shape's graph for these models, exported now if missing."""
        import hashlib

        from vqclip._files import cache_root
        from vqclip.export.generation import export_generation

        key = hashlib.sha256(json.dumps(shape.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        folder = (cache_root() / "generation" /
                  f"{self.gen.identity['clip'][:12]}-{self.gen.identity['vqgan'][:12]}-{key}")
        if folder.is_dir():
            try:
                self._read(folder)
                return folder
            except ManifestError as e:
                log.warning("the cached generation step %s is damaged (%s); exporting it again", folder, e)
        log.info("exporting the generation step for %s (first use of this shape)", shape)
        clip, vqgan = self.gen.clip, self.gen.vqgan
        if self.gen.device.type != "cpu":  # traced and checked on the CPU
            import copy

            clip, vqgan = copy.deepcopy(clip).cpu(), copy.deepcopy(vqgan).cpu()
        export_generation(clip, vqgan, folder, shape, mean=tuple(self.gen.mean.flatten().tolist()),
                          std=tuple(self.gen.std.flatten().tolist()), force=True)
        return folder

    # ------------------------------------------------------------------ a step
    def gradients(self, jobs: list["Job"]) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """One step's forward and backward for ``jobs`` (one size): the decoded images
        (J, 3, H, W) and each job's loss terms; each job's gradient is left in ``job.z.grad``."""
        shape = self.shape_for(jobs)
        sess = self.session(shape)
        per_call = shape.jobs
        images, terms = [], []
        for start in range(0, len(jobs), per_call):
            chunk = jobs[start:start + per_call]
            rows = [self._inputs(job, shape) for job in chunk]
            rows += [rows[-1]] * (per_call - len(chunk))  # unused slots step a copy; its outputs are dropped
            feed = {name: np.concatenate([r[i] for r in rows]) for i, name in enumerate(_INPUTS)}
            prompt_loss, regs, image, grad = sess.run(None, feed)
            for j, job in enumerate(chunk):
                job.z.grad = torch.from_numpy(grad[j:j + 1]).to(job.z.device, job.z.dtype)
                t = job.active_targets()
                out = {str(p): float(v) for p, v in zip(t.prompts, prompt_loss[j])}
                for name, value in zip(_REGULARISERS, regs[j]):
                    if getattr(job.settings, _SETTING_OF[name]):
                        out[name] = float(value)
                terms.append(out)
            images.append(torch.from_numpy(image[:len(chunk)]))
        return torch.cat(images), terms

    def _inputs(self, job: "Job", shape: Any) -> list[np.ndarray]:
        """One job's rows of the graph's inputs, in ``_INPUTS`` order; draws its cutouts."""
        gen, s = self.gen, job.settings
        w, h = job.size
        params = [draw(s.cutouts, job.gen, (h, w), gen.cut_size)]  # the same draws as the torch path
        z = job.z.detach().float().cpu().numpy()
        ref, coef = np.zeros_like(z), 0.0
        if s.init_weight:
            if s.init_mode == "decay":  # as Generator._regularisers
                coef = s.init_weight / (2 * job.step + 1) / 2
            else:
                ref, coef = job.z_init.float().cpu().numpy(), s.init_weight / 2
        t = job.active_targets()
        p, e = shape.prompts, t.embeddings.shape[1]
        targets = np.zeros((1, p, e), np.float32)
        weights = np.zeros((1, p), np.float32)
        stops = np.full((1, p), -math.inf, np.float32)
        n = len(t.prompts)
        targets[0, :n], weights[0, :n], stops[0, :n] = (x.cpu().numpy() for x in (t.embeddings, t.weights, t.stops))
        colours = [parse_colour(c) for c in s.palette] or [(0.0, 0.0, 0.0)]
        palette = np.array([colours + [colours[0]] * (shape.palette - len(colours))], np.float32)
        size = gen.cut_size
        noise = additive_noise(params, size)
        return [z, ref, np.array([coef], np.float32), targets, weights, stops, sampling_grid(params, size).numpy(),
                params[0].jitter.float().numpy(), keep_mask(params, size).numpy(),
                np.zeros((s.cutouts.cutn, 3, size, size), np.float32) if noise is None else noise.numpy(),
                np.array([[s.smoothness, s.symmetry, s.saturation, s.palette_weight]], np.float32), palette]


_INPUTS = ("z", "z_ref", "init_coef", "targets", "weights", "stops", "grid", "jitter", "keep", "noise", "reg",
           "palette")
