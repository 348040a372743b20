"""The batched generator on the bundled models: reproducible, batched like single runs,
resumable, its outputs saying how they were made, and every bad input refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vqclip.errors import (
    BackendUnavailableError,
    DeviceMemoryError,
    ImageDecodeError,
    InvalidInputError,
    OutputPathError,
    TextTooLongError,
)
from vqclip.jobs.generate import CutoutSpec, GenerateSettings, Generator
from vqclip.jobs.generate.outputs import read_png_settings
from vqclip.jobs.generate.prompts import parse_prompts


@pytest.fixture(scope="module")
def gen():
    return Generator()  # the bundled shapes-clip and shapes-vqgan


def _settings(seed=1, steps=6, **kw):
    return GenerateSettings(steps=steps, seed=seed, cutouts=CutoutSpec(cutn=4), save_every=0, **kw)


def test_same_seed_same_image_bit_for_bit(gen):
    runs = []
    for _ in range(2):
        job = gen.add_job("a red star", _settings(seed=3))
        list(gen.run())
        runs.append(job.result)
    assert runs[0].shape == (64, 64, 3) and runs[0].dtype == np.uint8
    assert np.array_equal(runs[0], runs[1])
    other = gen.add_job("a red star", _settings(seed=4))
    list(gen.run())
    assert not np.array_equal(other.result, runs[0])


def test_a_batch_steps_each_job_as_its_single_run_would(gen):
    # Jobs in one batch share every kernel call; their losses never mix, so each gets its own
    # gradient, up to the fp32 rounding of batch-size-dependent kernels (oneDNN convolutions,
    # GEMM blocking): ~1e-7, which can flip a rare near-tie code later in a run.
    prompts = [("a red star", 1), ("a blue circle on a white background", 2), ("a green square", 3)]
    singles, first_steps = {}, {}
    for text, seed in prompts:
        job = gen.add_job(text, _settings(seed=seed))
        first_steps[seed] = [e for e in gen.step()][0].loss
        list(gen.run())
        singles[seed] = job.result
    jobs = [gen.add_job(text, _settings(seed=seed)) for text, seed in prompts]
    first = {e.job_id: e.loss for e in gen.step()}
    list(gen.run())
    for job in jobs:
        assert first[job.id] == pytest.approx(first_steps[job.seed], rel=1e-5)  # same z, same cutouts: same loss
        diff = np.abs(job.result.astype(int) - singles[job.seed].astype(int))
        assert diff.mean() < 1.0, f"seed {job.seed}: mean |diff| {diff.mean():.2f} levels"


def test_in_fp64_a_batched_job_is_its_single_run_exactly():
    # fp64 leaves no rounding for batch-size-dependent kernels to flip a code with.
    g = Generator(dtype="fp64")
    prompts = [("a red star", 1), ("a blue circle", 2)]
    singles = {}
    for text, seed in prompts:
        job = g.add_job(text, _settings(seed=seed, steps=8))
        list(g.run())
        singles[seed] = job.result
    jobs = [g.add_job(text, _settings(seed=seed, steps=8)) for text, seed in prompts]
    list(g.run())
    for job in jobs:
        assert np.array_equal(job.result, singles[job.seed])


def test_outputs_carry_their_settings(gen, tmp_path):
    job = gen.add_job("a red star:1|blurry:-0.5", _settings(seed=5, steps=4, smoothness=0.5).with_(save_every=2),
                      out_dir=tmp_path, video=True)
    events = list(gen.run())
    assert [e.step for e in events] == [1, 2, 3, 4] and events[-1].status == "done"
    assert set(events[0].losses) == {"text:a red star:1", "text:blurry:-0.5", "smoothness"}
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["a-red-star-5-00002.png", "a-red-star-5.gif", "a-red-star-5.json", "a-red-star-5.png"] or \
        files == ["a-red-star-5-00002.png", "a-red-star-5.json", "a-red-star-5.mp4", "a-red-star-5.png"]
    rec = read_png_settings(tmp_path / "a-red-star-5.png")
    assert rec["seed"] == 5 and rec["step"] == 4 and rec["prompts"] == "a red star|blurry"
    assert rec["settings"]["smoothness"] == 0.5 and rec["models"]["clip"]["name"] == "shapes-clip"
    again = GenerateSettings.from_dict(rec["settings"])
    assert again == job.settings  # a result says exactly how to make it again
    side = json.loads((tmp_path / "a-red-star-5.json").read_text())
    assert len(side["losses"]) == 4 and side["status"] == "done"


def test_resume_then_finish_matches_an_uninterrupted_run(tmp_path):
    g = Generator()
    whole = g.add_job("a yellow cross", _settings(seed=8, steps=8))
    list(g.run())
    first = g.add_job("a yellow cross", _settings(seed=8, steps=8), out_dir=tmp_path, checkpoint_every=4)
    for _ in range(4):
        g.step()
    g.cancel(first)
    g2 = Generator()
    job = g2.resume(tmp_path / f"{first.name}.ckpt", out_dir=tmp_path / "resumed")
    assert job.step == 4
    list(g2.run())
    assert np.array_equal(job.result, whole.result)


def test_interrupt_writes_the_latest_image(gen, tmp_path):
    job = gen.add_job("a purple circle", _settings(seed=2, steps=50), out_dir=tmp_path)
    gen.step()
    saved = gen.interrupt()
    assert job.status == "interrupted" and str(tmp_path / f"{job.name}.png") in saved
    assert read_png_settings(tmp_path / f"{job.name}.png")["step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp files left


def test_auto_stop_story_and_lr_drops(gen):
    gen.add_job("a red star", _settings(seed=1, steps=40, lr=1e-9, auto_stop=2))
    events = list(gen.run())
    assert events[-1].status == "stopped" and events[-1].step < 40
    story = gen.add_job("a red star^a blue circle", _settings(seed=1, steps=4, story_every=2, lr_drops=(0.5,)))
    seen = []
    while story.status == "running":
        seen.append(story.active_targets().prompts[0].value)
        gen.step()
        seen_lr = story.opt.param_groups[0]["lr"] if story.opt else None
    assert seen == ["a red star", "a red star", "a blue circle", "a blue circle"]
    assert seen_lr == pytest.approx(0.01)  # dropped 10x at half the run


@pytest.mark.parametrize("changes,error,match", [
    ({"steps": 0}, InvalidInputError, "steps must be"),
    ({"size": (63, 64)}, InvalidInputError, "not a multiple of 4"),
    ({"palette": ("#12345",), "palette_weight": 1.0}, InvalidInputError, "does not parse"),
    ({"optimiser": "sgd"}, InvalidInputError, "optimiser 'sgd'"),
    ({"lr_drops": (1.5,)}, InvalidInputError, "lr_drops"),
    ({"init": "image"}, InvalidInputError, "needs init_image"),
])
def test_bad_settings_are_refused_in_one_line(gen, changes, error, match):
    with pytest.raises(error, match=match) as err:
        gen.add_job("a red star", _settings().with_(**changes))
    assert "\n" not in str(err.value)


def test_bad_inputs_are_refused(gen, tmp_path):
    with pytest.raises(InvalidInputError, match="no prompts"):
        gen.add_job("", _settings())
    with pytest.raises(ImageDecodeError):
        gen.add_job("x", _settings().with_(init="image", init_image=str(tmp_path / "missing.png")))
    with pytest.raises(ImageDecodeError):
        gen.add_job(parse_prompts("x", image_prompts=[str(tmp_path / "nope.png")]), _settings())
    long = " ".join(["star"] * 40)  # more tokens than shapes-clip's context of 16
    with pytest.raises(TextTooLongError):
        gen.add_job(long, _settings())
    job = gen.add_job(long, _settings(steps=1).with_(truncate=True))
    list(gen.run())
    assert job.status == "done"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="not a folder"):
        gen.add_job("x", _settings(), out_dir=tmp_path / "file")
    assert not gen.running()


def test_cuda_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU"):
        Generator(device="cuda")


def test_out_of_memory_falls_back_to_cutout_micro_batches(monkeypatch, caplog):
    # pixray's "batches": the same step with the cutouts in pieces, gradients accumulated.
    # fp64, so that no CPU's fp32 rounding of the split sums can flip a near-tie code.
    from vqclip.jobs.generate import generator as module

    gen = Generator(dtype="fp64")

    def jobs():  # cutn 4 and 1 in one batch: the second sits out the later micro-batches
        return [gen.add_job("a red star", _settings(seed=5, steps=3)),
                gen.add_job("a blue circle", _settings(seed=6, steps=3).with_(cutouts=CutoutSpec(cutn=1)))]

    reference = jobs()
    list(gen.run())
    real, sizes = module.apply_cutouts, []

    def small_memory(params, img, size):
        sizes.append(sum(len(p.noise) for p in params))
        if sizes[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(params, img, size)

    monkeypatch.setattr(module, "apply_cutouts", small_memory)
    try:
        split = jobs()
        list(gen.run())
        assert sizes[:6] == [5, 3, 2, 1, 1, 1]  # halved until the pieces fit: 4+1, 2+1, then 1+1, 1, 1, 1
        assert gen.cut_split == {(64, 64, 2): 4} and "micro-batches" in caplog.text
        # the retry redraws the same cutouts, so each run is the same computation in other pieces
        for ref, job in zip(reference, split):
            np.testing.assert_allclose(job.losses, ref.losses, rtol=1e-4)
            assert job.step == 3  # one optimiser step per step, whatever the retries
        gen.add_job("a red star", _settings(seed=5, steps=1).with_(cutouts=CutoutSpec(cutn=1)))
        monkeypatch.setattr(module, "apply_cutouts", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
        with pytest.raises(DeviceMemoryError, match="even one cutout at a time"):
            gen.step()
    finally:
        gen.jobs.clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_a_cuda_step_computes_the_cpu_loss():
    # the first loss is before any update: same z, same cutouts (drawn on the CPU), same models
    cpu, cuda = Generator(), Generator(device="cuda")
    losses = []
    for g in (cpu, cuda):
        job = g.add_job("a red star", _settings(seed=2, steps=2))
        list(g.run())
        losses.append(job.losses)
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-3)  # TF32 convolutions allowed
    assert losses[1][1] == pytest.approx(losses[0][1], rel=2e-2)  # after one optimiser step on each device
    auto = cuda.add_job("a red star", _settings(seed=2, steps=2).with_(precision="auto"))
    list(cuda.run())
    assert np.isfinite(auto.losses).all() and auto.losses[0] == pytest.approx(losses[0][0], rel=5e-2)


def test_jobs_of_other_precisions_step_in_their_own_batches(gen, monkeypatch):
    seen = []
    real = gen._step_group
    monkeypatch.setattr(gen, "_step_group", lambda jobs: seen.append({j.settings.precision for j in jobs}) or
                        real(jobs))
    gen.add_job("a red star", _settings(seed=1, steps=1))
    gen.add_job("a red star", _settings(seed=2, steps=1).with_(precision="bf16"))
    list(gen.run())
    assert sorted(map(sorted, seen)) == [["bf16"], ["fp32"]]


def test_every_optimiser_the_settings_accept_is_a_torch_optimiser():
    from vqclip.jobs.generate.generator import _OPTIMISERS
    from vqclip.jobs.generate.settings import OPTIMISERS

    assert sorted(_OPTIMISERS) == sorted(OPTIMISERS)
    assert all(issubclass(cls, torch.optim.Optimizer) for cls in _OPTIMISERS.values())
