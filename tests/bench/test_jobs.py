"""Every bench job at tiny sizes (seconds, not a measurement): it runs vqclip and its peers,
and its rows carry the figures and checks the report and the README are made from."""
from __future__ import annotations

import pytest

from vqclip.bench import JOBS, Options, run
from vqclip.errors import CheckpointError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the bundled model's export is made once and shared."""
    from vqclip.checkpoints import load_clip

    try:
        load_clip("shapes-clip")
    except CheckpointError as e:
        pytest.skip(f"bundled shapes-clip weights missing: {e}")
    mp = pytest.MonkeyPatch()
    mp.setenv("VQCLIP_CACHE", str(tmp_path_factory.mktemp("bench-cache")))
    yield
    mp.undo()


def _run(job: str, **kw) -> dict:
    opts = Options(jobs=(job,), quick=True, seconds=0.05, **kw)
    report = run(opts)
    (entry,) = report["jobs"]
    assert not report["failed"], entry.get("trace")
    assert entry["peak_rss_mib"] > 0 and entry["load_after"] is not None
    return entry


def _runner(entry: dict, name: str, case_part: str = "") -> dict:
    return next(r for r in entry["rows"] if r["runner"] == name and case_part in r["case"])


def test_the_job_names_are_the_clis():
    from vqclip.cli.bench import JOB_NAMES

    assert tuple(JOBS) == JOB_NAMES


@pytest.mark.parametrize("job", ["encode-image", "encode-text"])
def test_encode_jobs_time_every_backend_beside_transformers_and_check_their_outputs(cache, job):
    entry = _run(job, backends=("torch", "onnxruntime"), precisions=("fp32", "int8"), batches=(1, 2))
    runners = {r["runner"] for r in entry["rows"]}
    assert runners == {"transformers eager fp32", "vqclip torch fp32", "vqclip onnxruntime fp32",
                       "vqclip onnxruntime int8"}
    for b in (1, 2):
        ort = _runner(entry, "vqclip onnxruntime fp32", f"b{b}")
        assert ort["batch"] == b and ort["n"] >= 3 and ort["p50_ms"] > 0
        assert ort["min_cos_vs_torch_fp32"] > 0.9999  # the export's fp32 bound, on the benchmark's own inputs
        assert _runner(entry, "vqclip onnxruntime int8", f"b{b}")["min_cos_vs_torch_fp32"] > 0.99  # export/parity.py
        assert ort["ratio"] == pytest.approx(ort["throughput"] / _runner(entry, "transformers eager fp32",
                                                                         f"b{b}")["throughput"])
        assert ort["reproduce"] == f"vqclip bench {job} --quick --model shapes-clip --batch {b}"


def test_topk_measures_the_peers_and_the_read_bandwidth_and_checks_recall(cache):
    entry = _run("topk", rows=(3000,), batches=(1, 3))
    for b in (1, 3):
        case = f"B={b} "
        for storage in ("float32", "float16", "int8"):
            row = _runner(entry, f"vqclip {storage}", case)
            assert row["storage"] == storage and row["gb_s"] > 0 and row["pct_of_bandwidth"] > 0
            assert row["gallery_rows"] == 3000 and row["n"] >= 3 and row["batch"] == b
        assert _runner(entry, "vqclip float32", case)["recall_at_k"] == 1.0
        assert _runner(entry, "vqclip float16", case)["recall_at_k"] >= 0.9
        for peer in ("FAISS IndexFlatIP fp32", "torch.topk(Q @ G.T) fp32", "numpy argpartition(Q @ G.T) fp32"):
            row = _runner(entry, peer, case)
            assert row["peer"] and row["recall_at_k"] == 1.0
        bw = _runner(entry, entry["bandwidth_runner"], case)
        assert bw["unit"] == "GB/s" and "ratio" not in bw and not bw["peer"]
        assert _runner(entry, "vqclip float32", case)["vs"] == "FAISS IndexFlatIP fp32"


def test_search_times_each_stage_on_its_own(cache):
    entry = _run("search", backends=("torch",), precisions=("fp32",), rows=(2000,))
    e2e = _runner(entry, "vqclip Index.search, torch fp32")
    assert e2e["p50_ms"] > 0 and len(e2e["cdf_ms"]) == 101 and e2e["cdf_ms"] == sorted(e2e["cdf_ms"])
    stages = {stage: _runner(entry, f"{stage} (torch fp32)") for stage in ("tokenise", "text encoder", "kernel",
                                                                           "lookup")}
    for row in stages.values():
        assert row["stage"] and 0 < row["p50_ms"] < e2e["p50_ms"]  # each timed alone: a part of the whole
    assert e2e["index_rows"] == 2000 and e2e["n"] >= 5
    e2e_kernel_vs = _runner(entry, "kernel (torch fp32)")["vs"]
    assert e2e_kernel_vs == "FAISS IndexFlatIP fp32 (kernel only)"
    assert "ratio" not in e2e  # the peers search only: no ratio against the whole query
    for peer in ("numpy argpartition(Q @ G.T) fp32 (kernel only)", "torch.topk(Q @ G.T) fp32 (kernel only)"):
        assert _runner(entry, peer)["peer"] and _runner(entry, peer)["vs"] == e2e_kernel_vs


def test_index_build_against_the_sequential_peer(cache):
    entry = _run("index-build", backends=("torch",), precisions=("fp32",), rows=(6,))
    ours, peer = _runner(entry, "vqclip build_index"), _runner(entry, "sequential decode then encode")
    assert ours["images"] == 6 and ours["unit"] == "img/s" and peer["peer"]
    assert 0 <= ours["not_encode_share"] <= 1 and ours["encode_s"] > 0


def test_milvus_job_times_kernel_flat_and_hnsw_with_recall(cache):
    pytest.importorskip("milvus_lite", reason="the milvus job needs milvus-lite (pip install 'vqclip[milvus]')")
    entry = _run("milvus", rows=(3000,))
    kernel = _runner(entry, "vqclip Index fp16 (kernel + lookup)")
    flat, hnsw = _runner(entry, "Milvus Lite FLAT"), _runner(entry, "Milvus Lite HNSW (M=16, efC=100, ef=64)")
    assert kernel["recall_at_k"] == flat["recall_at_k"] == 1.0  # both exact over the same fp16 rows
    assert 0.5 < hnsw["recall_at_k"] <= 1.0 and hnsw["index_build_s"] > 0
    assert flat["insert_rows_s"] > 0 and kernel["vs"] == "Milvus Lite FLAT" and kernel["ratio"] > 0
    assert kernel["n"] > flat["n"]  # the kernel is timed beside each Milvus index


def test_index_build_ray_against_build_index(cache):
    pytest.importorskip("ray.data", reason="the index-build-ray job needs Ray Data (pip install 'vqclip[ray]')")
    entry = _run("index-build-ray", backends=("torch",), precisions=("fp32",), rows=(6,))
    ours, peer = _runner(entry, "vqclip index build --ray (Ray Data, shards)"), _runner(entry, "vqclip build_index")
    assert ours["images"] == 6 and peer["peer"] and ours["vs"] == "vqclip build_index" and ours["ray_cpus"] >= 1
    imported = _runner(entry, "vqclip index build --ray + index import")
    assert imported["p50_ms"] > ours["p50_ms"] and 0 < ours["start_s"]  # the same job, plus the import


def test_generate_steps_beside_the_vqgan_clip_step(cache):
    pytest.importorskip("kornia", reason="the VQGAN-CLIP step (the peer) needs kornia")
    entry = _run("generate")
    ours = _runner(entry, "vqclip Generator fp32", "bundled")
    assert ours["unit"] == "steps/s" and ours["n"] >= 3 and ours["vs"] == "VQGAN-CLIP generate.py step"
    batched = [r for r in entry["rows"] if r["unit"] == "images/h"]
    assert {r["peer"] for r in batched} == {True, False} and all(r["throughput"] > 0 for r in batched)


def test_generate_without_kornia_skips_the_peer_saying_why(cache, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_kornia(name, *a, **kw):
        if name.startswith("kornia"):
            raise ImportError("no kornia", name="kornia")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_kornia)
    entry = _run("generate")
    assert any("kornia" in s for s in entry["skipped"])
    assert not any(r["peer"] and r["unit"] == "steps/s" for r in entry["rows"])


@pytest.mark.slow
def test_serve_runs_a_real_server_with_batching_on_and_off(cache):
    pytest.importorskip("fastapi")
    entry = _run("serve", backends=("torch",), precisions=("fp32",))
    for clients in (1, 8):
        on = _runner(entry, "vqclip serve, batching on", f", {clients} clients")
        off = _runner(entry, "vqclip serve, batching off", f", {clients} clients")
        assert on["errors"] == 0 and off["errors"] == 0 and off["peer"] and on["clients"] == clients
        assert off["mean_batch"] == pytest.approx(1.0)
        assert on["n"] == off["n"] == max(32, 4 * clients) and len(on["cdf_ms"]) == 101  # every request answered
        assert on["ratio"] == pytest.approx(on["throughput"] / off["throughput"])


def test_a_failing_job_is_recorded_and_the_others_still_run(cache, monkeypatch):
    import vqclip.bench as bench

    def broken(opts, job):
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(bench.JOBS, "encode-image", broken)
    report = run(Options(jobs=("encode-image", "index-build"), quick=True, seconds=0.05, backends=("torch",),
                         precisions=("fp32",), rows=(4,)))
    assert report["failed"] == ["encode-image"]
    assert report["jobs"][0]["error"] == "RuntimeError: disk on fire"
    assert report["jobs"][1]["rows"]
