"""The exported generation step: each backward op's forward-op form against autograd, the graph
against the PyTorch generator's own gradients (bundled models, and ViT-B/32 + f16-16384 shapes on
random weights), the export folder's contract and its failure paths."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqclip.export import generation as G
from vqclip.export.generation import StepShape

aten = torch.ops.aten


def _vjp(fn, x, g):
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(x), x, g)
    return grad


def _close(a, b, rel=1e-5):
    assert float((a - b).norm() / b.norm()) < rel


@pytest.mark.parametrize("stride,padding,size", [(1, 1, 9), (2, 1, 9), (2, 0, 10), (1, 0, 7), (4, 0, 16)])
def test_convolution_backward_is_a_transposed_or_flipped_convolution(stride, padding, size):
    x, w = torch.randn(2, 3, size, size), torch.randn(5, 3, 3 if stride < 4 else 4, 3 if stride < 4 else 4)
    out = F.conv2d(x, w, stride=stride, padding=padding)
    g = torch.randn_like(out)
    mine, _, _ = G._conv_backward(g, x, w, [5], [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], 1,
                                  [True, False, False])
    _close(mine, _vjp(lambda t: F.conv2d(t, w, stride=stride, padding=padding), x, g))


def test_nearest_upsampling_backward_is_a_block_sum():
    x = torch.randn(2, 3, 5, 4)
    g = torch.randn(2, 3, 10, 8)
    mine = G._upsample_nearest_backward(g, [10, 8], [2, 3, 5, 4])
    _close(mine, _vjp(lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest"), x, g))


@pytest.mark.parametrize("size,out", [(64, 32), (128, 224), (96, 64), (256, 224)])
def test_adaptive_pools_and_their_backward_match_torch_also_where_windows_overlap(size, out):
    x = torch.rand(2, 3, size, size + 8)
    x[:, :, :6, :6] = 1.0  # saturated pixels: ties inside windows, where max pooling picks one
    g = torch.randn(2, 3, out, out + 3)
    _close(G._adaptive_avg_pool(x, [out, out + 3]), F.adaptive_avg_pool2d(x, (out, out + 3)), 1e-6)
    _close(G._adaptive_avg_pool_backward(g, x), _vjp(lambda t: F.adaptive_avg_pool2d(t, (out, out + 3)), x, g))
    values, index = aten.adaptive_max_pool2d(x, [out, out + 3])
    mine = G._adaptive_max_pool(x, [out, out + 3])
    if mine is not NotImplemented:  # fixed windows stay ONNX MaxPool
        assert torch.equal(mine[0], values) and torch.equal(mine[1], index)
    _close(G._adaptive_max_pool_backward(g, x, index), _vjp(lambda t: F.adaptive_max_pool2d(t, (out, out + 3)), x, g))


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_backward_scatters_like_torch(padding):
    x = torch.randn(3, 3, 20, 24)
    grid = torch.rand(3, 16, 16, 2) * 2.6 - 1.3  # also outside the image, where padding decides
    g = torch.randn(3, 3, 16, 16)
    mine, _ = G._grid_sample_backward(g, x, grid, 0, ("zeros", "border", "reflection").index(padding), False,
                                      [True, False])
    _close(mine, _vjp(lambda t: F.grid_sample(t, grid, padding_mode=padding, align_corners=False), x, g))


@pytest.mark.parametrize("mode", ["init", "decay"])
def test_the_graph_gives_the_generators_own_gradient(bundled_step_graph, mode):
    """Same job state, same draws: the exported step's dL/dz and losses against the PyTorch
    generator's autograd step (the runtime's reference), with every regulariser on; "decay"
    also pads the palette (3 colours in the graph's 9 slots) and the prompts (2 in 8)."""
    from vqclip.jobs.generate import Generator

    torch_gen, graph_gen = Generator(), Generator(backend="onnxruntime", step_graph=bundled_step_graph)
    preset = torch_gen.default_settings()
    settings = preset.with_(seed=5, steps=10, symmetry=0.5, saturation=0.2, init_weight=0.5, init_mode=mode,
                            cutouts=replace(preset.cutouts, cutn=2, brightness=0.2, contrast=0.2))
    if mode == "decay":
        settings = settings.with_(palette=("red", "blue", "grey"), background_prompt=None)
    a, b = torch_gen.add_job("a red star|blurry:-0.5", settings), graph_gen.add_job("a red star|blurry:-0.5", settings)
    for step in range(3):  # a few steps in, so init and the optimiser have moved z
        img_a, terms_a = torch_gen._gradients([a], 1)
        img_b, terms_b = graph_gen.stepper.gradients([b])
        ga, gb = a.z.grad.double().ravel(), b.z.grad.double().ravel()
        assert float(ga @ gb / (ga.norm() * gb.norm())) >= 0.999
        assert float((ga - gb).norm() / ga.norm()) <= 1e-3
        assert set(terms_a[0]) == set(terms_b[0]) and {"init", "smoothness", "symmetry", "saturation", "palette"} <= \
            set(terms_b[0])
        for k in terms_a[0]:
            assert terms_b[0][k] == pytest.approx(terms_a[0][k], rel=1e-4, abs=1e-6), k
        assert float((img_a - img_b).detach().abs().max()) < 1e-5
        for gen, job in ((torch_gen, a), (graph_gen, b)):  # the same update on both: z stays equal
            job.opt.step()
            with torch.no_grad():
                job.z.copy_(job.z.maximum(gen.z_min).minimum(gen.z_max))
            job.step += 1
        b.z.data.copy_(a.z.data)


def test_fifty_steps_on_onnxruntime_follow_the_pytorch_loop(bundled_step_graph):
    """50 steps in lockstep: at every step of the PyTorch loop, the graph's dL/dz from the same z and
    draws against the loop's own. Measured relative error, median / max / steps over 1e-3: 1.2e-6 /
    8.6e-4 / 0 (avx512-vnni) and 1.5e-6 / 3.2e-3 / 1 with PyTorch on its AVX2 kernels
    (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2): a step whose pixels sit on a clamp's edge
    (export/generation.py) can pass 1e-3 on either backend. Asserted: cosine >= 0.999 and error
    <= 1e-2 at every step, median <= 1e-4, at most 5 steps of 50 over 1e-3. Then four seeds run freely:
    fp32 rounding differs between the graph and autograd (~1e-7 relative per step), so a near-tie
    code can flip and a run becomes a nearby sample (measured: 3 of 4 seeds identical, the fourth
    8.4/255 mean absolute difference, avx512-vnni); how many flip depends on the CPU's kernels, so
    the stated tolerance is on every seed: within 24/255."""
    from vqclip.jobs.generate import Generator

    torch_gen, graph_gen = Generator(), Generator(backend="onnxruntime", step_graph=bundled_step_graph)
    s = torch_gen.default_settings()
    s = s.with_(seed=1, steps=50, save_every=0, cutouts=replace(s.cutouts, cutn=2))
    a, b = torch_gen.add_job("a red star", s), graph_gen.add_job("a red star", s)
    errors: list[float] = []
    for _ in range(50):
        state = a.gen.get_state()
        torch_gen._gradients([a], 1)
        b.gen.set_state(state)  # the same draws
        b.z.data.copy_(a.z.data)
        b.step = a.step
        graph_gen.stepper.gradients([b])
        ga, gb = a.z.grad.double().ravel(), b.z.grad.double().ravel()
        errors.append(float((ga - gb).norm() / ga.norm()))
        assert float(ga @ gb / (ga.norm() * gb.norm())) >= 0.999 and errors[-1] <= 1e-2
        torch_gen._schedule(a)
        a.opt.step()
        with torch.no_grad():
            a.z.copy_(a.z.maximum(torch_gen.z_min).minimum(torch_gen.z_max))
        a.step += 1
    torch_gen.jobs, graph_gen.jobs = [], []
    assert np.median(errors) <= 1e-4 and sum(e > 1e-3 for e in errors) <= 5, errors
    diffs = []
    for seed in (1, 2, 3, 4):
        a, b = torch_gen.add_job("a red star", s.with_(seed=seed)), graph_gen.add_job("a red star", s.with_(seed=seed))
        list(torch_gen.run())
        list(graph_gen.run())
        diffs.append(np.abs(a.result.astype(np.float64) - b.result.astype(np.float64)).mean())
    assert max(diffs) <= 24, diffs


def test_the_export_folder_records_its_shape_models_and_parity(bundled_step_graph):
    record = json.loads((bundled_step_graph / G.RECORD).read_text())
    assert record["format"] == G.FORMAT and record["shape"]["cutn"] == 2 and record["shape"]["padding"] == "border"
    assert set(record["models"]) == {"clip", "vqgan"} and not G.within(record["parity"])
    assert record["parity"]["grad_cosine"] >= 0.999 and record["parity"]["grad_rel_err"] <= 1e-3
    import onnx

    model = onnx.load(str(bundled_step_graph / f"{G.GRAPH}.onnx"), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    assert "GridSample" in ops and "ScatterElements" in ops and "Conv" in ops  # the backward as forward ops
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # standard ONNX only: no custom or function ops


def test_vit_b_32_and_f16_16384_shapes_on_random_weights(tmp_path):
    """The peers' architectures (random weights: none are bundled), at a size f16 allows. On
    inputs that put no pixel on a clamp's edge the graph is within 1e-4 of the float64 step
    (seed 3: 5e-6, PyTorch fp32 6e-6); where one does, both the graph and PyTorch fp32 land ~1e-2
    from exact, and the export's check takes twice PyTorch fp32's distance (export/generation.py)."""
    from vqclip.models import CLIP, VQGAN
    from vqclip.zoo import get

    torch.manual_seed(0)
    clip = CLIP(get("ViT-B/32").config).eval()
    vqgan = VQGAN(get("vqgan-f16-16384").config, with_encoder=False).eval()
    shape = StepShape(size=(32, 48), cutn=2, prompts=2)
    record = G.export_generation(clip, vqgan, tmp_path / "vit", shape, mean=(0.48, 0.46, 0.41),
                                 std=(0.27, 0.26, 0.28))
    p = record["parity"]
    assert not G.within(p) and p["grad_cosine"] >= 0.999 and p["loss_rel_err"] <= 1e-3, p
    step = G.GenerationStep(clip.requires_grad_(False), vqgan.requires_grad_(False), shape,
                            torch.tensor([0.48, 0.46, 0.41]), torch.tensor([0.27, 0.26, 0.28]))
    smooth = G.measure_step(step, tmp_path / "vit" / f"{G.GRAPH}.onnx", seed=3)
    assert smooth["grad_rel_err"] <= 1e-4 and smooth["grad_cosine"] >= 0.99999, smooth


def test_an_export_outside_tolerance_leaves_nothing(tmp_path, tiny_clip, tiny_vqgan, monkeypatch):
    from vqclip.errors import OutputExistsError, ParityError

    shape = StepShape(size=(32, 32), cutn=2, prompts=2)
    monkeypatch.setitem(G.TOLERANCES, "grad_cosine", 1.5)  # no graph can meet it
    with pytest.raises(ParityError, match="keep --generation-backend torch"):
        G.export_generation(tiny_clip, tiny_vqgan, tmp_path / "out", shape, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExistsError, match="already exists; pass force=True"):
        G.export_generation(tiny_clip, tiny_vqgan, tmp_path / "out", shape, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_force_replaces_an_earlier_export_never_a_users_folder(tmp_path, tiny_clip, tiny_vqgan):
    from vqclip.errors import OutputExistsError

    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="not a vqclip export"):
        G.export_generation(tiny_clip, tiny_vqgan, mine, StepShape(size=(32, 32), cutn=2, prompts=2),
                            mean=(0.5,) * 3, std=(0.5,) * 3, force=True)
    assert [p.name for p in mine.iterdir()] == ["holiday.jpg"]
