"""CLIP-guided VQGAN generation ("VQGAN+CLIP"), batched: many jobs step as one.

Each job is a latent z [1, C, h, w] with its own prompts, seed, optimiser and schedule.
A step of the ``Generator`` concatenates the running jobs' z into [J, C, h, w] and runs
one straight-through quantisation, one VQGAN decode, one cutout warp and one CLIP image
encoder call for all of them; each job's loss depends only on its own rows, so the sum's
gradient gives every job exactly its own gradient, and each job's optimiser then steps
its own z. Jobs join and leave between steps (iteration-level batching), which is how
the server serves concurrent generation requests.

Per step, as VQGAN-CLIP's ``generate.py``: z -> nearest codes (straight-through) ->
decoder -> (x+1)/2, clamped with a gradient that points back into [0, 1] -> cutouts and
augmentations -> CLIP normalisation -> image encoder -> spherical distance to each prompt,
weighted -> + regularisers -> optimiser step -> z clamped to the codebook's range.

Example::

    gen = Generator()                                   # the bundled shapes-clip + shapes-vqgan
    job = gen.add_job("a red star", GenerateSettings(steps=100, seed=1), out_dir="out")
    for event in gen.run():                             # one event per job and step
        print(event.step, event.loss)
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from vqclip.errors import BackendUnavailableError, DeviceMemoryError, InvalidInputError, UnsupportedOperationError
from vqclip.jobs.generate import ops
from vqclip.jobs.generate.cutouts import CutoutParams, draw
from vqclip.jobs.generate.cutouts import apply as apply_cutouts
from vqclip.jobs.generate.prompts import Prompt, parse_prompts
from vqclip.jobs.generate.settings import OPTIMISERS, GenerateSettings, init_term, parse_colour

log = logging.getLogger(__name__)
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError  # torch < 2.5

__all__ = ["Generator", "Job", "StepEvent"]

# settings.OPTIMISERS names them; each is the torch.optim class of that name, any case
_OPTIMISERS = {name.lower(): getattr(torch.optim, name) for name in dir(torch.optim)
               if name.lower() in OPTIMISERS and isinstance(getattr(torch.optim, name), type)}


@dataclass
class StepEvent:
    """What one step did for one job: the progress the CLI's bar and the server's stream show."""

    job_id: str
    step: int  # steps done so far
    steps: int  # steps planned
    loss: float  # the job's total loss at this step
    losses: dict[str, float]  # per prompt ("text:a red star:1") and per regulariser
    status: str  # "running", "done", "stopped" (auto-stop), "cancelled", "interrupted"
    steps_per_s: float  # of the batch this job stepped in
    image: np.ndarray | None = None  # (H, W, 3) uint8 when this step saved or previewed one
    saved: list[str] = field(default_factory=list)  # files written at this step

    def to_dict(self) -> dict:
        return {"job_id": self.job_id, "step": self.step, "steps": self.steps, "loss": self.loss,
                "losses": self.losses, "status": self.status, "steps_per_s": self.steps_per_s, "saved": self.saved}


@dataclass
class _Targets:
    """One prompt set's embeddings: unit targets (P, E), signed weights (P,), stops (P,)."""

    prompts: tuple[Prompt, ...]
    embeddings: torch.Tensor
    weights: torch.Tensor
    stops: torch.Tensor


class Job:
    """One generation: its prompts, settings, latent and optimiser state, and outputs."""

    def __init__(self, job_id: str, prompts: list[tuple[Prompt, ...]], settings: GenerateSettings, seed: int,
                 size: tuple[int, int], out_dir: Path | None, name: str):
        self.id, self.prompt_sets, self.settings, self.seed = job_id, prompts, settings, seed
        self.size = size  # (width, height) in pixels
        self.out_dir, self.name = out_dir, name
        self.gen = torch.Generator().manual_seed(seed)  # every random draw of this job, CPU, in a fixed order
        self.targets: list[_Targets] = []
        self.z: torch.Tensor | None = None  # (1, C, h, w), the optimised leaf
        self.z_init: torch.Tensor | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.step = 0
        self.status = "running"
        self.losses: list[float] = []
        self.palette: torch.Tensor | None = None  # (K, 3) colours of the palette loss, made at the first step
        self.best, self.since_best = math.inf, 0
        self.frames: list[np.ndarray] = []  # kept for a video
        self.video = False
        self.checkpoint_every = 0
        self.preview_every = 0
        self.result: np.ndarray | None = None  # the final image, (H, W, 3) uint8
        self.files: list[str] = []

    @property
    def prompt_text(self) -> str:
        return "^".join("|".join(str(p.value) for p in s if p.kind == "text") for s in self.prompt_sets)

    def active_targets(self) -> _Targets:
        """The prompt set in force at this step (a story switches sets every ``story_every`` steps)."""
        n, every = len(self.targets), self.settings.story_every
        if n == 1:
            return self.targets[0]
        i = (self.step // every) % n if every else min(n - 1, self.step * n // self.settings.steps)
        return self.targets[i]


class Generator:
    """A CLIP and a VQGAN on one device, stepping any number of jobs as one batch.

    Args:
        clip: a zoo name, checkpoint path or ``CLIP`` module; None: the bundled shapes-clip.
        vqgan: a zoo name, checkpoint path or ``VQGAN`` module; None: the bundled shapes-vqgan.
            Inits from an image (plain, noise, gradient, image) and zoom need its encoder.
        device: "cpu", "cuda" or "cuda:N".
        dtype: "fp32", or "fp64": slower, but a job then gives the same image whatever jobs it
            is batched with (in fp32, batch-size-dependent rounding can flip a near-tie code
            and the run becomes a different sample; benchmarks/RESULTS.md).
        backend: "torch" (autograd), or "onnxruntime": each step's forward and backward is one
            exported ONNX graph (``graph_step``; CPU, fp32, pooled cutouts).
        step_graph: for "onnxruntime", a folder from ``vqclip export CLIP --generation``; None:
            graphs are exported on first use into the cache.

    Raises ``BackendUnavailableError`` for a CUDA device where PyTorch sees none.
    Not thread-safe: one thread steps it (the server's generation worker).
    """

    def __init__(self, clip: Any = None, vqgan: Any = None, *, device: str = "cpu", dtype: str = "fp32",
                 backend: str = "torch", step_graph: str | Path | None = None):
        from vqclip.checkpoints import load_clip, load_vqgan, weights_digest
        from vqclip.constants import DEFAULT_CLIP, DEFAULT_VQGAN, OPENAI_MEAN, OPENAI_STD
        from vqclip.zoo import record_with_weights

        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device!r} needs a CUDA GPU, but this PyTorch ({torch.__version__}) "
                                          "sees none; use --device cpu")
        self.device = dev
        clip = load_clip(clip or DEFAULT_CLIP) if clip is None or isinstance(clip, (str, Path)) else clip
        vqgan = load_vqgan(vqgan or DEFAULT_VQGAN) if vqgan is None or isinstance(vqgan, (str, Path)) else vqgan
        self.identity = {"clip": weights_digest(clip), "vqgan": weights_digest(vqgan)}
        rec = record_with_weights(self.identity["clip"], "clip")
        mean, std = (rec.weights.mean, rec.weights.std) if rec is not None else (OPENAI_MEAN, OPENAI_STD)
        vrec = record_with_weights(self.identity["vqgan"], "vqgan")
        self.names = {"clip": rec.name if rec else "clip", "vqgan": vrec.name if vrec else "vqgan"}
        if dtype not in ("fp32", "fp64"):
            raise InvalidInputError(f"dtype {dtype!r} is not one of fp32, fp64")
        self.dtype = torch.float64 if dtype == "fp64" else torch.float32
        self.clip = clip.eval().requires_grad_(False).to(dev, self.dtype)
        self.vqgan = vqgan.eval().requires_grad_(False).to(dev, self.dtype)
        self.cut_size = clip.config.image_size
        self.context_length = clip.config.context_length
        self.factor = vqgan.config.factor
        self.native = vqgan.config.resolution  # the side the VQGAN was trained at: the default size
        self.mean = torch.tensor(mean, device=dev, dtype=self.dtype).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=dev, dtype=self.dtype).view(1, 3, 1, 1)
        self.codebook = self.vqgan.quantize.embedding.weight  # (K, C)
        self.z_min, self.z_max = ops.codebook_bounds(self.codebook)
        self.jobs: list[Job] = []
        self.cut_split: dict[tuple[int, int, int], int] = {}  # (w, h, jobs) -> micro-batches, after out of memory
        from vqclip.jobs.generate.graph_step import GENERATION_BACKENDS, GraphStepper

        self.backend = str(backend).lower()
        if self.backend not in GENERATION_BACKENDS:
            raise InvalidInputError(f"generation backend {backend!r} is not one of {', '.join(GENERATION_BACKENDS)}")
        if step_graph is not None and self.backend != "onnxruntime":
            raise InvalidInputError("a step graph folder runs on the onnxruntime generation backend "
                                    "(generate --backend onnxruntime; serve --generation-backend onnxruntime)")
        self.stepper = GraphStepper(self, step_graph) if self.backend == "onnxruntime" else None

    # ------------------------------------------------------------------ jobs
    def default_settings(self) -> GenerateSettings:
        """The settings a job starts from with these models (a tuned preset for the bundled pair)."""
        from vqclip.jobs.generate.settings import preset_for

        return preset_for(self.names["clip"], self.names["vqgan"])

    def add_job(self, prompts: str | list[tuple[Prompt, ...]], settings: GenerateSettings | None = None, *,
                out_dir: str | Path | None = None, name: str | None = None, video: bool = False,
                checkpoint_every: int = 0, preview_every: int = 0, job_id: str | None = None) -> Job:
        """Start a job at the next step: its prompt embeddings and initial z are made now.

        ``prompts``: the prompt string (``"a red star:1|blurry:-0.5^..."``) or parsed sets.
        ``out_dir``: where its PNGs, sidecar, video and checkpoints go (None: kept in memory,
        the final image in ``job.result``). Raises ``InvalidInputError`` for bad prompts or
        settings, ``OutputPathError`` for a folder that cannot be written.
        """
        from vqclip.jobs.generate.outputs import prepare_folder

        settings = (settings or self.default_settings()).checked(self.factor)
        sets = parse_prompts(prompts) if isinstance(prompts, str) else list(prompts)
        if not sets:
            raise InvalidInputError("no prompts were given; give a text prompt such as 'a red star'")
        seed = settings.seed if settings.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        w, h = settings.size or (self.native, self.native)
        folder = prepare_folder(out_dir) if out_dir is not None else None
        job = Job(job_id or uuid.uuid4().hex[:12], sets, settings.with_(seed=seed, size=(w, h)), seed, (w, h),
                  folder, name or _slug(sets, seed))
        job.video, job.checkpoint_every, job.preview_every = video, checkpoint_every, preview_every
        if (settings.init != "random" or settings.zoom_every) and not getattr(self.vqgan, "with_encoder", False):
            raise UnsupportedOperationError(f"init {settings.init!r} and zoom encode images, but the VQGAN was loaded "
                                            "decode-only; load it with its encoder")
        if settings.background_prompt:
            sets = [_with_background(s, settings.background_prompt) for s in sets]
            job.prompt_sets = sets
        job.targets = [self._embed(s, settings.truncate) for s in sets]
        if self.stepper is not None:
            self.stepper.shape_for([job])  # what the step graph cannot run is refused before the job joins
        self._init_latent(job)
        self.jobs.append(job)
        return job

    def cancel(self, job: Job) -> None:
        """Stop ``job`` now; its latest image is written (if it has a folder) and it leaves the batch."""
        if job.status == "running":
            self._finish(job, "cancelled")

    def running(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "running"]

    # ------------------------------------------------------------------ prompts and init
    @torch.no_grad()
    def _embed(self, prompts: tuple[Prompt, ...], truncate: bool) -> _Targets:
        from vqclip.preprocess import Preprocessor, load_image
        from vqclip.tokenizer import tokenize

        rows = []
        for p in prompts:
            if p.kind == "text":
                ids = torch.from_numpy(tokenize([p.value], context_length=self.context_length, truncate=truncate))
                rows.append(self.clip.encode_text(ids.to(self.device)).to(self.dtype)[0])
            elif p.kind == "image":
                pre = Preprocessor(self.cut_size, self.mean.flatten().tolist(), self.std.flatten().tolist())
                px = torch.from_numpy(pre([load_image(p.value)])).to(self.device, self.dtype)
                rows.append(self.clip.encode_image(px).to(self.dtype)[0])
            else:
                g = torch.Generator().manual_seed(int(p.value))
                rows.append(torch.randn(self.clip.config.embed_dim, generator=g).to(self.device, self.dtype))
        emb = F.normalize(torch.stack(rows), dim=-1)  # (P, E)
        weights = torch.tensor([p.weight for p in prompts], device=self.device, dtype=self.dtype)
        stops = torch.tensor([p.stop for p in prompts], device=self.device, dtype=self.dtype)
        return _Targets(prompts, emb, weights, stops)

    @torch.no_grad()
    def _init_latent(self, job: Job) -> None:
        s, (w, h), f = job.settings, job.size, self.factor
        if s.init == "random":
            idx = torch.randint(self.codebook.shape[0], (h // f, w // f), generator=job.gen)
            z = self.codebook[idx.to(self.device)].permute(2, 0, 1)[None]  # (1, C, h, w)
        else:
            z = self._encode(_init_image(s, (w, h), job.gen))
        job.z = z.to(self.dtype).clone().requires_grad_(True)
        job.z_init = job.z.detach().clone()
        job.opt = self._optimiser(job)

    def _encode(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> the VQGAN's quantised latent (1, C, H/f, W/f), where VQGAN-CLIP starts."""
        if not getattr(self.vqgan, "with_encoder", False):
            raise UnsupportedOperationError("this init (or zoom) encodes an image, but the VQGAN was loaded "
                                            "decode-only; load it with its encoder")
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(self.dtype).div(127.5).sub(1)
        return self.vqgan.encode(x.to(self.device))[0]

    def _optimiser(self, job: Job) -> torch.optim.Optimizer:
        return _OPTIMISERS[job.settings.optimiser]([job.z], lr=job.settings.lr)

    # ------------------------------------------------------------------ stepping
    def run(self) -> Iterator[StepEvent]:
        """Step until no job is running, yielding each job's event after each step."""
        while self.running():
            yield from self.step()

    def step(self) -> list[StepEvent]:
        """One optimisation step for every running job (grouped by image size and precision); their events."""
        events: list[StepEvent] = []
        groups: dict[tuple, list[Job]] = {}
        for job in self.running():
            key = (job.size, job.settings.precision)
            if self.stepper is not None:  # one graph shape per group
                key += (job.settings.cutouts.cutn, job.settings.cutouts.padding)
            groups.setdefault(key, []).append(job)
        for jobs in groups.values():
            events += self._step_group(jobs)
        return events

    def _autocast(self, jobs: list[Job]):
        precision = jobs[0].settings.precision
        if precision == "auto":
            precision = _auto_precision(self.device)
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def decode(self, z: torch.Tensor, autocast: Any = None) -> torch.Tensor:
        """Latent (B, C, h, w) -> image (B, 3, H, W) in [0, 1], through the nearest codes.

        The code choice stays fp32 (a bf16 distance would pick other codes); ``autocast``
        (a context) covers the decoder only.
        """
        zq = ops.quantise(z.to(self.dtype), self.codebook)
        with autocast or contextlib.nullcontext():
            x = self.vqgan.decoder(self.vqgan.post_quant_conv(zq))
        return ops.clamp_with_grad((x.to(self.dtype) + 1) / 2)

    def _step_group(self, jobs: list[Job]) -> list[StepEvent]:
        t0 = time.perf_counter()
        img, terms = self._gradients_fitting(jobs) if self.stepper is None else self.stepper.gradients(jobs)
        dt = time.perf_counter() - t0
        events = []
        with torch.no_grad():
            for j, job in enumerate(jobs):
                self._schedule(job)
                job.opt.step()
                job.z.copy_(job.z.maximum(self.z_min).minimum(self.z_max))
                job.step += 1
                loss = sum(terms[j].values())
                job.losses.append(loss)
                events.append(self._after_step(job, img[j], terms[j], loss, len(jobs) / dt))
        return events

    def _gradients_fitting(self, jobs: list[Job]) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """``_gradients``, retried with the cutouts in twice as many micro-batches (pixray's
        "batches": gradients accumulated) after an out-of-memory error, instead of failing;
        the split is kept for this size and job count."""
        key = (*jobs[0].size, len(jobs))
        rng = [j.gen.get_state() for j in jobs]
        most = max(j.settings.cutouts.cutn for j in jobs)
        while True:
            batches = min(most, max(self.cut_split.get(key, 1), *(j.settings.cut_batches for j in jobs)))
            try:
                return self._gradients(jobs, batches)
            except _OUT_OF_MEMORY as e:
                reason = str(e).splitlines()[0] if str(e) else "out of memory"
            # here, outside the handler, the failed attempt's tensors are already released
            for job, state in zip(jobs, rng):
                job.gen.set_state(state)  # the retry draws the same cutouts
                job.opt.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if batches >= most:
                self.cut_split.pop(key, None)
                raise DeviceMemoryError(f"out of {self.device.type} memory stepping {len(jobs)} job(s) at "
                                        f"{key[0]}x{key[1]} even one cutout at a time ({reason}); use a smaller "
                                        "size or fewer jobs")
            self.cut_split[key] = min(most, 2 * batches)
            log.warning("out of %s memory at %d job(s) of %dx%d: running the cutouts in %d micro-batches with "
                        "accumulated gradients from now on", self.device.type, len(jobs), key[0], key[1],
                        self.cut_split[key])

    def _gradients(self, jobs: list[Job], batches: int) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """Forward and backward of one step for ``jobs``, the cutouts in ``batches`` micro-batches:
        the decoded images and each job's loss terms; the gradients are left in each job's z."""
        w, h = jobs[0].size
        for job in jobs:
            job.opt.zero_grad(set_to_none=True)
        z = torch.cat([j.z for j in jobs])  # (J, C, h, w): gradients flow back to each job's leaf
        params = [draw(j.settings.cutouts, j.gen, (h, w), self.cut_size) for j in jobs]
        img = self.decode(z, self._autocast(jobs))  # (J, 3, H, W)
        parts = [_slice_params(params, k, batches) for k in range(batches)]
        terms: list[dict[str, float]] = [{} for _ in jobs]
        for k, part in enumerate(parts):
            with self._autocast(jobs):
                cut = apply_cutouts(part, img, self.cut_size)  # (N_k, 3, S, S)
                emb = self.clip.encode_image((cut - self.mean) / self.std)
            emb = F.normalize(emb.to(self.dtype), dim=-1)  # (N_k, E)
            total = img.new_zeros(())
            start = 0
            for j, job in enumerate(jobs):
                n_k, n = len(part[j].noise), job.settings.cutouts.cutn
                if n_k:  # a job with fewer cutouts than micro-batches sits out the last ones
                    t = job.active_targets()
                    per_prompt = ops.prompt_loss(emb[start:start + n_k], t.embeddings, t.weights, t.stops) * (n_k / n)
                    start += n_k
                    total = total + per_prompt.sum()
                    for prompt, value in zip(t.prompts, per_prompt.detach().tolist()):
                        terms[j][str(prompt)] = terms[j].get(str(prompt), 0.0) + value
                if k == 0:
                    for name, value in self._regularisers(job, img[j:j + 1]).items():
                        total = total + value
                        terms[j][name] = float(value.detach())
            total.backward(retain_graph=k + 1 < batches)
        return img, terms

    def _regularisers(self, job: Job, img: torch.Tensor) -> dict[str, torch.Tensor]:
        s, out = job.settings, {}
        if s.init_weight:
            coef, anchored = init_term(s, job.step)
            out["init"] = F.mse_loss(job.z, job.z_init if anchored else torch.zeros_like(job.z)) * coef
        if s.smoothness:
            out["smoothness"] = ops.smoothness(img).sum() * s.smoothness
        if s.symmetry:
            out["symmetry"] = ops.symmetry(img).sum() * s.symmetry
        if s.saturation:
            out["saturation"] = ops.saturation_loss(img).sum() * s.saturation
        if s.palette_weight:
            if job.palette is None:  # parsed once per job, not per step
                job.palette = torch.tensor([parse_colour(c) for c in s.palette], device=img.device, dtype=img.dtype)
            out["palette"] = ops.palette_loss(img, job.palette).sum() * s.palette_weight
        return out

    def _schedule(self, job: Job) -> None:
        """The learning rate for this step: ``lr``, divided by 10 at each of ``lr_drops``."""
        s = job.settings
        drops = sum(job.step >= f * s.steps for f in s.lr_drops)
        for group in job.opt.param_groups:
            group["lr"] = s.lr * 0.1**drops

    def _after_step(self, job: Job, img: torch.Tensor, terms: dict, loss: float, rate: float) -> StepEvent:
        s = job.settings
        if loss < job.best * (1 - 1e-4):
            job.best, job.since_best = loss, 0
        else:
            job.since_best += 1
        event = StepEvent(job.id, job.step, s.steps, loss, terms, "running", rate)
        pixels = None
        wants = (s.save_every and job.step % s.save_every == 0) or job.video or \
            (job.preview_every and job.step % job.preview_every == 0)
        if wants:
            pixels = _to_uint8(img)
            event.image = pixels
        if job.video:
            job.frames.append(pixels)
        if job.out_dir is not None and s.save_every and job.step % s.save_every == 0 and job.step < s.steps:
            event.saved.append(str(self._save(job, pixels, f"{job.name}-{job.step:05d}.png")))
        if job.out_dir is not None and job.checkpoint_every and job.step % job.checkpoint_every == 0:
            event.saved.append(str(self.save_checkpoint(job)))
        if s.zoom_every and job.step % s.zoom_every == 0 and job.step < s.steps:
            self._zoom(job)
        if job.step >= s.steps:
            event.status = "done"
        elif s.auto_stop and job.since_best >= s.auto_stop:
            event.status = "stopped"
        if event.status != "running":
            event.saved += self._finish(job, event.status)
            event.image = job.result
        return event

    @torch.no_grad()
    def _zoom(self, job: Job) -> None:
        """Zoom mode (VQGAN-CLIP's -zvid): zoom, shift and rotate the current image, encode it
        as the new z, and start the optimiser afresh."""
        from PIL import Image, ImageChops

        s = job.settings
        im = Image.fromarray(self.final_image(job))
        w, h = im.size
        if s.zoom_scale != 1:
            cw, ch = w / s.zoom_scale, h / s.zoom_scale
            im = im.crop(((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)).resize((w, h), Image.LANCZOS)
        if s.zoom_rotate:
            im = im.rotate(s.zoom_rotate, resample=Image.BICUBIC)
        if any(s.zoom_shift):
            im = ImageChops.offset(im, *s.zoom_shift)  # wraps around, as VQGAN-CLIP's shift does
        job.z.copy_(self._encode(np.asarray(im)))
        job.opt = self._optimiser(job)

    # ------------------------------------------------------------------ outputs
    def record(self, job: Job) -> dict:
        """What a result says of itself: prompts, seed, step, every setting, the models."""
        return {"prompts": job.prompt_text, "prompt_sets": [[p.to_dict() for p in s] for s in job.prompt_sets],
                "seed": job.seed, "step": job.step, "steps": job.settings.steps, "status": job.status,
                "settings": job.settings.to_dict(), "models": {k: {"name": self.names[k], "sha256": self.identity[k]}
                                                                for k in ("clip", "vqgan")},
                "loss": job.losses[-1] if job.losses else None, "device": str(self.device),
                "vqclip": _version()}

    def _save(self, job: Job, pixels: np.ndarray, file: str) -> Path:
        from vqclip.jobs.generate.outputs import save_png

        path = save_png(job.out_dir / file, pixels, self.record(job))
        job.files.append(str(path))
        return path

    @torch.no_grad()
    def final_image(self, job: Job) -> np.ndarray:
        """The image of the job's current z (after its last update): (H, W, 3) uint8."""
        return _to_uint8(self.decode(job.z)[0])

    def _finish(self, job: Job, status: str) -> list[str]:
        """Mark ``job`` finished and write its final image, sidecar and video; the files written."""
        from vqclip.jobs.generate.outputs import write_json, write_video

        job.status = status
        job.result = self.final_image(job)
        saved: list[str] = []
        if job.out_dir is not None:
            saved.append(str(self._save(job, job.result, f"{job.name}.png")))
            record = self.record(job) | {"losses": job.losses, "files": job.files}
            saved.append(str(write_json(job.out_dir / f"{job.name}.json", record)))
            if job.video and job.frames:
                saved.append(str(write_video(job.frames + [job.result], job.out_dir / f"{job.name}.mp4")))
        self.jobs.remove(job)
        return saved

    def interrupt(self) -> list[str]:
        """Finish every running job now as "interrupted", writing its latest image; the files written."""
        saved = []
        for job in self.running():
            saved += self._finish(job, "interrupted")
        return saved

    def save_checkpoint(self, job: Job) -> Path:
        """Write ``{name}.ckpt``: z, optimiser state, step, the job's random state and settings."""
        from vqclip.jobs.generate.outputs import save_checkpoint

        state = {"z": job.z.detach().cpu(), "z_init": job.z_init.cpu(), "opt": job.opt.state_dict(),
                 "step": job.step, "rng": job.gen.get_state(), "losses": job.losses,
                 "best": job.best, "since_best": job.since_best, "record": self.record(job)}
        return save_checkpoint(job.out_dir / f"{job.name}.ckpt", state)

    def resume(self, checkpoint: str | Path, *, out_dir: str | Path | None = None, video: bool = False,
               checkpoint_every: int = 0, steps: int | None = None) -> Job:
        """Continue the job saved in ``checkpoint`` (``--resume``); its models must be these.
        ``steps``: run to this many steps in all (default: the saved run's), e.g. to extend a finished run."""
        from vqclip.jobs.generate.outputs import load_checkpoint

        state = load_checkpoint(checkpoint)
        rec = state["record"]
        for k in ("clip", "vqgan"):
            if rec["models"][k]["sha256"] != self.identity[k]:
                raise InvalidInputError(f"checkpoint {str(checkpoint)!r} was made with {k} {rec['models'][k]['name']} "
                                        f"(sha256 {rec['models'][k]['sha256'][:12]}); load that model to resume it")
        sets = [tuple(Prompt(p["kind"], p["value"], p["weight"], -math.inf if p["stop"] is None else p["stop"])
                      for p in s) for s in rec["prompt_sets"]]
        settings = GenerateSettings.from_dict(rec["settings"])
        if steps is not None:
            settings = settings.with_(steps=steps)
        if int(state["step"]) >= settings.steps:
            raise InvalidInputError(f"checkpoint {str(checkpoint)!r} is at step {int(state['step'])} of "
                                    f"{settings.steps}: nothing left to run; pass more steps to continue it")
        job = self.add_job(sets, settings, out_dir=out_dir or Path(checkpoint).parent, name=Path(checkpoint).stem,
                           video=video, checkpoint_every=checkpoint_every)
        with torch.no_grad():
            job.z.copy_(state["z"].to(self.device))
            job.z_init = state["z_init"].to(self.device)
        job.opt.load_state_dict(state["opt"])
        job.step, job.losses = int(state["step"]), list(state["losses"])
        job.best, job.since_best = float(state["best"]), int(state["since_best"])
        job.gen.set_state(state["rng"])
        return job


# ---------------------------------------------------------------------- helpers
def _slice_params(params: list[CutoutParams], k: int, parts: int) -> list[CutoutParams]:
    """Micro-batch ``k`` of ``parts``: every ``parts``-th cutout of each job, from the k-th."""
    if parts == 1:
        return params
    out = []
    for p in params:
        idx = torch.arange(k, max(k, len(p.noise)), parts)  # empty where a job has fewer cutouts than k + 1
        out.append(CutoutParams(p.crops[idx] if len(p.crops) else p.crops, p.warp[idx], p.jitter[idx],
                                p.erase[idx], p.noise[idx], None if p.field is None else p.field[idx]))
    return out


def _with_background(prompts: tuple[Prompt, ...], colour: str) -> tuple[Prompt, ...]:
    """Each positive text prompt that names no background, split into itself and itself "on a
    <colour> background", half the weight each."""
    out: list[Prompt] = []
    for p in prompts:
        if p.kind == "text" and p.weight > 0 and "background" not in str(p.value):
            out += [Prompt("text", p.value, p.weight / 2, p.stop),
                    Prompt("text", f"{p.value} on a {colour} background", p.weight / 2, p.stop)]
        else:
            out.append(p)
    return tuple(out)


def _init_image(s: GenerateSettings, size: tuple[int, int], gen: torch.Generator) -> np.ndarray:
    """The (H, W, 3) uint8 image a non-random init starts from."""
    w, h = size
    if s.init == "image":
        from vqclip.preprocess import load_image

        img = load_image(s.init_image).resize((w, h))
        return np.asarray(img)
    if s.init == "plain":
        rgb = np.array(parse_colour(s.init_colour)) * 255
        return np.broadcast_to(rgb.astype(np.uint8), (h, w, 3)).copy()
    if s.init == "noise":
        return (torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy()
    a, b = torch.rand(2, 3, generator=gen) * 255  # gradient between two random colours, top to bottom
    t = torch.linspace(0, 1, h)[:, None, None]
    return (a * (1 - t) + b * t).expand(h, w, 3).to(torch.uint8).numpy()


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return img.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _slug(sets: list[tuple[Prompt, ...]], seed: int) -> str:
    text = next((str(p.value) for s in sets for p in s if p.kind == "text"), "image")
    slug = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"{slug[:40] or 'image'}-{seed}"


def _auto_precision(device: torch.device) -> str:
    """Half precision where it is faster: CUDA, and CPUs with AMX tiles; fp32 elsewhere (AVX512-BF16
    alone ran slower than fp32 on this project's CPU: benchmarks/RESULTS.md)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from vqclip._cpus import cpu_features

    return "bf16" if "amx_bf16" in cpu_features() else "fp32"


def _version() -> str:
    from vqclip import __version__

    return __version__
