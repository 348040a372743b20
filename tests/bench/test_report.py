"""The report: its files and plots, the comparison with an earlier one, and the README's
figures table, which must be the one made from the committed report."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from vqclip.bench import Options, run
from vqclip.bench.report import compare, format_job, readme_table, to_markdown, update_readme, write_report

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    return run(Options(jobs=("topk",), quick=True, seconds=0.03, rows=(2000, 4000), batches=(1,),
                       precisions=("fp32", "int8"), explicit={"precision": ("fp32", "int8")}))


def test_the_report_says_what_ran_where(report):
    m = report["machine"]
    assert m["cpu"] and m["cpu_class"] and m["cpus_available"] >= 1 and "numpy" in m["versions"]
    assert report["command"] == "vqclip bench topk --quick --precision fp32,int8"
    assert {r["runner"] for r in report["jobs"][0]["rows"]} >= {"vqclip float32", "vqclip int8"}
    text = format_job(report["jobs"][0])
    assert "N=2,000 D=512 B=1 k=10" in text and "vqclip int8" in text and "(peer)" in text


def test_write_report_makes_json_markdown_and_the_plot(report, tmp_path):
    paths = write_report(report, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["report.json", "report.md", "topk.png"]
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "out" / "topk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "out" / "report.md").read_text()
    assert md == to_markdown(report) and "| N=4,000 D=512 B=1 k=10 | vqclip float32 |" in md
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


def test_compare_flags_a_figure_more_than_20_percent_worse(report):
    assert compare(report, report) == []
    old = copy.deepcopy(report)
    rows = old["jobs"][0]["rows"]
    target = next(r for r in rows if r["runner"] == "vqclip float32" and r["case"].startswith("N=4,000"))
    target["throughput"] *= 1.3  # the new figure is 23% below the old one
    small = next(r for r in rows if r["runner"] == "vqclip int8" and r["case"].startswith("N=4,000"))
    small["throughput"] *= 1.1  # 9% below: within the machine's noise
    lines = compare(report, old)
    assert len(lines) == 1 and lines[0].startswith("WORSE topk | N=4,000 D=512 B=1 k=10 | vqclip float32:")
    assert "(-23%)" in lines[0]


def test_compare_refuses_another_machine_and_disjoint_reports(report):
    other = copy.deepcopy(report)
    other["machine"]["cpu"] = "Some Other CPU"
    (line,) = compare(report, other)
    assert line.startswith("not compared: the earlier report is from another machine")
    empty = copy.deepcopy(report)
    empty["jobs"] = []
    assert compare(report, empty) == ["not compared: no figure of this run is in the earlier report "
                                      "(other jobs or options)"]


def test_update_readme_replaces_only_the_table(report, tmp_path):
    src = tmp_path / "report.json"
    src.write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    begin, end = readme_table(report, "x").splitlines()[0], readme_table(report, "x").splitlines()[-1]
    readme.write_text(f"# title\n\nbefore\n{begin}\nold table\n{end}\nafter\n")
    assert update_readme(src, readme) is True
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith("\nafter\n") and "old table" not in text
    assert "| topk | N=2,000 D=512 B=1 k=10 |" in text and "`vqclip bench topk --quick --precision fp32,int8 " in text
    assert update_readme(src, readme) is False  # made again from the same report: unchanged


def test_the_readme_table_is_made_from_the_committed_report():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"\(report: `([^`]+)`\)", readme)
    assert m, "the README's figures table names no report"
    committed = json.loads((ROOT / m.group(1)).read_text())
    assert readme_table(committed, m.group(1)) in readme, \
        "README.md's table is stale: python -m vqclip.bench.report --readme REPORT README.md"
