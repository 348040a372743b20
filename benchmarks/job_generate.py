"""Job ``generate``: steps/s of vqclip's ``Generator`` beside the VQGAN-CLIP ``generate.py`` step
(``_vqgan_clip_baseline.py``) with the same size, cutouts and optimiser, in the same rounds,
and on the CPU the same step as the exported ONNX graph on ONNX Runtime (``backend="onnxruntime"``,
its ratio against the PyTorch fp32 step); then J jobs stepped as one batch against the same J
jobs one after another."""
from __future__ import annotations

import time
from typing import Any

from .harness import Options, Peak, add_ratios, make_row, measure

__all__ = ["run", "CONFIGS"]

CONFIGS = {  # name -> (models, size, cutn)
    "bundled": ("bundled", 64, 32),
    "vit128": ("vit-b-32+f16-16384", 128, 8),
    "vit256": ("vit-b-32+f16-16384", 256, 32),
    "vit512": ("vit-b-32+f16-16384", 512, 32),  # the peers' 10 GB GPU figure: --device cuda
}
PEER = "VQGAN-CLIP generate.py step"
TORCH = "vqclip Generator fp32"
ORT = "vqclip Generator onnxruntime (exported step graph)"
SEQUENTIAL = "vqclip Generator, the same jobs one after another"
PROMPT = "a red star"


def default_configs(opts: Options) -> list[str]:
    if opts.device.startswith("cuda"):
        return ["bundled", "vit256"] if opts.quick else ["bundled", "vit256", "vit512"]
    return ["bundled"] if opts.quick else ["bundled", "vit128", "vit256"]


def run(opts: Options, job: str = "generate") -> dict:
    import torch

    rows: list[dict] = []
    skipped: list[str] = []
    sync = torch.cuda.synchronize if opts.device.startswith("cuda") else None
    baseline = _baseline_class(skipped) if opts.peers else None
    for name in default_configs(opts):
        with Peak(opts.device) as peak:
            rows += _config(name, opts, job, baseline, sync)
        for r in rows:
            if r["config"] == name:
                r.update(peak.result)  # this configuration's peak, its peer beside it in the same process
    add_ratios(rows, PEER)
    add_ratios(rows, SEQUENTIAL)
    for r in rows:  # the exported step against the PyTorch step it replaces
        if r["runner"] == ORT:
            torch_row = next(t for t in rows if t["case"] == r["case"] and t["runner"] == TORCH)
            r["vs_torch_fp32"] = r["throughput"] / torch_row["throughput"]
    return {"rows": rows, "skipped": skipped}


def _config(name: str, opts: Options, job: str, baseline: Any, sync) -> list[dict]:
    from vqclip.jobs.generate import CutoutSpec, GenerateSettings, Generator

    rows: list[dict] = []
    kind, size, cutn = CONFIGS[name]
    clip, vqgan = _models(kind, opts.device)
    gen = Generator(clip, vqgan, device=opts.device)
    settings = GenerateSettings(size=(size, size), steps=10**6, cutouts=CutoutSpec(cutn=cutn), save_every=50)
    jobs = {p: gen.add_job(PROMPT, settings.with_(seed=i, precision=p))
            for i, p in enumerate(("fp32", "auto"))}
    gen.jobs = []

    def ours(job_: Any) -> None:
        gen.jobs = [job_]
        gen.step()

    calls = {f"vqclip Generator {p}": (lambda j=j: ours(j)) for p, j in jobs.items()}
    if opts.device == "cpu":
        graph = Generator(clip, vqgan, backend="onnxruntime")
        graph_job = graph.add_job(PROMPT, settings.with_(seed=0, precision="fp32"))
        graph.step()  # exports the step graph on first use (into the cache): not timed

        def on_graph() -> None:
            graph.jobs = [graph_job]
            graph.step()

        calls[ORT] = on_graph
    if baseline is not None:
        calls[PEER] = baseline(clip, vqgan, _text_embedding(clip, PROMPT), (size, size), cutn).step
    lat = measure(calls, opts.seconds * (1 if kind == "bundled" else 3), min_rounds=3 if opts.quick else 5,
                  sync=sync)
    gen.jobs = []
    case = f"{name}: {kind} {size}x{size} cutn {cutn}"
    for label, xs in lat.items():
        rows.append(make_row(job, case, label, xs, unit="steps/s", peer=label == PEER, config=name, size=size,
                             cutn=cutn, reproduce=opts.invocation(job)))
    if size <= 128 or opts.device.startswith("cuda"):  # J jobs x steps at 256 px: too long for a CPU run
        rows += _batched(gen, settings, name, job, opts, sync)
    return rows


def _batched(gen: Any, settings: Any, name: str, job: str, opts: Options, sync) -> list[dict]:
    """J jobs as one batch vs the same J jobs one after another, in images (500 steps) per hour."""
    j, steps = 4 if opts.quick else 8, 3 if opts.quick else 5

    def timed(batch: list) -> float:
        gen.jobs = batch
        gen.step()  # warm-up step of this batch shape
        sync and sync()
        t = time.perf_counter()
        for _ in range(steps):
            gen.step()
        sync and sync()
        return time.perf_counter() - t

    jobs = [gen.add_job(PROMPT, settings.with_(seed=100 + i)) for i in range(j)]
    sequential = sum(timed([one]) for one in jobs)
    together = timed(jobs)
    gen.jobs = []
    case = f"{name}: {j} jobs, images of 500 steps"
    return [make_row(job, case, label, None, unit="images/h", items=j, peer=label == SEQUENTIAL, config=name,
                     throughput=3600 * j / (seconds / steps * 500), reproduce=opts.invocation(job))
            for label, seconds in ((f"vqclip Generator, {j} jobs as one batch", together), (SEQUENTIAL, sequential))]


def _baseline_class(skipped: list[str]):
    try:
        import kornia  # noqa: F401
    except ImportError:
        skipped.append(f"{PEER}: kornia is not installed (its augmentations); pip install kornia")
        return None
    from ._vqgan_clip_baseline import BaselineStep

    return BaselineStep


def _models(kind: str, device: str):
    import torch

    from vqclip.checkpoints import load_clip, load_vqgan
    from vqclip.models.clip import CLIP
    from vqclip.models.vqgan import VQGAN
    from vqclip.zoo import get

    if kind == "bundled":
        return load_clip("shapes-clip", device=device), load_vqgan("shapes-vqgan").to(device)
    torch.manual_seed(0)  # random weights: a step costs the same whatever their values
    clip = CLIP(get("ViT-B/32").config).eval()
    vqgan = VQGAN(get("vqgan-f16-16384").config, with_encoder=False).eval()
    return clip.to(device), vqgan.to(device)


def _text_embedding(clip, text: str):
    import torch

    from vqclip.tokenizer import tokenize

    with torch.no_grad():
        ids = torch.from_numpy(tokenize([text], context_length=clip.config.context_length))
        return clip.encode_text(ids.to(next(clip.parameters()).device))[0]
