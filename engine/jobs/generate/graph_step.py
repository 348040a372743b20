"""Generation steps on ONNX Runtime: the exported step graph gives each job's loss and dL/dz.

The ``Generator``'s ``backend="onnxruntime"`` path. Per step, for each group of jobs: their
cutouts are drawn from each job's generator exactly as the PyTorch path draws them, the
draws become the graph's inputs (sampling grid, jitter, erase mask, noise), ONNX Runtime
runs forward and backward in one call, and the gradient is handed to the job's optimiser
(``torch.optim`` on a plain tensor: no autograd graph is built on this path).

A graph is made for one ``StepShape`` (size, cutouts, prompt and palette slots, padding, jobs
per call): given as an export folder (``vqclip export CLIP --generation``), or made on first
use into the cache (``<cache>/generation/``). On
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
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vqclip.errors import BackendUnavailableError, ManifestError, UnsupportedOperationError, VqclipError
from vqclip.jobs.generate.cutouts import additive_noise, draw, keep_mask, sampling_grid
from vqclip.jobs.generate.ops import REGULARISERS
from vqclip.jobs.generate.settings import init_term, parse_colour

if TYPE_CHECKING:
    from vqclip.jobs.generate.generator import Generator, Job

log = logging.getLogger(__name__)

__all__ = ["GraphStepper", "GENERATION_BACKENDS"]

GENERATION_BACKENDS = ("torch", "onnxruntime")
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
        self.sessions: dict[Any, Any] = {}  # StepShape -> ONNX Runtime session
        self.failed: dict[Any, Exception] = {}  # StepShape -> why its export failed
        self._no_noise: dict[tuple[int, int], torch.Tensor] = {}
        if self.folder is not None:
            self._given = self._read(self.folder)

    # ------------------------------------------------------------------ graphs
    def _read(self, folder: Path, want: Any = None) -> Any:
        """The ``StepShape`` of an export folder made for these models, their normalisation and
        this vqclip, its graph whole (else ``ManifestError``); ``want``: the shape it must be."""
        from vqclip import __version__
        from vqclip._hashing import sha256_file
        from vqclip.export.generation import FORMAT, GRAPH, RECORD, StepShape

        hint = "make one with `vqclip export CLIP --generation --vqgan VQGAN --out DIR`"
        try:
            record = json.loads((folder / RECORD).read_text())
            if record.get("format") != FORMAT:
                raise ValueError(f"format {record.get('format')!r}")
            shape, models = StepShape.from_dict(record["shape"]), dict(record["models"])
            made_by, norm = record["versions"]["vqclip"], (list(record["mean"]), list(record["std"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ManifestError(f"{str(folder)!r} is not a generation-step export ({type(e).__name__}: {e}); "
                                f"{hint}") from None
        for k in ("clip", "vqgan"):
            if models.get(k) != self.gen.identity[k]:
                raise ManifestError(f"the generation step in {str(folder)!r} was exported from another {k} "
                                    f"(sha256 {str(models.get(k))[:12]}); export it from this one")
        if made_by != __version__:  # the step's function may have changed since
            raise ManifestError(f"the generation step in {str(folder)!r} was made by vqclip {made_by}, this is "
                                f"{__version__}; export it again")
        mine = (self.gen.mean.flatten().tolist(), self.gen.std.flatten().tolist())
        if not np.allclose(np.array(norm, dtype=float), np.array(mine, dtype=float), atol=1e-6):
            raise ManifestError(f"the generation step in {str(folder)!r} normalises with mean/std {norm}, this CLIP "
                                f"with {mine}; export it again")
        if want is not None and shape != want:
            raise ManifestError(f"{str(folder)!r} holds a step of shape {shape}, not {want}")
        graph = folder / f"{GRAPH}.onnx"
        if not graph.is_file():
            raise ManifestError(f"{str(folder)!r} has no {GRAPH}.onnx; export it again")
        if record.get("graph_sha256") != sha256_file(graph):
            raise ManifestError(f"{graph} is damaged (its sha256 is not the one recorded at export); export it again")
        return shape

    def check(self, settings: Any, size: tuple[int, int], prompts: int = 1, prompt_sets: list | None = None) -> None:
        """Refuse (``UnsupportedOperationError``, one line) what the step graph cannot run.
        ``prompt_sets``: parsed prompts, counted as the job will hold them (background split included)."""
        s = settings
        if prompt_sets is not None:
            from vqclip.jobs.generate.generator import _with_background

            if s.background_prompt:
                prompt_sets = [_with_background(p, s.background_prompt) for p in prompt_sets]
            prompts = max([prompts, *(len(p) for p in prompt_sets)])
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

    def warm(self, settings: Any, size: tuple[int, int]) -> None:
        """Open the graph of jobs with these settings now (the given folder's; else exported into
        the cache if missing), e.g. when a server starts, so the first job does not wait for it."""
        from vqclip.export.generation import StepShape

        if self.folder is not None:  # the one graph there is
            self.session(self._given)
            return
        self.check(settings, size)
        self.session(StepShape(size=tuple(size), cutn=settings.cutouts.cutn, prompts=8,
                               palette=max(1, len(settings.palette)), padding=settings.cutouts.padding,
                               jobs=self.jobs_per_call))

    def session(self, shape: Any) -> Any:
        if shape in self.failed:  # an export that failed once fails again: not retried for every job
            raise self.failed[shape]
        if shape not in self.sessions:
            from vqclip.export.generation import GRAPH

            try:
                folder = self.folder if self.folder is not None else self._cached(shape)
            except VqclipError as e:
                self.failed[shape] = e
                raise
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

        configs = repr(getattr(self.gen.clip, "config", None)) + repr(getattr(self.gen.vqgan, "config", None))
        key = hashlib.sha256((json.dumps(shape.to_dict(), sort_keys=True) + configs).encode()).hexdigest()[:12]
        folder = (cache_root() / "generation" /
                  f"{self.gen.identity['clip'][:12]}-{self.gen.identity['vqgan'][:12]}-{key}")
        if folder.is_dir():
            try:
                self._read(folder, shape)
                return folder
            except ManifestError as e:
                log.warning("the cached generation step %s is not usable (%s); exporting it again", folder, e)
        for stale in folder.parent.glob(f".{folder.name}.*"):  # a killed export's temp folder, an hour old
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        log.info("exporting the generation step for %s (first use of this shape)", shape)
        clip, vqgan = self.gen.clip, self.gen.vqgan
        if self.gen.device.type != "cpu":  # traced and checked on the CPU
            import copy

            clip, vqgan = copy.deepcopy(clip).cpu(), copy.deepcopy(vqgan).cpu()
        export_generation(clip, vqgan, folder, shape, mean=tuple(self.gen.mean.flatten().tolist()),
                          std=tuple(self.gen.std.flatten().tolist()), force=True, identity=dict(self.gen.identity))
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
            names = [i.name for i in sess.get_inputs()]  # the graph's order: GenerationStep.specs()
            feed = {name: np.concatenate([r[i] for r in rows]) for i, name in enumerate(names)}
            prompt_loss, regs, image, grad = sess.run(None, feed)
            for j, job in enumerate(chunk):
                job.z.grad = torch.from_numpy(grad[j:j + 1]).to(job.z.device, job.z.dtype)
                t = job.active_targets()
                out: dict[str, float] = {}
                for p, v in zip(t.prompts, prompt_loss[j]):  # a prompt given twice counts twice, as in torch
                    out[str(p)] = out.get(str(p), 0.0) + float(v)
                for name, value in zip(REGULARISERS, regs[j]):
                    if getattr(job.settings, _SETTING_OF[name]):
                        out[name] = float(value)
                terms.append(out)
            images.append(torch.from_numpy(image[:len(chunk)]))
        return torch.cat(images), terms

    def _inputs(self, job: "Job", shape: Any) -> list[np.ndarray]:
        """One job's rows of the graph's inputs, in the graph's order; draws its cutouts."""
        gen, s = self.gen, job.settings
        w, h = job.size
        params = [draw(s.cutouts, job.gen, (h, w), gen.cut_size)]  # the same draws as the torch path
        z = job.z.detach().float().cpu().numpy()
        coef, anchored = init_term(s, job.step)
        ref = job.z_init.float().cpu().numpy() if anchored else np.zeros_like(z)
        t = job.active_targets()
        p, e = shape.prompts, t.embeddings.shape[1]
        targets = np.zeros((1, p, e), np.float32)
        weights = np.zeros((1, p), np.float32)
        stops = np.full((1, p), -math.inf, np.float32)
        n = len(t.prompts)
        targets[0, :n], weights[0, :n], stops[0, :n] = (x.cpu().numpy() for x in (t.embeddings, t.weights, t.stops))
        if job.palette is None and s.palette:  # parsed once per job, as the torch path keeps it
            job.palette = torch.tensor([parse_colour(c) for c in s.palette])
        colours = job.palette.tolist() if s.palette else [[0.0, 0.0, 0.0]]
        palette = np.array([colours + [colours[0]] * (shape.palette - len(colours))], np.float32)
        size = gen.cut_size
        noise = additive_noise(params, size)
        if noise is None:  # the graph always adds noise: zeros, made once per shape
            key = (s.cutouts.cutn, size)
            noise = self._no_noise.get(key)
            if noise is None:
                noise = self._no_noise[key] = torch.zeros(s.cutouts.cutn, 3, size, size)
        return [z, ref, np.array([coef], np.float32), targets, weights, stops, sampling_grid(params, size).numpy(),
                params[0].jitter.float().numpy(), keep_mask(params, size).numpy(), noise.numpy(),
                np.array([[s.smoothness, s.symmetry, s.saturation, s.palette_weight]], np.float32), palette]

