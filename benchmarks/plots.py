"""The report's PNG plots (matplotlib, no display): throughput vs batch per runner, top-k GB/s
vs N against the read-bandwidth line, latency CDFs, generation steps/s per configuration."""
from __future__ import annotations

from pathlib import Path

__all__ = ["plot_report"]


def plot_report(report: dict, out: Path) -> list[Path]:
    """Every plot the report's jobs have figures for, written into ``out``; their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    jobs = {e["job"]: e for e in report["jobs"] if e.get("rows")}
    title = f"{report['machine']['cpu_class']}" + (f", {report['machine']['gpu']['name']}"
                                                    if report["machine"].get("gpu") else "")
    written = []
    for job in ("encode-image", "encode-text"):
        if job in jobs:
            written.append(_throughput_vs_batch(jobs[job], out / f"{job}.png", title))
    if "topk" in jobs:
        written.append(_topk_bandwidth(jobs["topk"], out / "topk.png", title))
    for job in ("search", "serve"):
        if job in jobs and any(r.get("cdf_ms") for r in jobs[job]["rows"]):
            written.append(_cdfs(jobs[job], out / f"{job}-latency.png", title))
    if "generate" in jobs:
        written.append(_bars(jobs["generate"], out / "generate.png", title))
    return written


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _throughput_vs_batch(entry: dict, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in entry["rows"]})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in entry["rows"]:
            if r["model"] == model:
                series.setdefault(r["runner"], []).append((r["batch"], r["throughput"]))
        for runner, pts in series.items():
            pts.sort()
            ax.plot([b for b, _ in pts], [t for _, t in pts], marker="o", linestyle="--" if "transformers" in runner
                    else "-", label=runner)
        ax.set_xscale("log", base=2)
        _label(ax, "batch", entry["rows"][0]["unit"], f"{entry['job']}: {model}\n{title}")
    return _save(fig, path)


def _topk_bandwidth(entry: dict, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in entry["rows"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.2), squeeze=False)
    bw_name = entry.get("bandwidth_runner")
    for ax, b in zip(axes[0], batches):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in entry["rows"]:
            if r["batch"] == b:
                series.setdefault(r["runner"], []).append((r["gallery_rows"], r["gb_s"]))
        for runner, pts in series.items():
            pts.sort()
            style = dict(color="black", linewidth=2, linestyle=":") if runner == bw_name else dict(marker="o")
            ax.plot([n for n, _ in pts], [g for _, g in pts], label=runner, **style)
        ax.set_xscale("log")
        _label(ax, "gallery rows N (D=512)", "GB/s of the runner's storage read", f"top-k, B={b}, k=10\n{title}")
    return _save(fig, path)


def _cdfs(entry: dict, path: Path, title: str) -> Path:
    """One panel per model; a colour per client level (serve) or runner (search), peers dashed."""
    import matplotlib.pyplot as plt

    rows = [r for r in entry["rows"] if r.get("cdf_ms") and not r.get("stage")]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
    pct = list(range(101))
    for ax, model in zip(axes[0], models):
        colours: dict[str, str] = {}
        for r in (r for r in rows if r["model"] == model):
            key = f"{r['clients']} clients" if "clients" in r else r["runner"].removesuffix(" (kernel only)")
            colour = colours.setdefault(key, f"C{len(colours) % 10}")
            label = f"{r['runner'].removeprefix('vqclip serve, ')}, {key}" if "clients" in r else r["runner"]
            ax.plot(r["cdf_ms"], pct, color=colour, linestyle="--" if r.get("peer") else "-", label=label)
        ax.set_xscale("log")
        _label(ax, "latency, ms", "percent of requests at or below",
               f"{entry['job']}: latency CDF, {model} (peers dashed)\n{title}")
    return _save(fig, path)


def _bars(entry: dict, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    rows = [r for r in entry["rows"] if r["unit"] == "steps/s"]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    runners = list(dict.fromkeys(r["runner"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(configs)), 4.2))
    width = 0.8 / max(1, len(runners))
    for i, runner in enumerate(runners):
        xs, ys = [], []
        for j, c in enumerate(configs):
            r = next((r for r in rows if r["config"] == c and r["runner"] == runner), None)
            if r:
                xs.append(j + i * width)
                ys.append(r["throughput"])
        ax.bar(xs, ys, width, label=runner)
    ax.set_xticks([j + width * (len(runners) - 1) / 2 for j in range(len(configs))])
    ax.set_xticklabels(configs)
    ax.set_yscale("log")
    ax.set_ylabel("steps/s")
    ax.set_title(f"generation steps/s\n{title}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)
