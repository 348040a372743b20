"""The onnxruntime generation backend: what it refuses (one line each), what it needs of a step
graph folder, and that its jobs save, resume and report as the PyTorch backend's do."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from vqclip.errors import BackendUnavailableError, InvalidInputError, ManifestError, UnsupportedOperationError
from vqclip.jobs.generate import Generator


def _settings(gen, **changes):
    s = gen.default_settings()
    return s.with_(**{"seed": 1, "steps": 3, "save_every": 0, "cutouts": replace(s.cutouts, cutn=2), **changes})


@pytest.fixture(scope="module")
def graph_gen(bundled_step_graph):
    return Generator(backend="onnxruntime", step_graph=bundled_step_graph)


def test_a_job_runs_to_its_end_with_losses_for_each_prompt_and_regulariser(graph_gen, tmp_path):
    job = graph_gen.add_job("a red star|blurry:-0.5", _settings(graph_gen), out_dir=tmp_path)
    events = list(graph_gen.run())
    assert [e.step for e in events] == [1, 2, 3] and events[-1].status == "done"
    assert {"text:blurry:-0.5", "smoothness", "palette", "init"} <= set(events[-1].losses)
    assert job.result.shape == (64, 64, 3) and (tmp_path / f"{job.name}.png").is_file()
    record = json.loads((tmp_path / f"{job.name}.json").read_text())
    assert len(record["losses"]) == 3


@pytest.mark.parametrize("change,match", [
    ({"cutouts": "crops"}, "pooled cutouts only"),
    ({"precision": "bf16"}, "steps in fp32"),
    ({"size": (128, 64)}, "export one with --size 128 64"),
    ({"cutn": 4}, "--cutn 4"),
])
def test_what_the_graph_cannot_run_is_refused_when_the_job_is_added(graph_gen, change, match):
    s = _settings(graph_gen)
    if "cutouts" in change:
        s = s.with_(cutouts=replace(s.cutouts, method="crops"))
    elif "cutn" in change:
        s = s.with_(cutouts=replace(s.cutouts, cutn=change["cutn"]))
    else:
        s = s.with_(**change)
    with pytest.raises(UnsupportedOperationError, match=match):
        graph_gen.add_job("a red star", s)
    assert graph_gen.jobs == []


def test_more_prompts_than_the_graph_has_slots_are_refused(graph_gen):
    many = "|".join(f"a red star {i}" for i in range(5))  # x2 with the preset's background prompt: 10 > 8
    with pytest.raises(UnsupportedOperationError, match="--prompts 10"):
        graph_gen.add_job(many, _settings(graph_gen))


def test_settings_that_never_fit_the_backend_are_refused_at_construction(bundled_step_graph, tmp_path):
    with pytest.raises(InvalidInputError, match="not one of torch, onnxruntime"):
        Generator(backend="tensorflow")
    with pytest.raises(InvalidInputError, match="runs on the onnxruntime generation backend"):
        Generator(step_graph=bundled_step_graph)
    with pytest.raises(UnsupportedOperationError, match="fp32"):
        Generator(backend="onnxruntime", dtype="fp64")
    with pytest.raises(ManifestError, match="not a generation-step export"):
        Generator(backend="onnxruntime", step_graph=tmp_path)


def test_a_folder_of_other_models_or_without_its_graph_is_refused(bundled_step_graph, tmp_path, tiny_clip):
    with pytest.raises(ManifestError, match="exported from another clip"):
        Generator(tiny_clip, backend="onnxruntime", step_graph=bundled_step_graph)
    copy = tmp_path / "copy"
    shutil.copytree(bundled_step_graph, copy)
    (copy / "generation_step.onnx").unlink()
    with pytest.raises(ManifestError, match="no generation_step.onnx"):
        Generator(backend="onnxruntime", step_graph=copy)


def test_a_torch_checkpoint_resumes_on_onnxruntime(bundled_step_graph, tmp_path):
    torch_gen = Generator()
    job = torch_gen.add_job("a red star", _settings(torch_gen, steps=4), out_dir=tmp_path, checkpoint_every=2)
    for _ in range(2):
        torch_gen.step()
    ckpt = torch_gen.save_checkpoint(job)
    graph_gen = Generator(backend="onnxruntime", step_graph=bundled_step_graph)
    resumed = graph_gen.resume(ckpt, out_dir=tmp_path / "resumed")
    events = list(graph_gen.run())
    assert resumed.step == 4 and events[-1].status == "done" and len(resumed.losses) == 4


def _cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_on_cuda_the_graph_needs_onnxruntime_gpu(bundled_step_graph):
    if _cuda_provider():
        gen = Generator(device="cuda", backend="onnxruntime", step_graph=bundled_step_graph)
        gen.add_job("a red star", _settings(gen))
        events = list(gen.run())
        assert events[-1].status == "done"
        assert all(sess.get_providers()[0] == "CUDAExecutionProvider" for sess in gen.stepper.sessions.values())
    else:
        with pytest.raises(BackendUnavailableError, match="needs onnxruntime-gpu"):
            Generator(device="cuda", backend="onnxruntime", step_graph=bundled_step_graph)


def test_a_damaged_or_foreign_record_is_refused_in_one_line(bundled_step_graph, tmp_path):
    for name, text in (("no-models", '{"format": "vqclip-generation-step", "shape": {"size": [64, 64], "cutn": 2}}'),
                       ("a-list", "[]"), ("not-json", "{")):
        folder = tmp_path / name
        shutil.copytree(bundled_step_graph, folder)
        (folder / "generation.json").write_text(text)
        with pytest.raises(ManifestError, match="is not a generation-step export"):
            Generator(backend="onnxruntime", step_graph=folder)
    damaged = tmp_path / "damaged"
    shutil.copytree(bundled_step_graph, damaged)
    with open(damaged / "generation_step.onnx", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ManifestError, match="is damaged"):
        Generator(backend="onnxruntime", step_graph=damaged)


def test_the_cache_exports_once_and_again_when_its_graph_is_damaged(tiny_clip, tiny_vqgan, tmp_path, monkeypatch):
    """Without a step graph folder: the first step exports into the cache, a new generator
    reuses it, a damaged one is exported again (tiny models: seconds)."""
    from vqclip.export import generation

    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path / "cache"))
    exports = []
    real = generation.export_generation
    monkeypatch.setattr(generation, "export_generation", lambda *a, **k: exports.append(1) or real(*a, **k))

    def run_one():
        gen = Generator(tiny_clip, tiny_vqgan, backend="onnxruntime")
        s = gen.default_settings()
        gen.add_job("a red star|a red star", s.with_(seed=1, steps=2, save_every=0, cutouts=replace(s.cutouts, cutn=2)))
        return list(gen.run())

    events = run_one()
    assert len(exports) == 1 and events[-1].status == "done"
    assert events[-1].losses["text:a red star:1"] > 0  # the prompt given twice: both counted under its name
    run_one()
    assert len(exports) == 1
    (graph,) = (tmp_path / "cache" / "generation").glob("*/generation_step.onnx")
    graph.write_bytes(graph.read_bytes()[:-10])
    run_one()
    assert len(exports) == 2
