"""``vqclip demo``: the engine at work on the bundled shapes models, offline.

Renders held-out scenes of the shapes world, exports the bundled CLIP to ONNX (cached),
classifies the samples on every backend that loads here and keeps the fastest that
agrees with the torch reference, builds a search index of the samples and answers three
text queries, generates a few images from text prompts (VQGAN+CLIP, one batch) and judges
them with checkers that did not guide them, then writes the images, ``results.json`` (every
path in it relative to the folder, so the folder can move) and an ``index.html`` to one folder.

Example::

    run_demo("vqclip-demo", samples=48, echo=print)   # prints progress and tables; returns 0
"""
from __future__ import annotations

import html
import json
import logging
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vqclip._files import atomic_write_bytes
from vqclip.errors import BackendUnavailableError, ManifestError, OutputPathError, ParityError

log = logging.getLogger(__name__)

__all__ = ["run_demo", "NEXT_STEPS"]

_RENDER_SIZE = 96  # pixels per side of the saved samples (the model resizes to its input)
_AGREEMENT_FLOOR = 0.95  # a faster backend must give torch's top-1 label this often to be picked
_QUERIES = 3
# Generation prompts the demo runs as one batch (from the shapes world; judged independently).
_GENERATE = ("a red star", "a blue circle on a white background", "a yellow square", "a green triangle")
# What the demo suggests running next, named as the README names them (pics.vqindex, ...).
NEXT_STEPS = (
    ("real checkpoints", "vqclip classify photo.jpg --model ViT-B-32.pt --labels cat dog --templates ensemble"),
    ("your own photos", "vqclip index build ~/Pictures --out pics.vqindex && vqclip search pics.vqindex 'a dog'"),
    ("export", "vqclip export ViT-B-32 --weights ViT-B-32.pt --out exports/vit-b-32 --precision fp16 int8"),
    ("generate", "vqclip generate 'a purple cross' 'an orange circle' --seeds 1 2 --video"),
    ("benchmarks", "vqclip bench --quick --out bench-report"),
)


@dataclass
class _BackendRun:
    name: str
    images_per_s: float = 0.0
    accuracy: float = 0.0
    agreement: float = 1.0  # top-1 agreement with the torch reference
    top1: list[str] | None = None
    error: str | None = None
    encoder: Any = None
    classifier: Any = None


def _candidates(forced: str | None) -> list[tuple[str, str]]:
    """(backend, precision) pairs to try: the forced one, or all that may run on a CPU."""
    if forced:
        return [(forced, "fp32")] if forced == "torch" else [("torch", "fp32"), (forced, "fp32")]
    from vqclip.backends import backend_status

    status = backend_status()
    out = [("torch", "fp32")]
    if status.get("onnxruntime") is None:
        out += [("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    if status.get("tensorrt") is None:
        out += [("tensorrt", "fp16")]
    return out


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear what an earlier demo wrote there, and nothing else."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"cannot create the demo folder {str(out)!r} ({e.strerror}); give another --out") from e
    if (out / "index" / "header.json").is_file():
        shutil.rmtree(out / "index")  # the demo's own index from an earlier run
    elif (out / "index").exists():
        raise OutputPathError(f"{out / 'index'} exists and is not a demo index; give another --out")
    images = out / "images"
    if images.is_dir():
        for p in images.glob("demo_*.png"):
            p.unlink()


def run_demo(out: str | Path = "vqclip-demo", samples: int = 48, backend: str | None = None, seed: int = 0,
             model: Any = None, echo: Callable[[str], None] = log.info, generate_steps: int | None = None) -> int:
    """Run the demo into ``out``; returns the process exit code (0).

    ``model`` defaults to the bundled ``shapes-clip``; ``backend`` forces one backend
    (still compared with torch); ``seed`` picks which held-out scenes are rendered;
    ``generate_steps`` overrides the generation preset's step count (0: no generation).
    """
    from PIL import Image

    from vqclip.constants import DEFAULT_CLIP
    from vqclip.encoder import open_encoder
    from vqclip.index import Index, build_index
    from vqclip.jobs.classify import ZeroShotClassifier
    from vqclip.zoo import shapes

    t_start = time.perf_counter()
    out = Path(out)
    model = model or DEFAULT_CLIP
    _prepare_out(out)

    # 1. samples
    t0 = time.perf_counter()
    scenes = shapes.sample_scenes("test", seed * 10_000, samples)
    pixels = shapes.render_batch(scenes, size=_RENDER_SIZE)  # (N, S, S, 3) uint8
    (out / "images").mkdir(exist_ok=True)
    paths, truth = [], []
    for i, (scene, px) in enumerate(zip(scenes, pixels)):
        p = out / "images" / f"demo_{i:03d}_{scene.colour}_{scene.shape}.png"
        Image.fromarray(px).save(p)
        paths.append(p)
        truth.append(shapes.label(scene.colour, scene.shape))
    labels = [shapes.label(c, s) for c, s in shapes.all_labels()]
    echo(f"[1/5] rendered {samples} held-out scenes of the shapes world to {out / 'images'} "
         f"({time.perf_counter() - t0:.1f} s)")

    # 2. backends: open (exporting to ONNX once), classify, time
    runs: list[_BackendRun] = []
    enc0 = open_encoder(model)
    batch = enc0.preprocess([Image.open(p).convert("RGB") for p in paths])  # (N, 3, S, S)
    for name, precision in _candidates(backend):
        run = _BackendRun(f"{name} {precision}")
        try:
            t0 = time.perf_counter()
            enc = enc0 if name == "torch" else open_encoder(model, name, precision=precision)
            opened = time.perf_counter() - t0
            if opened > 2:
                echo(f"      {run.name}: exported {enc.identity.name} to ONNX and loaded it in {opened:.0f} s "
                     "(cached for next time)")
            clf = ZeroShotClassifier(enc, labels)
            clf.classify_pixels(batch[:2], top_k=1)  # warm-up: first-call allocations
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                preds = clf.classify_pixels(batch, top_k=1)
                times.append(time.perf_counter() - t0)
            run.images_per_s = samples / statistics.median(times)
            run.top1 = [p[0].label for p in preds]
            run.accuracy = float(np.mean([a == b for a, b in zip(run.top1, truth)]))
            run.encoder, run.classifier = enc, clf
        except (BackendUnavailableError, ManifestError, ParityError) as e:  # this backend cannot run here
            run.error = str(e).splitlines()[0]
        runs.append(run)
    ref = runs[0].top1
    for r in runs:
        if r.top1 is not None:
            r.agreement = float(np.mean([a == b for a, b in zip(r.top1, ref)]))
    usable = [r for r in runs if r.top1 is not None and r.agreement >= _AGREEMENT_FLOOR]
    best = max(usable, key=lambda r: r.images_per_s)
    echo(f"[2/5] zero-shot classification of the {samples} samples into {len(labels)} labels "
         f"({enc0.identity}, prompts as the model's captions say them):")
    echo(f"      {'backend':<18} {'images/s':>9} {'top-1 acc':>9} {'agrees w/ torch':>15}")
    for r in runs:
        if r.error:
            echo(f"      {r.name:<18} unavailable: {r.error}")
        else:
            mark = "  <- fastest, used below" if r is best else ""
            echo(f"      {r.name:<18} {r.images_per_s:>9.0f} {r.accuracy:>9.1%} {r.agreement:>15.1%}{mark}")
    echo("      (images/s: encode + softmax over pre-decoded pixels, median of 3 runs, on this machine now)")

    # 3. index
    t0 = time.perf_counter()
    report = build_index(out / "images", out / "index", best.encoder, storage="fp16", progress=False)
    echo(f"[3/5] indexed {report.total} images into {out / 'index'} with {best.name} in "
         f"{time.perf_counter() - t0:.1f} s (fp16 rows, SQLite entries)")

    # 4. queries: the first distinct true labels among the samples
    queries = list(dict.fromkeys(truth))[:_QUERIES]
    by_path = {str(p.resolve()): t for p, t in zip(paths, truth)}
    answers = []
    with Index.open(out / "index", encoder=best.encoder) as idx:
        echo("[4/5] text search (top 3, cosine score; + marks an image of the queried class):")
        for q in queries:
            hits = idx.search(text=q, k=3)
            answers.append({"query": q, "hits": [
                {"path": _relative(h.path, out), "score": h.score,
                 "match": by_path.get(str(Path(h.path).resolve())) == q} for h in hits]})
            echo(f"      {q!r}: " + ", ".join(f"{'+' if a['match'] else '-'}{Path(a['path']).name} {a['score']:.3f}"
                                             for a in answers[-1]["hits"]))

    generated = _generate(out, echo, generate_steps) if generate_steps != 0 else {"steps": 0, "seconds": 0,
                                                                                  "images": []}

    results = {
        "model": str(enc0.identity), "samples": samples, "labels": labels,
        "backends": [{"backend": r.name, "images_per_s": r.images_per_s, "accuracy": r.accuracy,
                      "agreement_with_torch": r.agreement, "error": r.error} for r in runs],
        "used_backend": best.name,
        "classified": [{"image": _relative(p, out), "truth": t, "predicted": best.top1[i]}
                       for i, (p, t) in enumerate(zip(paths, truth))],
        "search": answers,
        "generation": generated,
    }
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2) + "\n").encode("utf-8"))
    atomic_write_bytes(out / "index.html", _html(results).encode("utf-8"))
    echo(f"done in {time.perf_counter() - t_start:.0f} s. Look at {out / 'index.html'} (and results.json).")
    for i, (what, command) in enumerate(NEXT_STEPS):
        echo(f"{'next:' if i == 0 else '':<6}{what:<20}{command}")
    return 0


def _generate(out: Path, echo: Callable[[str], None], steps: int | None) -> dict:
    """Step 5: the demo's prompts as one batch on the bundled models, judged independently."""
    from vqclip.jobs.generate import Generator
    from vqclip.jobs.generate.evaluate import Judges

    t0 = time.perf_counter()
    gen = Generator()
    settings = gen.default_settings().with_(save_every=0)
    settings = settings.with_(steps=steps) if steps else settings
    folder = out / "generated"
    if folder.is_dir():  # the demo's own results from an earlier run
        for p in folder.glob("*.png"):
            p.unlink()
    jobs = [gen.add_job(p, settings.with_(seed=i), out_dir=folder) for i, p in enumerate(_GENERATE)]
    list(gen.run())
    items = [{"text": p, "colour": p.split()[1], "shape": p.split()[2]} for p in _GENERATE]
    verdicts = Judges(gen.clip)(np.stack([j.result for j in jobs]), items, gen.mean, gen.std)
    secs = time.perf_counter() - t0
    echo(f"[5/5] generated {len(jobs)} images as one batch ({settings.steps} steps, {secs:.0f} s); "
         "judged by the shape judge and the pixels' colour, which did not guide them:")
    rows = []
    for job, v in zip(jobs, verdicts):
        ok = "+" if v["colour_ok"] and v["shape_ok"] else "-"
        echo(f"      {ok} {job.prompt_text!r}: reads as {v['judge_colour']} {v['judge_shape']}")
        rows.append({"prompt": job.prompt_text, "image": _relative(folder / f"{job.name}.png", out), "seed": job.seed,
                     "judged_colour": v["judge_colour"], "judged_shape": v["judge_shape"],
                     "ok": bool(v["colour_ok"] and v["shape_ok"])})
    return {"steps": settings.steps, "seconds": secs, "images": rows}


def _relative(path: str | Path, out: Path) -> str:
    """``path`` relative to the demo folder, POSIX-style: results.json's one convention, so
    the folder reads the same wherever it is moved; a path outside it stays absolute."""
    try:
        return Path(path).resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def _html(results: dict) -> str:
    """A self-contained page: the backend table, every sample with its prediction, the queries."""
    e = html.escape

    def rel(p: str) -> str:  # results.json's paths are relative to the page's folder already
        return e(p if not Path(p).is_absolute() else Path(p).as_uri())

    def row(b: dict) -> str:
        if b["error"]:
            return f"<tr><td>{e(b['backend'])}</td><td colspan=3>unavailable: {e(b['error'])}</td></tr>"
        return (f"<tr><td>{e(b['backend'])}</td><td>{b['images_per_s']:.0f}</td><td>{b['accuracy']:.1%}</td>"
                f"<td>{b['agreement_with_torch']:.1%}</td></tr>")

    rows = "".join(row(b) for b in results["backends"])
    cards = "".join(
        f"<figure class='{'ok' if c['truth'] == c['predicted'] else 'bad'}'><img src='{rel(c['image'])}'>"
        f"<figcaption>{e(c['predicted'])}<br><small>truth: {e(c['truth'])}</small></figcaption></figure>"
        for c in results["classified"])
    queries = "".join(
        f"<h3>{e(q['query'])}</h3><div class='grid'>" + "".join(
            f"<figure class='{'ok' if h['match'] else 'bad'}'><img src='{rel(h['path'])}'>"
            f"<figcaption>{h['score']:.3f}</figcaption></figure>" for h in q["hits"]) + "</div>"
        for q in results["search"])
    generated = "".join(
        f"<figure class='{'ok' if g['ok'] else 'bad'}'><img src='{rel(g['image'])}'>"
        f"<figcaption>{e(g['prompt'])}<br><small>reads as: {e(str(g['judged_colour']))} "
        f"{e(g['judged_shape'])}</small></figcaption></figure>" for g in results["generation"]["images"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vqclip demo</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} .grid{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;padding:4px;border:3px solid #ccc;text-align:center;font-size:12px;width:110px}}
figure.ok{{border-color:#3a3}} figure.bad{{border-color:#c33}} img{{width:96px;height:96px}}
</style></head><body>
<h1>vqclip demo</h1><p>Model: {e(results['model'])}. Used backend: {e(results['used_backend'])}.</p>
<h2>Backends</h2><table><tr><th>backend</th><th>images/s</th><th>top-1 accuracy</th><th>agrees with torch</th></tr>
{rows}</table>
<h2>Zero-shot classification</h2><div class="grid">{cards}</div>
<h2>Text search (top 3)</h2>{queries}
<h2>Generation (VQGAN+CLIP, {results['generation']['steps']} steps, one batch)</h2>
<p>Judged by the bundled shape judge and the colour of the pixels, neither of which guided the generation.</p>
<div class="grid">{generated}</div>
</body></html>
"""
