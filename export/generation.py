"""The whole VQGAN+CLIP step, forward and backward, as one ONNX graph: generation without autograd.

``GenerationStep`` is the function the graph holds: latents z (J, C, h, w) and this step's
prompts, cutout draws and regulariser weights in; each job's loss per prompt, its
regulariser terms, the decoded image and dL/dz out. Its backward is written with
``torch.func`` (``vjp`` through the decoder, ``grad_and_value`` through cutouts, CLIP and
the losses), with the two custom gradients of the PyTorch loop made explicit: the
straight-through quantiser (the decoder's vjp at the codes *is* dL/dz) and the clamp whose
gradient points back into [0, 1] (``ops.keep_into_range`` between the two).

``trace_step`` runs it under ``make_fx`` with the core ATen decompositions, SDPA on its
math (matmul + softmax) kernel, and ``BACKWARD_DECOMPOSITIONS``: forward-op forms of the
backward ops the ONNX exporter has no translation for (convolution -> transposed
convolution, nearest upsampling -> a block sum, adaptive pooling and grid sampling ->
matmuls and scatter-adds). Each is exact in real arithmetic; only the order of float
additions differs from PyTorch's kernels.

Example::

    step = GenerationStep(clip, vqgan, StepShape(size=(64, 64), cutn=16), mean, std)
    export_step(step, Path("out/generation_step.onnx"))
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vqclip.jobs.generate import ops
from vqclip.jobs.generate.cutouts import PADDINGS, augment, pooled
from vqclip.jobs.generate.ops import REGULARISERS
from vqclip.manifest import TensorSpec

__all__ = ["GRAPH", "REGULARISERS", "StepShape", "GenerationStep", "trace_step", "export_step",
           "BACKWARD_DECOMPOSITIONS"]

GRAPH = "generation_step"
aten = torch.ops.aten


@dataclass(frozen=True)
class StepShape:
    """What a step graph is made for: image size, cutouts per job, prompt and palette slots,
    the warp's padding, jobs per call. Every axis is fixed (the traced backward bakes its
    shapes in); the runtime fills unused prompt, colour and job slots."""

    size: tuple[int, int]  # (width, height) in pixels
    cutn: int
    jobs: int = 1  # jobs stepped per call
    prompts: int = 8  # prompt slots per job; unused slots have weight 0
    palette: int = 1  # palette colour slots per job; unused slots repeat a colour
    padding: str = "zeros"

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise ValueError(f"padding {self.padding!r} is not one of {PADDINGS}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StepShape":
        return cls(**{**d, "size": tuple(d["size"])})


class GenerationStep(nn.Module):
    """One VQGAN+CLIP step for J jobs at once, gradient included (the graph's function).

    Inputs (float32): z, z_ref (J, C, h, w); init_coef (J,): the init regulariser is
    ``init_coef * mean((z - z_ref)^2)``; targets (J, P, E) unit prompt embeddings, weights
    and stops (J, P); grid (J*n, S, S, 2), jitter (J*n, 4), keep (J*n, 1, S, S), noise
    (J*n, 3, S, S): the cutouts' draws (``cutouts.sampling_grid`` ...); reg (J, 4): weights
    of smoothness, symmetry, saturation, palette; palette (J, K, 3).
    Outputs: prompt_loss (J, P), terms (J, 5) (``REGULARISERS``), image (J, 3, H, W) in
    [0, 1], grad (J, C, h, w): the gradient the PyTorch loop's autograd gives z for the sum of
    all losses (straight-through quantiser, clamp-with-gradient rule).
    """

    def __init__(self, clip: nn.Module, vqgan: nn.Module, shape: StepShape, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.clip, self.vqgan, self.shape = clip, vqgan, shape
        self.cut_size = clip.config.image_size
        self.register_buffer("mean", mean.detach().float().reshape(1, 3, 1, 1).clone())
        self.register_buffer("std", std.detach().float().reshape(1, 3, 1, 1).clone())

    def _decode(self, zq: torch.Tensor) -> torch.Tensor:
        return self.vqgan.decoder(self.vqgan.post_quant_conv(zq))

    def forward(self, z, z_ref, init_coef, targets, weights, stops, grid, jitter, keep, noise, reg, palette):
        from torch.func import grad_and_value, vjp

        j, n = z.shape[0], self.shape.cutn
        zq = ops.nearest_codes(z, self.vqgan.quantize.embedding.weight)
        x, decoder_vjp = vjp(self._decode, zq)
        y = (x + 1) / 2

        def losses(img):
            src = pooled(img, self.cut_size).repeat_interleave(n, 0)
            cut = augment(src, grid, jitter, keep, noise, self.shape.padding)
            emb = F.normalize(self.clip.encode_image((cut - self.mean) / self.std), dim=-1)
            per_prompt = ops.prompt_loss(emb.reshape(j, n, -1), targets, weights, stops)  # (J, P)
            terms = torch.stack([ops.smoothness(img), ops.symmetry(img), ops.saturation_loss(img),
                                 ops.palette_loss(img, palette)], 1) * reg  # (J, 4)
            return per_prompt.sum() + terms.sum(), (per_prompt, terms)

        img = y.clamp(0, 1)
        grad_img, (_, (per_prompt, terms)) = grad_and_value(losses, has_aux=True)(img)
        # d/dx of (x + 1) / 2 is 1/2; the straight-through quantiser passes dL/dzq on to z as it is
        (grad,) = decoder_vjp(ops.keep_into_range(grad_img, y) * 0.5)
        diff = z - z_ref
        per_cell = init_coef.view(-1, 1, 1, 1)
        init = init_coef * diff.pow(2).mean(dim=(1, 2, 3))
        grad = grad + per_cell * diff * (2 / diff[0].numel())
        return per_prompt, torch.cat([init[:, None], terms], 1), img, grad

    # ------------------------------------------------------------------ the graph contract
    def specs(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        c = self.vqgan.config.embed_dim
        f = self.vqgan.config.factor
        (w, h), s, e = self.shape.size, self.cut_size, self.clip.config.embed_dim
        p, k = self.shape.prompts, self.shape.palette
        jb = self.shape.jobs
        lat, n = (jb, c, h // f, w // f), jb * self.shape.cutn
        ins = (TensorSpec("z", "float32", lat), TensorSpec("z_ref", "float32", lat),
               TensorSpec("init_coef", "float32", (jb,)), TensorSpec("targets", "float32", (jb, p, e)),
               TensorSpec("weights", "float32", (jb, p)), TensorSpec("stops", "float32", (jb, p)),
               TensorSpec("grid", "float32", (n, s, s, 2)), TensorSpec("jitter", "float32", (n, 4)),
               TensorSpec("keep", "float32", (n, 1, s, s)), TensorSpec("noise", "float32", (n, 3, s, s)),
               TensorSpec("reg", "float32", (jb, 4)), TensorSpec("palette", "float32", (jb, k, 3)))
        outs = (TensorSpec("prompt_loss", "float32", (jb, p)),
                TensorSpec("terms", "float32", (jb, len(REGULARISERS))),
                TensorSpec("image", "float32", (jb, 3, h, w)), TensorSpec("grad", "float32", lat))
        return ins, outs

    def example(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Inputs of the contract's shapes with plausible values (codes, unit targets, mild
        warps), from ``seed``: what the tracer and the export's parity check use."""
        from vqclip.jobs.generate.cutouts import CutoutSpec, additive_noise, draw, keep_mask, sampling_grid

        g = torch.Generator().manual_seed(seed)
        ins, _ = self.specs()
        jobs = self.shape.jobs
        codebook = self.vqgan.quantize.embedding.weight.detach().float()
        _, c, hh, ww = ins[0].shape
        z = codebook[torch.randint(len(codebook), (jobs, hh, ww), generator=g)].permute(0, 3, 1, 2).contiguous()
        z = z + 0.05 * torch.randn(z.shape, generator=g)
        (w, h), s = self.shape.size, self.cut_size
        spec = CutoutSpec(cutn=self.shape.cutn, padding=self.shape.padding)
        params = [draw(spec, g, (h, w), s) for _ in range(jobs)]
        p, k = self.shape.prompts, self.shape.palette
        targets = F.normalize(torch.randn(jobs, p, self.clip.config.embed_dim, generator=g), dim=-1)
        weights = torch.randn(jobs, p, generator=g)
        stops = torch.where(torch.rand(jobs, p, generator=g) < 0.5, -math.inf, 0.1)
        jitter = torch.cat([q.jitter for q in params])
        return (z, torch.zeros_like(z), torch.rand(jobs, generator=g), targets, weights, stops.float(),
                sampling_grid(params, s), jitter, keep_mask(params, s), additive_noise(params, s),
                torch.rand(jobs, 4, generator=g), torch.rand(jobs, k, 3, generator=g))


# ---------------------------------------------------------------------- backward ops as forward ops
def _conv_backward(grad, x, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups, mask):
    """dL/dinput of a convolution as the transposed convolution with the same weights (the
    weights are constants here, so their gradient is never asked for)."""
    if transposed or mask[1] or mask[2]:
        return NotImplemented
    if all(v == 1 for v in stride) and groups == 1:
        # stride 1: the same as a plain convolution with the kernel flipped and its channels
        # swapped, which ONNX Runtime's CPU kernels run faster than ConvTranspose (RESULTS.md)
        pad = [dilation[i] * (weight.shape[2 + i] - 1) - padding[i] for i in range(len(stride))]
        if min(pad) >= 0:
            flipped = weight.transpose(0, 1).flip(list(range(2, weight.dim())))
            return aten.convolution(grad, flipped, None, stride, pad, dilation, False, [0] * len(pad), 1), None, None
    extra = [x.shape[2 + i] - ((grad.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                               + dilation[i] * (weight.shape[2 + i] - 1) + 1) for i in range(len(stride))]
    return aten.convolution(grad, weight, None, stride, padding, dilation, True, extra, groups), None, None


def _upsample_nearest_backward(grad, output_size, input_size, scales_h=None, scales_w=None):
    """Nearest x f upsampling's gradient: the sum over each f x f block (whole factors only)."""
    b, c, h, w = input_size
    oh, ow = output_size
    if oh % h or ow % w:
        return NotImplemented
    return grad.reshape(b, c, h, oh // h, w, ow // w).sum(dim=(3, 5))


def _windows(size: int, out: int) -> list[tuple[int, int]]:
    """Adaptive pooling's windows along one axis: [floor(i*size/out), ceil((i+1)*size/out)) for each i."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _pool_matrix(size: int, out: int, dtype: torch.dtype) -> torch.Tensor:
    """(out, size): row i averages adaptive pooling's window i."""
    m = [[0.0] * size for _ in range(out)]
    for i, (lo, hi) in enumerate(_windows(size, out)):
        m[i][lo:hi] = [1.0 / (hi - lo)] * (hi - lo)
    return torch.tensor(m, dtype=dtype)


def _adaptive_avg_pool(x, output_size):
    """Adaptive average pooling as two matmuls (any sizes, also windows that overlap)."""
    oh, ow = output_size
    return _pool_matrix(x.shape[-2], oh, x.dtype) @ x @ _pool_matrix(x.shape[-1], ow, x.dtype).t()


def _adaptive_avg_pool_backward(grad, x):
    oh, ow = grad.shape[-2:]
    return _pool_matrix(x.shape[-2], oh, grad.dtype).t() @ grad @ _pool_matrix(x.shape[-1], ow, grad.dtype)


def _window_index(size: int, out: int) -> torch.Tensor:
    """(out, k): the positions of each adaptive window along one axis, the last repeated to the
    widest window's length k (a repeat never changes a max, and comes after its original)."""
    bounds = _windows(size, out)
    k = max(hi - lo for lo, hi in bounds)
    return torch.tensor([[min(lo + a, hi - 1) for a in range(k)] for lo, hi in bounds])


def _adaptive_max_pool(x, output_size):
    """Adaptive max pooling where windows overlap or differ in size (ONNX's MaxPool has fixed
    windows): the windows gathered, the max and its flat index, the first in row-major order
    as PyTorch's kernel picks it."""
    b, c, h, w = x.shape
    oh, ow = output_size
    if h % oh == 0 and w % ow == 0:
        return NotImplemented  # fixed windows: the exporter's MaxPool
    rows, cols = _window_index(h, oh), _window_index(w, ow)  # (oh, kh), (ow, kw)
    kh, kw = rows.shape[1], cols.shape[1]
    win = x.index_select(2, rows.flatten()).index_select(3, cols.flatten())  # (B, C, oh*kh, ow*kw)
    win = win.view(b, c, oh, kh, ow, kw).permute(0, 1, 2, 4, 3, 5).reshape(b, c, oh, ow, kh * kw)
    values, pos = win.max(dim=-1)
    flat = rows[:, None, :, None] * w + cols[None, :, None, :]  # (oh, ow, kh, kw): each window's flat indices
    index = flat.reshape(oh * ow, kh * kw).gather(1, pos.reshape(-1, oh * ow).t()).t().reshape(b, c, oh, ow)
    return values, index


def _adaptive_max_pool_backward(grad, x, indices):
    """Each window's gradient to the element its forward chose (``indices``), summed where windows overlap."""
    b, c, h, w = x.shape
    flat = grad.new_zeros(b, c, h * w).scatter_add(2, indices.flatten(2), grad.flatten(2))
    return flat.view(b, c, h, w)


def _unnormalise(coord: torch.Tensor, size: int, padding: int) -> torch.Tensor:
    """grid_sample's source pixel coordinate (align_corners=False) after its padding rule."""
    pos = ((coord + 1) * size - 1) / 2
    if padding == 2:  # reflection about the image's edges (-0.5, size - 0.5)
        span = float(size)
        pos = (pos + 0.5).abs()
        flips = torch.floor(pos / span)
        extra = pos - flips * span
        pos = torch.where(torch.remainder(flips, 2) == 0, extra, span - extra) - 0.5
    if padding in (1, 2):
        pos = pos.clamp(0, size - 1)
    return pos


def _grid_sample_backward(grad, x, grid, interpolation, padding, align_corners, mask):
    """dL/dinput of bilinear ``grid_sample``: each output's gradient scattered to its four
    source pixels with its bilinear weights (the grid is an input, never differentiated)."""
    if interpolation != 0 or align_corners or mask[1]:
        return NotImplemented
    n, c, h, w = x.shape
    ix, iy = _unnormalise(grid[..., 0], w, padding), _unnormalise(grid[..., 1], h, padding)
    x0, y0 = torch.floor(ix), torch.floor(iy)
    fx, fy = ix - x0, iy - y0
    out = grad.new_zeros(n, c, h * w)
    g = grad.flatten(2)
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy),
                           (1, 1, fx * fy)):
        cx, cy = x0 + dx, y0 + dy
        inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
        index = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long().flatten(1)  # (N, So*So)
        out = out.scatter_add(2, index[:, None].expand(n, c, -1), g * (weight * inside).flatten(1)[:, None])
    return out.view(n, c, h, w), None


def _empty_permuted(size, physical_layout, **kwargs):
    """Strides do not exist in ONNX: a plain empty tensor (its values are always written before use)."""
    return torch.empty(size, **kwargs)


BACKWARD_DECOMPOSITIONS = {
    aten.empty_permuted.default: _empty_permuted,
    aten.convolution_backward.default: _conv_backward,
    aten.upsample_nearest2d_backward.default: _upsample_nearest_backward,
    aten._adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten._adaptive_avg_pool2d_backward.default: _adaptive_avg_pool_backward,
    aten.adaptive_max_pool2d.default: _adaptive_max_pool,
    aten.adaptive_max_pool2d_backward.default: _adaptive_max_pool_backward,
    aten.grid_sampler_2d_backward.default: _grid_sample_backward,
}


def trace_step(step: GenerationStep, example: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """The step as an FX graph of forward ATen ops only (what the ONNX exporter translates)."""
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {**core_aten_decompositions(), **BACKWARD_DECOMPOSITIONS}
    with sdpa_kernel(SDPBackend.MATH):  # attention as matmul + softmax, whose backward decomposes
        gm = make_fx(step, decomposition_table=table)(*example)
    return gm.eval()


def export_step(step: GenerationStep, path: Path, opset: int = 18) -> None:
    """Trace ``step`` and write it as a self-contained ONNX graph at ``path``, checked
    against its I/O contract (``onnx_export.export_onnx`` on the traced graph)."""
    from vqclip.export.graphs import Component
    from vqclip.export.onnx_export import _MAX_PROTO_BYTES, export_onnx

    n_bytes = sum(p.numel() * p.element_size() for p in step.parameters())
    if n_bytes > _MAX_PROTO_BYTES:  # checked here: the traced graph holds its weights as constants
        raise NotImplementedError(f"{n_bytes / 2**30:.1f} GiB of weights needs ONNX external data, which this "
                                  "exporter does not write yet")
    ins, outs = step.specs()
    example = step.example()
    graph = Component(GRAPH, trace_step(step, example), ins, outs, dummy=lambda: example,
                      parity_inputs=lambda: example, normalised=False, int8=False)
    export_onnx(graph, path, opset)


# ---------------------------------------------------------------------- the export folder
RECORD = "generation.json"
FORMAT = "vqclip-generation-step"
# The exported step against the exact (float64) step it was traced from, on fixed inputs: its
# dL/dz within a relative 1e-3 of exact, or within twice PyTorch's own fp32 distance from exact,
# because the step is not smooth everywhere (clamps switch a pixel's gradient off past an edge)
# and no fp32 backend can be closer than rounding either side of an edge allows (RESULTS.md).
# Losses within 1e-3; the image within 1e-4.
TOLERANCES = {"grad_cosine": 0.999, "grad_rel_err": 1e-3, "loss_rel_err": 1e-3, "image_max_abs": 1e-4}


def measure_step(step: GenerationStep, path: Path, seed: int = 1) -> dict:
    """The exported graph's outputs (ONNX Runtime, CPU) and the fp32 torch step's, each against
    the float64 torch step on ``step.example(seed)``."""
    import copy

    import numpy as np
    import onnxruntime as ort

    example = step.example(seed)
    exact = copy.deepcopy(step).double()
    with torch.no_grad():
        want = [t.numpy() for t in exact(*[x.double() for x in example])]
        torch32 = [t.double().numpy() for t in step(*example)]
    del exact
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ins, _ = step.specs()
    got = [g.astype(np.float64) for g in sess.run(None, {s.name: t.numpy() for s, t in zip(ins, example)})]

    def rel(a, b):
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

    g, g_ref = got[3].ravel(), want[3].ravel()
    losses = lambda outs: np.concatenate([outs[0].ravel(), outs[1].ravel()])  # noqa: E731
    return {"grad_cosine": float(g @ g_ref / max(np.linalg.norm(g) * np.linalg.norm(g_ref), 1e-30)),
            "grad_rel_err": rel(g, g_ref), "torch_fp32_grad_rel_err": rel(torch32[3].ravel(), g_ref),
            "loss_rel_err": rel(losses(got), losses(want)), "image_max_abs": float(np.abs(got[2] - want[2]).max())}


def within(parity: dict) -> list[str]:
    """The figures of ``parity`` outside ``TOLERANCES`` (empty: it passes)."""
    bad = [] if parity["grad_cosine"] >= TOLERANCES["grad_cosine"] else ["grad_cosine"]
    if not parity["grad_rel_err"] <= max(TOLERANCES["grad_rel_err"], 2 * parity["torch_fp32_grad_rel_err"]):
        bad.append("grad_rel_err")
    return bad + [k for k in ("loss_rel_err", "image_max_abs") if not parity[k] <= TOLERANCES[k]]


@contextlib.contextmanager
def _frozen(*modules: nn.Module):
    """Eval mode and no parameter gradients while tracing (the weights are constants of the
    graph: a parameter that wants its gradient would put a weight gradient into it); restored after."""
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for m in modules:
        m.eval().requires_grad_(False)
    try:
        yield
    finally:
        for sub, training in modes:
            sub.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def export_generation(clip: nn.Module, vqgan: nn.Module, out_dir: str | Path, shape: StepShape, *,
                      mean: tuple[float, ...], std: tuple[float, ...], force: bool = False,
                      tensorrt: bool = False, identity: dict | None = None) -> dict:
    """Write ``out_dir/generation_step.onnx`` and ``generation.json`` (shape, models, parity, versions)
    for this CLIP and VQGAN, validated against the torch step; the record written.

    Built in a temp folder beside ``out_dir`` and renamed: a failed export leaves nothing, and
    ``force`` replaces only a vqclip export (or an empty folder), never a user's files.
    ``identity``: the models' digests as the caller knows them (``Generator.identity``; default:
    ``weights_digest`` of the modules). ``tensorrt``: also build ``generation_step.plan`` (fp32,
    the graph's fixed shapes). NOT RUN in this project: no machine here has TensorRT; without it
    (or a CUDA GPU) this raises ``BackendUnavailableError`` before any work, and nothing in
    vqclip runs the plan yet. Raises ``OutputExistsError`` for an existing ``out_dir`` without
    ``force``, ``ParityError`` when the graph is outside ``TOLERANCES``,
    ``UnsupportedOperationError`` when the models' step does not trace or export.
    """
    import json
    import shutil
    import time

    import onnxruntime

    from vqclip import __version__
    from vqclip._cpus import simd_class
    from vqclip._files import make_temp_dir
    from vqclip._hashing import sha256_file
    from vqclip.checkpoints import weights_digest
    from vqclip.errors import ParityError, UnsupportedOperationError
    from vqclip.export.api import _refuse_existing, _swap_in
    from vqclip.export.onnx_export import OPSET

    out_dir = Path(out_dir)
    if tensorrt:
        from vqclip.export.tensorrt import require_tensorrt

        require_tensorrt()
    _refuse_existing(out_dir, force, "export folder")
    step = GenerationStep(clip, vqgan, shape, torch.tensor(mean), torch.tensor(std))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{out_dir.name}.", out_dir.parent)
    try:
        with _frozen(clip, vqgan):
            t0 = time.perf_counter()
            try:
                export_step(step, tmp / f"{GRAPH}.onnx", OPSET)
            except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:  # the tracer's or exporter's
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise UnsupportedOperationError(f"the generation step of these models does not export to ONNX "
                                                f"({type(e).__name__}: {first}); keep --generation-backend torch"
                                                ) from e
            parity = measure_step(step, tmp / f"{GRAPH}.onnx")
        bad = within(parity)
        if bad:
            raise ParityError(f"the exported generation step is outside tolerance ({', '.join(bad)}: "
                              f"{ {k: parity[k] for k in bad} }, limits {TOLERANCES}); keep --generation-backend torch")
        record = {"format": FORMAT, "version": 1, "graph": f"{GRAPH}.onnx", "shape": shape.to_dict(),
                  "graph_sha256": sha256_file(tmp / f"{GRAPH}.onnx"),
                  "models": identity or {"clip": weights_digest(clip), "vqgan": weights_digest(vqgan)},
                  "mean": list(mean), "std": list(std), "opset": OPSET, "parity": parity, "tolerances": TOLERANCES,
                  "cpu": simd_class(), "seconds": round(time.perf_counter() - t0, 1),
                  "versions": {"vqclip": __version__, "torch": torch.__version__,
                               "onnxruntime": onnxruntime.__version__}}
        if tensorrt:
            from vqclip.export.tensorrt import build_engine

            ins, _ = step.specs()
            record["tensorrt"] = build_engine(tmp / f"{GRAPH}.onnx", tmp / f"{GRAPH}.plan",
                                              {i.name: (i.shape, i.shape, i.shape) for i in ins}, precision="fp32")
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        _swap_in(tmp, out_dir, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
