"""A bench report as a table on the terminal, ``report.json`` + ``report.md`` + PNG plots in a
folder, its comparison with an earlier report, and the README's figures table made from it.

    python -m vqclip.bench.report --readme benchmarks/results/avx512-vnni/report.json README.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vqclip._files import atomic_write_bytes

__all__ = ["format_job", "write_report", "compare", "readme_table", "update_readme", "WORSE"]

WORSE = 0.20  # a figure this much worse than the earlier report's is flagged
README_BEGIN = "<!-- vqclip bench table: made by `python -m vqclip.bench.report --readme`; do not edit -->"
README_END = "<!-- end of vqclip bench table -->"


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:{spec}}" if abs(x) < 1e5 else f"{x:,.0f}"
    return str(x)


def _detail(row: dict) -> str:
    bits = []
    if "gb_s" in row:
        bits.append(f"{row['gb_s']:.1f} GB/s" + (f" ({row['pct_of_bandwidth']:.0f}% bw)"
                                                  if row.get("pct_of_bandwidth") else ""))
    if row.get("recall_at_k") is not None:
        bits.append(f"recall {row['recall_at_k']:.3f}")
    if row.get("min_cos_vs_torch_fp32") is not None:
        bits.append(f"min cos {row['min_cos_vs_torch_fp32']:.5f}")
    if row.get("vs_torch_fp32") is not None:
        bits.append(f"{row['vs_torch_fp32']:.2f}x the PyTorch fp32 step")
    if row.get("not_encode_share") is not None:
        bits.append(f"{row['not_encode_share']:.0%} of wall outside encoding")
    if row.get("mean_batch"):
        bits.append(f"mean batch {row['mean_batch']:.1f}")
    if row.get("errors"):
        bits.append(f"{row['errors']} errors")
    return ", ".join(bits)


def _summary(entry: dict) -> str:
    """A job's wall time, load average before -> after, and memory."""
    text = (f"{entry.get('wall_s', 0):.0f} s, load {_fmt(entry.get('load_before'), '.2f')} -> "
            f"{_fmt(entry.get('load_after'), '.2f')}, peak RSS {_fmt(entry.get('peak_rss_mib'), '.0f')} MiB")
    if entry.get("rss_start_mib"):
        text += f" ({entry['rss_start_mib']:.0f} at its start)"
    if entry.get("peak_cuda_mib"):
        text += f", peak CUDA {entry['peak_cuda_mib']:.0f} MiB"
    return text


_COLUMNS = ("runner", "throughput", "p50 ms", "p90 ms", "p99 ms", "n", "ratio")


def _cells(r: dict) -> list[str]:
    """A row's cells in the order of _COLUMNS, then its notes."""
    ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None and r["runner"] != r.get("vs") else ""
    thr = f"{_fmt(r.get('throughput'))} {r['unit']}" if r.get("throughput") is not None else "-"
    return [r["runner"] + (" (peer)" if r.get("peer") else ""), thr, _fmt(r.get("p50_ms")), _fmt(r.get("p90_ms")),
            _fmt(r.get("p99_ms")), _fmt(r.get("n")), ratio, _detail(r)]


def _ratio_note(entry: dict) -> list[str]:
    vs = sorted({r["vs"] for r in entry.get("rows", []) if r.get("vs")})
    return [f"(ratio: throughput over {', '.join(vs)} in the same case; higher is better; n: timed calls, "
            "so a p99 of few calls is their slowest)"] if vs else []


def format_job(entry: dict) -> str:
    """One job's rows as a text table, its skipped peers and its memory, for the terminal."""
    lines = [f"\n== {entry['job']} ({_summary(entry)})"]
    if entry.get("error"):
        lines.append(f"  FAILED: {entry['error']}")
    widths = (44, 16, 9, 9, 9, 5, 7)
    case = None
    for r in entry.get("rows", []):
        if r["case"] != case:
            case = r["case"]
            lines += [f"  {case}", "    " + " ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                                                   for i, (c, w) in enumerate(zip(_COLUMNS, widths)))]
        *cells, notes = _cells(r)
        lines.append("    " + " ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in
                                        enumerate(zip(cells, widths))) + f"  {notes}")
    lines += [f"  skipped: {note}" for note in entry.get("skipped", [])]
    lines += [f"  {note}" for note in _ratio_note(entry)]
    return "\n".join(lines)


def _machine_line(m: dict) -> str:
    gpu = f", GPU {m['gpu']['name']}" if m.get("gpu") else ""
    return (f"{m['cpu']} ({m['cpu_class']}; {', '.join(m['isa'])}), {m['cpus_available']} CPUs, torch threads "
            f"{m['torch_threads']}, kernels {m.get('kernels', {}).get('simd', '?')}{gpu}")


def to_markdown(report: dict) -> str:
    m = report["machine"]
    out = ["# vqclip bench report", "", f"- command: `{report['command']}`", f"- created: {report['created']}",
           f"- machine: {_machine_line(m)}",
           "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), ""]
    for entry in report["jobs"]:
        out += [f"## {entry['job']}", "", _summary(entry), ""]
        if entry.get("error"):
            out += [f"FAILED: `{entry['error']}`", ""]
        if entry.get("rows"):
            out += ["| case | " + " | ".join(_COLUMNS) + " | notes |", "|---" * (len(_COLUMNS) + 2) + "|"]
            out += [f"| {r['case']} | " + " | ".join(_cells(r)) + " |" for r in entry["rows"]]
            out += [""] + _ratio_note(entry) + [""]
        out += [f"- skipped: {note}" for note in entry.get("skipped", [])]
        out.append("")
    return "\n".join(out)


def write_report(report: dict, out: Path) -> list[Path]:
    """``report.json``, ``report.md`` and the plots into ``out`` (made if missing); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md"]
    atomic_write_bytes(paths[0], (json.dumps(report, indent=1) + "\n").encode())
    atomic_write_bytes(paths[1], to_markdown(report).encode())
    from .plots import plot_report

    return paths + plot_report(report, out)


# ---------------------------------------------------------------------------- comparison


def _key(job: str, r: dict) -> tuple:
    return job, r["case"], r["runner"]


def _same_machine_key(m: dict) -> tuple:
    return m["cpu"], m["cpu_class"], m.get("gpu", {}).get("name")


def compare(new: dict, old: dict, worse: float = WORSE) -> list[str]:
    """Lines naming each figure more than ``worse`` worse than in ``old`` (throughput lower,
    or p50 higher); a line saying why nothing was compared when the machines differ."""
    a, b = new["machine"], old["machine"]
    if _same_machine_key(a) != _same_machine_key(b):
        return [f"not compared: the earlier report is from another machine ({_machine_line(b)}; this one: "
                f"{_machine_line(a)})"]
    before = {_key(e["job"], r): r for e in old["jobs"] for r in e.get("rows", [])}
    lines = []
    matched = 0
    for e in new["jobs"]:
        for r in e.get("rows", []):
            o = before.get(_key(e["job"], r))
            if o is None or r.get("peer"):
                continue
            matched += 1
            if r.get("throughput") and o.get("throughput") and r["throughput"] < (1 - worse) * o["throughput"]:
                lines.append(f"WORSE {e['job']} | {r['case']} | {r['runner']}: {_fmt(r['throughput'])} {r['unit']}, "
                             f"was {_fmt(o['throughput'])} ({r['throughput'] / o['throughput'] - 1:+.0%})")
            elif r.get("p50_ms") and o.get("p50_ms") and r["p50_ms"] > o["p50_ms"] * (1 + worse):
                lines.append(f"WORSE {e['job']} | {r['case']} | {r['runner']}: p50 {_fmt(r['p50_ms'])} ms, "
                             f"was {_fmt(o['p50_ms'])} ms ({r['p50_ms'] / o['p50_ms'] - 1:+.0%})")
    if not matched:
        lines.append("not compared: no figure of this run is in the earlier report (other jobs or options)")
    return lines


# ---------------------------------------------------------------------------- README table


def _cases(entry: dict) -> dict[str, list[dict]]:
    """Per case its rows, without the reference line (topk) and the stages but the kernel (search)."""
    cases: dict[str, list[dict]] = {}
    for r in entry.get("rows", []):
        kernel = r.get("stage") and r["runner"].startswith("kernel")  # what search's peers are compared with
        if (kernel or not r.get("stage")) and not r.get("reference") and r.get("throughput"):
            cases.setdefault(r["case"], []).append(r)
    return cases


def readme_table(report: dict, source: str) -> str:
    """The README's figures table: per job and case, every vqclip runner with its ratio to the
    case's peer, the peers, and the `vqclip bench` invocation that measures the row again."""
    m = report["machine"]
    lines = [README_BEGIN, "",
             f"Measured by `{report['command']}` on {_machine_line(m)}, {report['created'][:10]} "
             f"(report: `{source}`). Throughput is items over the mean call (for the server: answered requests "
             "over wall time), p50 the median call; each ratio is a runner's throughput over the case's first peer "
             "(named first in the peers column), measured in the same run.", "",
             "| job | case | vqclip: throughput (ratio) | peers: throughput | reproduce |", "|---|---|---|---|---|"]
    for e in report["jobs"]:
        for case, rows in _cases(e).items():
            ours = [r for r in rows if not r.get("peer")]
            peers = [r for r in rows if r.get("peer")]
            if not ours:
                continue
            peers.sort(key=lambda r: r["runner"] != ours[0].get("vs"))  # the ratios' reference first
            unit = ours[0]["unit"]
            latency = e["job"] in ("search", "serve")  # there the p50 is the figure a reader looks for
            cell = "; ".join(f"{r['runner'].removeprefix('vqclip ')} {_fmt(r['throughput'])}"
                             + (f" {unit}, p50 {_fmt(r['p50_ms'])} ms" if latency else "")
                             + (f" ({r['ratio']:.2f}x)" if r.get("ratio") is not None else "")
                             for r in ours) + ("" if latency else f" {unit}")
            others = "; ".join(f"{r['runner']} {_fmt(r['throughput'])}" for r in peers) or "-"
            lines.append(f"| {e['job']} | {case} | {cell} | {others} | `{ours[0]['reproduce']}` |")
    lines += ["", README_END]
    return "\n".join(lines)


def update_readme(report_path: Path, readme: Path) -> bool:
    """Replaces the table between the markers of ``readme``; True when the file changed."""
    report = json.loads(report_path.read_text())
    text = readme.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    new = text[:start] + readme_table(report, str(report_path)) + text[end:]
    if new != text:
        atomic_write_bytes(readme, new.encode())
    return new != text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Make the README's figures table from a bench report.")
    ap.add_argument("--readme", nargs=2, metavar=("REPORT_JSON", "README_MD"), required=True)
    a = ap.parse_args(argv)
    changed = update_readme(Path(a.readme[0]), Path(a.readme[1]))
    print(f"{a.readme[1]}: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
