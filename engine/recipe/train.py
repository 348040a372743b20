"""Training recipe for the bundled shapes models: ``python -m vqclip.recipe.train clip|vqgan ...``.

Reproducible from ``--seed`` (same seed, same steps, same threads: same weights), bounded
by ``--minutes`` (the run stops, evaluates and saves when the budget is spent), and safe
to kill: a checkpoint is written atomically every ``--save-every`` seconds to the output
folder, and ``--resume`` continues from it.

    python -m vqclip.recipe.train clip --out /tmp/shapes-clip --minutes 45 --threads 1
    python -m vqclip.recipe.train vqgan --out /tmp/shapes-vqgan --minutes 44 --threads 2
    python -m vqclip.recipe.train judge --out /tmp/shape-judge

(engine/zoo/MODEL_CARD.md has the exact commands, stages and times of the shipped weights.)

The output folder gets ``last.pt`` (resume state), ``model.safetensors`` (fp32 weights,
OpenAI / taming key layout), ``config.json`` and ``log.jsonl`` (loss and held-out
figures). ``python -m vqclip.recipe.train pack`` writes the fp16 files shipped in
``engine/zoo/weights``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vqclip.errors import OutputPathError, VqclipError
from vqclip.recipe import quality
from vqclip.zoo import shapes
from vqclip.zoo.judge import to_signed

log = logging.getLogger(__name__)

__all__ = ["main", "render_cache", "check_writable", "atomic_save"]


def _clip_config():
    # The architecture lives in the registry (vqclip/zoo/configs.py), so the recipe and the
    # loader can never disagree about it.
    from vqclip.zoo import get

    return get("shapes-clip").config


# ----------------------------------------------------------------------------- plumbing

def check_writable(folder: Path) -> Path:
    """Create ``folder`` if needed and prove a file can be written there.

    Raises ``OutputPathError`` naming the folder when it cannot be created or written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise OutputPathError(
            f"output folder {str(folder)!r} is not writable ({e.strerror or e}); "
            "give --out a folder you can write to"
        ) from e
    return folder


def atomic_save(write, path: Path) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so a kill never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should read like any file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _render_range(job: tuple[str, int, int, int]) -> np.ndarray:
    split, start, count, size = job
    return shapes.render_batch(shapes.sample_scenes(split, start, count), size)


def render_cache(folder: Path, split: str, count: int, size: int = 64, workers: int = 1) -> np.ndarray:
    """(count, size, size, 3) uint8 images of scenes 0..count-1 of ``split``, cached as .npy.

    Rendering costs about a millisecond an image, so training reads a memory-mapped
    file rendered once; two runs sharing ``folder`` share the pages.
    """
    path = check_writable(Path(folder)) / f"{split}_{size}_{count}.npy"
    if not path.exists():
        log.info("rendering %d %s scenes to %s", count, split, path)
        chunk = 5000
        jobs = [(split, i, min(chunk, count - i), size) for i in range(0, count, chunk)]
        if workers > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                images = np.concatenate(pool.map(_render_range, jobs))
        else:
            images = np.concatenate([_render_range(j) for j in jobs])
        atomic_save(lambda tmp: np.save(open(tmp, "wb"), images), path)
    return np.load(path, mmap_mode="r")


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # No decay on gains, biases, embeddings and the temperature (CLIP's practice).
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or name == "logit_scale":
            keep.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def _save_safetensors(state: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_save(lambda tmp: save_file(tensors, tmp, metadata={k: str(v) for k, v in metadata.items()}), path)


# ----------------------------------------------------------------------------- CLIP

def _label_targets(scenes: list[shapes.Scene], caps: list[shapes.Caption]) -> torch.Tensor:
    """(B, B) float: 1 where caption j is true of image i. The diagonal is always 1.

    Captions true of several images in a batch ("a red circle" twice, "a circle") are
    positives, not negatives: the contrastive targets spread over all of them.
    """
    return torch.tensor([[c.matches(s) for c in caps] for s in scenes], dtype=torch.float32)


def train_clip(args: argparse.Namespace) -> dict:
    """Train shapes-clip contrastively on captioned scenes; returns the final held-out figures.

    Writes ``args.out``/{last.pt, model.safetensors, config.json, log.jsonl}. Raises
    ``OutputPathError`` before any work when ``args.out`` or ``args.cache`` is not writable.
    """
    from vqclip.models.clip import CLIP

    out = check_writable(args.out)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cfg = _clip_config()
    model = CLIP(cfg)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.07))  # OpenAI's initial temperature
    opt = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    last = out / "last.pt"
    step, elapsed_before = _resume(last, args.resume, {"model": model, "opt": opt})
    (out / "config.json").write_text(json.dumps({"config": asdict(cfg), "args": vars(args)}, default=str,
                                                indent=1))

    images = render_cache(check_writable(args.cache), "train", args.train_images, workers=args.threads)
    val_scenes = shapes.sample_scenes("val", 0, args.val_images)
    val_images = shapes.render_batch(val_scenes)
    train_scenes = shapes.sample_scenes("train", 0, args.train_images)
    token_cache: dict[str, torch.Tensor] = {}

    def ids_of(texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in token_cache]
        if missing:
            for t, row in zip(missing, quality.tokenize(missing, cfg.context_length)):
                token_cache[t] = row
        return torch.stack([token_cache[t] for t in texts])

    logf = open(out / "log.jsonl", "a")
    start = time.time() - elapsed_before
    last_save = time.time()
    budget = args.minutes * 60
    model.train()
    while step < args.steps and time.time() - start < budget:
        rng = np.random.default_rng((args.seed, step))  # data order is a function of (seed, step)
        idx = np.sort(rng.choice(len(train_scenes), args.batch, replace=False))
        batch_scenes = [train_scenes[i] for i in idx]
        caps = [shapes.random_caption(s, rng) for s in batch_scenes]
        pix = quality.to_pixels(images[idx])
        ids = ids_of([c.text for c in caps])
        target = _label_targets(batch_scenes, caps)  # (B, B)
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.lr, args.warmup)
        logits, _ = model(pix, ids)  # (B_img, B_txt)
        loss_i = -(F.log_softmax(logits, 1) * target / target.sum(1, keepdim=True)).sum(1).mean()
        loss_t = -(F.log_softmax(logits.T, 1) * target.T / target.T.sum(1, keepdim=True)).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        if step % args.log_every == 0 or step == 1:
            rec = {"step": step, "min": round((time.time() - start) / 60, 2), "loss": round(loss.item(), 4),
                   "lr": opt.param_groups[0]["lr"], "scale": round(model.logit_scale.exp().item(), 1)}
            if step % args.eval_every == 0:
                rec.update({f"val_{k}": round(v, 4) for k, v in
                            quality.clip_zero_shot(model, val_scenes, val_images).items()})
                model.train()
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            log.info("%s", rec)
        if time.time() - last_save > args.save_every:
            _save_state(last, model, opt, step, time.time() - start)
            last_save = time.time()
    elapsed = time.time() - start
    _save_state(last, model, opt, step, elapsed)
    model.eval()
    final = quality.clip_zero_shot(model, val_scenes, val_images)
    return _finish_run(out, logf, model, cfg, args.seed, step, elapsed, final)


def _finish_run(out: Path, logf, model, cfg, seed: int, step: int, elapsed: float, final: dict) -> dict:
    """End a training run: log the final validation figures, write ``model.safetensors``
    (config, steps, minutes and seed in its metadata), close the log; returns the record."""
    minutes = round(elapsed / 60, 2)
    final_rec = {"final": True, "step": step, "minutes": minutes, **final}
    logf.write(json.dumps(final_rec) + "\n")
    logf.close()
    _save_safetensors(model.state_dict(), out / "model.safetensors",
                      {"config": json.dumps(asdict(cfg)), "steps": step, "minutes": minutes, "seed": seed})
    log.info("done: %s", final_rec)
    return final_rec


def _resume(path: Path, resume: bool, parts: dict) -> tuple[int, float]:
    """Load ``parts`` (name -> module or optimiser) from ``path`` if resuming; (step, elapsed s)."""
    if not (resume and path.exists()):
        return 0, 0.0
    state = torch.load(path, map_location="cpu", weights_only=True)
    for name, part in parts.items():
        if name in state:
            part.load_state_dict(state[name])
        elif name in ("model", "opt"):
            raise ValueError(f"{path} has no {name!r} state; it is not a resume file of this recipe")
        # else a part newly switched on (the critic) starts afresh
    log.info("resumed at step %d (%.1f min)", state["step"], state["elapsed"] / 60)
    return int(state["step"]), float(state["elapsed"])


def _save_state(path: Path, model, opt, step: int, elapsed: float, extra: dict | None = None) -> None:
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed}
    state.update({k: v.state_dict() for k, v in (extra or {}).items()})  # e.g. the VQGAN's critic
    atomic_save(lambda tmp: torch.save(state, tmp), path)


# ----------------------------------------------------------------------------- VQGAN

def _vqgan_config():
    from vqclip.zoo import get

    return get("shapes-vqgan").config


def _image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def train_vqgan(args: argparse.Namespace) -> dict:
    """Train shapes-vqgan to reconstruct scenes; returns the final validation PSNR and usage.

    Same files and errors as ``train_clip``. ``--resume --steps N`` continues a finished or
    killed run under a new cosine schedule of N steps. The perceptual term reads the
    bundled shapes-clip, so that model is trained (or installed) first.
    """
    from dataclasses import replace

    from vqclip.models.vqgan import VQGAN
    from vqclip.recipe.patchgan import PatchCritic, adaptive_weight, hinge_critic_loss
    from vqclip.recipe.perceptual import StemPerceptual

    out = check_writable(args.out)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cfg = _vqgan_config()
    if args.n_embed is not None:  # for trials; the shipped size is the registry's
        cfg = replace(cfg, n_embed=args.n_embed)
    model = VQGAN(cfg)
    # The codebook is set by EMA updates, not by the optimiser.
    params = [p for n, p in model.named_parameters() if not n.startswith("quantize.")]
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.99))
    critic = PatchCritic() if args.disc_weight > 0 else None
    perceptual = StemPerceptual.from_zoo() if args.perceptual_weight > 0 else None
    extra = {}
    if critic is not None:
        opt_d = torch.optim.Adam(critic.parameters(), lr=args.disc_lr, betas=(0.5, 0.9))  # GAN-usual betas
        extra = {"critic": critic, "opt_critic": opt_d}
    disc_from = int(args.steps * args.disc_start)
    last = out / "last.pt"
    step, elapsed_before = _resume(last, args.resume, {"model": model, "opt": opt, **extra})
    (out / "config.json").write_text(json.dumps({"config": asdict(cfg), "args": vars(args)}, default=str, indent=1))
    images = render_cache(args.cache, "train", args.train_images, workers=args.threads)
    val = to_signed(shapes.render_batch(shapes.sample_scenes("val", 0, args.val_images)))
    usage = torch.zeros(cfg.n_embed)  # code hits since the last restart check
    ema = {"size": torch.ones(cfg.n_embed), "sum": model.quantize.embedding.weight.detach().clone()}
    logf = open(out / "log.jsonl", "a")
    start = time.time() - elapsed_before
    last_save = time.time()
    full_from = int(args.steps * (1 - args.full_fraction))
    model.train()
    while step < args.steps and time.time() - start < args.minutes * 60:
        rng = np.random.default_rng((args.seed, step))
        # Most steps see 32x32 crops (a quarter of the cost); the last ones whole images,
        # so the mid-block attention ends tuned to the 16x16 latent grid it serves.
        full = step >= full_from
        n = args.batch // 4 if full else args.batch
        idx = np.sort(rng.choice(len(images), n, replace=False))
        x = to_signed(images[idx])  # (n, 3, 64, 64) in [-1, 1]
        if not full:
            oy, ox = rng.integers(0, 64 - args.crop + 1, 2) // 4 * 4  # on the code grid
            x = x[:, :, oy: oy + args.crop, ox: ox + args.crop]
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.lr, args.warmup)
        z = model.encode_latent(x)  # (n, C, h, w)
        if step == 0 and not args.resume:
            _seed_codebook(model, z.detach(), rng)
            ema["sum"] = model.quantize.embedding.weight.detach().clone()
        codes = model.quantize.nearest(z.detach())  # (n, h, w)
        z_q = model.quantize.lookup(codes)
        # The codebook follows its assigned latents by exponential moving averages (VQ-VAE-2)
        # instead of a loss term: with 2 shared cores there are few steps, and loss-driven
        # codebooks (taming's legacy weighting pulls the encoder onto the codes at weight 1)
        # collapsed the latents in the first trial run here.
        _ema_update(model, ema, z.detach(), codes, args.ema_decay)
        vq_loss = args.commitment * ((z - z_q.detach()) ** 2).mean()
        z_q = z + (z_q - z).detach()  # straight-through
        rec = model.decode(z_q)
        gy, gx = _image_gradients(rec)
        ty, tx = _image_gradients(x)
        rec_loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean()
        edge_loss = (gy - ty).abs().mean() + (gx - tx).abs().mean()
        nll = rec_loss + args.edge_weight * edge_loss
        if perceptual is not None:
            # Pixel losses are minimised by the conditional mean, which rounds small star
            # points; distances in shapes-clip's stem features keep them (MODEL_CARD.md).
            p_loss = perceptual(rec, x)
            nll = nll + args.perceptual_weight * p_loss
        loss = nll + vq_loss
        adversarial = critic is not None and step >= disc_from
        if adversarial:
            # The generator is pushed toward patches the critic takes for real; the weight
            # tracks the reconstruction gradient at the decoder's output layer.
            gen_loss = -critic(rec).mean()
            d_weight = args.disc_weight * adaptive_weight(nll, gen_loss, model.decoder.conv_out.weight)
            loss = loss + d_weight * gen_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if adversarial:
            opt_d.zero_grad(set_to_none=True)  # drops what the generator's pass left in the critic
            d_loss = hinge_critic_loss(critic(x), critic(rec.detach()))
            d_loss.backward()
            opt_d.step()
        usage += torch.bincount(codes.flatten(), minlength=cfg.n_embed).float()
        step += 1
        if step % args.restart_every == 0 and step < full_from:
            _restart_dead_codes(model, z.detach(), usage, rng, ema)
            usage.zero_()
        if step % args.log_every == 0 or step == 1:
            rec_ = {"step": step, "min": round((time.time() - start) / 60, 2), "loss": round(loss.item(), 4),
                    "rec": round(rec_loss.item(), 4), "edge": round(edge_loss.item(), 4),
                    "vq": round(vq_loss.item(), 4), "lr": opt.param_groups[0]["lr"]}
            if perceptual is not None:
                rec_["perceptual"] = round(p_loss.item(), 4)
            if adversarial:
                rec_.update({"gen": round(gen_loss.item(), 4), "d_weight": round(d_weight.item(), 4),
                             "critic": round(d_loss.item(), 4)})
            if step % args.eval_every == 0:
                rec_.update({f"val_{k}": v for k, v in quality.vqgan_reconstruction(model, val).items()})
                model.train()
            logf.write(json.dumps(rec_) + "\n")
            logf.flush()
            log.info("%s", rec_)
        if time.time() - last_save > args.save_every:
            _save_state(last, model, opt, step, time.time() - start, extra)
            last_save = time.time()
    elapsed = time.time() - start
    _save_state(last, model, opt, step, elapsed, extra)
    final = quality.vqgan_reconstruction(model, val)
    return _finish_run(out, logf, model, cfg, args.seed, step, elapsed, final)


@torch.no_grad()
def _seed_codebook(model, z: torch.Tensor, rng: np.random.Generator) -> None:
    """Start the codebook on random encoder outputs, where the latents are (not near zero)."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N, C)
    n = model.quantize.n_embed
    pick = torch.from_numpy(rng.integers(0, len(flat), n))
    model.quantize.embedding.weight.data.copy_(flat[pick] + 0.01 * flat.std() * torch.randn(n, flat.shape[1]))


@torch.no_grad()
def _ema_update(model, ema: dict, z: torch.Tensor, codes: torch.Tensor, decay: float) -> None:
    """Move each used code toward the mean of the latents assigned to it."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N, C)
    onehot = F.one_hot(codes.flatten(), model.quantize.n_embed).to(flat.dtype)  # (N, K)
    count = onehot.sum(0)  # (K,)
    total = onehot.T @ flat  # (K, C)
    used = count > 0
    ema["size"][used] = decay * ema["size"][used] + (1 - decay) * count[used]
    ema["sum"][used] = decay * ema["sum"][used] + (1 - decay) * total[used]
    w = model.quantize.embedding.weight.data
    w[used] = ema["sum"][used] / ema["size"][used, None]


@torch.no_grad()
def _restart_dead_codes(model, z: torch.Tensor, usage: torch.Tensor, rng: np.random.Generator,
                        ema: dict | None = None) -> int:
    """Move codebook rows unused since the last check onto random current encoder outputs.

    Unused rows get no gradient and would stay dead; re-seeding them where the encoder
    puts its latents keeps the whole codebook in use (the usage target is >= 50%).
    """
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N, C)
    pick = torch.from_numpy(rng.integers(0, len(flat), len(dead)))
    noise = 0.01 * flat.std() * torch.randn(len(dead), flat.shape[1])
    model.quantize.embedding.weight.data[dead] = flat[pick] + noise
    if ema is not None:  # the moving averages restart with the code
        ema["size"][dead] = 1.0
        ema["sum"][dead] = model.quantize.embedding.weight.data[dead]
    log.info("restarted %d dead codes", len(dead))
    return len(dead)


# ----------------------------------------------------------------------------- shape judge

def train_judge(args: argparse.Namespace) -> dict:
    """The independent shape classifier that scores VQGAN reconstructions (``shape_judge``)."""
    from vqclip.zoo.judge import ShapeJudge

    out = check_writable(args.out)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = ShapeJudge()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    images = render_cache(args.cache, "train", args.train_images, workers=args.threads)
    train_scenes = shapes.sample_scenes("train", 0, args.train_images)
    labels = torch.tensor([shapes.SHAPES.index(s.shape) for s in train_scenes])
    val_scenes = shapes.sample_scenes("val", 0, args.val_images)
    val = shapes.render_batch(val_scenes)
    start = time.time()
    step = 0
    model.train()
    while step < args.steps and time.time() - start < args.minutes * 60:
        rng = np.random.default_rng((args.seed, step))
        idx = np.sort(rng.choice(len(images), args.batch, replace=False))
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.lr, args.warmup)
        loss = F.cross_entropy(model(to_signed(images[idx])), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % args.log_every == 0:
            log.info("step %d loss %.4f", step, loss.item())
    acc = float(np.mean([p == s.shape for p, s in zip(model.predict(val), val_scenes)]))
    final = {"final": True, "step": step, "minutes": round((time.time() - start) / 60, 2), "val_accuracy": acc}
    (out / "log.jsonl").write_text(json.dumps(final) + "\n")
    _save_safetensors(model.state_dict(), out / "model.safetensors", {"steps": step, "seed": args.seed})
    log.info("done: %s", final)
    return final


# ----------------------------------------------------------------------------- packing

_PACKABLE = {"shapes-clip": "shapes-clip.safetensors", "shapes-vqgan": "shapes-vqgan.safetensors",
             "shape-judge": "shape-judge.safetensors"}


def pack(args: argparse.Namespace) -> dict:
    """Write a trained run's weights into engine/zoo/weights (fp16 unless --fp32) and print the sha256."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from vqclip._hashing import sha256_file
    from vqclip.zoo.bundled import WEIGHTS_DIR

    src = Path(args.run) / "model.safetensors"
    if not src.is_file():
        raise OutputPathError(f"{src} does not exist; give the --out folder of a finished training run")
    dest_dir = check_writable(args.dest or WEIGHTS_DIR)
    with safe_open(str(src), "pt") as h:  # metadata (config, steps, minutes) travels with the weights
        meta = dict(h.metadata() or {})
    tensors = load_file(str(src))
    dtype = torch.float32 if args.fp32 else torch.float16
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    meta["dtype"] = str(dtype).removeprefix("torch.")
    dest = dest_dir / _PACKABLE[args.model]
    _save_safetensors(tensors, dest, meta)
    digest = sha256_file(dest)
    print(f"{dest} {dest.stat().st_size / 1e6:.2f} MB sha256={digest}")
    return {"path": str(dest), "sha256": digest}


# ----------------------------------------------------------------------------- CLI

def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="folder for checkpoints, weights and logs")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vqclip-shapes-cache",
                   help="folder for the pre-rendered training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--minutes", type=float, default=45.0, help="wall-clock budget; stops, evaluates and saves")
    p.add_argument("--save-every", type=float, default=120.0, help="seconds between resume checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=200)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vqclip.recipe.train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("clip", help="train shapes-clip")
    _add_common(c)
    c.add_argument("--steps", type=int, default=1500, help="schedule length (cosine decay to this step)")
    c.add_argument("--batch", type=int, default=128)
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--warmup", type=int, default=100)
    c.add_argument("--weight-decay", type=float, default=0.05)
    c.add_argument("--train-images", type=int, default=100_000)
    c.add_argument("--val-images", type=int, default=1000)
    c.set_defaults(func=train_clip)
    v = sub.add_parser("vqgan", help="train shapes-vqgan")
    _add_common(v)
    v.add_argument("--steps", type=int, default=8500, help="schedule length (cosine decay to this step)")
    v.add_argument("--batch", type=int, default=16, help="crops per step (a quarter as many whole images)")
    v.add_argument("--crop", type=int, default=32)
    v.add_argument("--full-fraction", type=float, default=0.15, help="last fraction of steps on whole images")
    v.add_argument("--lr", type=float, default=1.5e-3)
    v.add_argument("--warmup", type=int, default=50)
    v.add_argument("--edge-weight", type=float, default=1.0, help="weight of the image-gradient L1 term")
    v.add_argument("--restart-every", type=int, default=50, help="steps between dead-code restarts")
    v.add_argument("--ema-decay", type=float, default=0.95, help="codebook moving-average decay")
    v.add_argument("--commitment", type=float, default=0.25, help="weight pulling latents onto their codes")
    v.add_argument("--n-embed", type=int, default=None,
                   help="codebook size for trials (default: the registry's shapes-vqgan config)")
    v.add_argument("--disc-weight", type=float, default=0.0,
                   help="weight of the adversarial term (0, the shipped recipe: no critic)")
    v.add_argument("--disc-start", type=float, default=0.3, help="fraction of the schedule before the critic starts")
    v.add_argument("--disc-lr", type=float, default=2e-4, help="critic learning rate")
    v.add_argument("--perceptual-weight", type=float, default=1.0,
                   help="weight of the distance in shapes-clip's conv-stem features (0: none)")
    v.add_argument("--train-images", type=int, default=100_000)
    v.add_argument("--val-images", type=int, default=200)
    v.set_defaults(func=train_vqgan)
    j = sub.add_parser("judge", help="train the independent shape classifier")
    _add_common(j)
    j.add_argument("--steps", type=int, default=800)
    j.add_argument("--batch", type=int, default=128)
    j.add_argument("--lr", type=float, default=3e-3)
    j.add_argument("--warmup", type=int, default=30)
    j.add_argument("--train-images", type=int, default=100_000)
    j.add_argument("--val-images", type=int, default=2000)
    j.set_defaults(func=train_judge)
    k = sub.add_parser("pack", help="copy a run's weights into engine/zoo/weights as fp16 safetensors")
    k.add_argument("model", choices=sorted(_PACKABLE))
    k.add_argument("run", type=Path, help="the --out folder of the training run")
    k.add_argument("--dest", type=Path, default=None, help="folder to write to (default: engine/zoo/weights)")
    k.add_argument("--fp32", action="store_true", help="keep float32 (when fp16 loses accuracy)")
    k.set_defaults(func=pack)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    try:
        args.func(args)
    except VqclipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
