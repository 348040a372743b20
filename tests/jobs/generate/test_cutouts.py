"""Cutouts: drawn from each job's own generator, batched exactly, and faithful to their parts."""
import pytest
import torch
import torch.nn.functional as F

from vqclip.errors import InvalidInputError
from vqclip.jobs.generate.cutouts import CutoutSpec, apply, draw

PLAIN = CutoutSpec(cutn=3, degrees=0, translate=0, shear=0, perspective=0, brightness=0, contrast=0, saturation=0,
                   hue=0, erasing=(0, 0), noise=0)


def _image(seed, size=32):
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_plain_pooled_cutouts_are_the_pooled_image():
    x = _image(0, 64)
    params = draw(PLAIN, torch.Generator().manual_seed(0), (64, 64), 32)
    out = apply([params], x, 32)
    want = (F.adaptive_avg_pool2d(x, 32) + F.adaptive_max_pool2d(x, 32)) / 2
    assert out.shape == (3, 3, 32, 32)
    torch.testing.assert_close(out, want.expand(3, -1, -1, -1), atol=1e-6, rtol=0)


def test_crops_lie_inside_the_image_and_follow_cut_pow():
    spec = CutoutSpec(cutn=64, method="crops", cut_pow=3.0)
    p = draw(spec, torch.Generator().manual_seed(1), (96, 128), 32)
    sides, ys, xs = p.crops.T
    assert (sides >= 32).all() and (sides <= 96).all()
    assert (ys + sides <= 96).all() and (xs + sides <= 128).all()
    assert sides.float().median() < 50  # cut_pow 3 favours small crops


def test_a_job_gets_the_same_cutouts_alone_or_in_a_batch():
    spec = CutoutSpec(cutn=4)
    x, y = _image(1), _image(2)
    pa = draw(spec, torch.Generator().manual_seed(10), (32, 32), 32)
    pb = draw(CutoutSpec(cutn=2, method="crops"), torch.Generator().manual_seed(11), (32, 32), 32)
    again = draw(spec, torch.Generator().manual_seed(10), (32, 32), 32)
    assert torch.equal(pa.warp, again.warp) and torch.equal(pa.field, again.field)
    alone = apply([pa], x, 32)
    batched = apply([pa, pb], torch.cat([x, y]), 32)
    assert batched.shape == (6, 3, 32, 32)
    assert torch.equal(batched[:4], alone)


def test_augmentations_change_the_cutouts_and_pass_gradients():
    x = _image(3).requires_grad_(True)
    params = draw(CutoutSpec(cutn=8, p=1.0), torch.Generator().manual_seed(0), (32, 32), 32)
    out = apply([params], x, 32)
    plain = apply([draw(PLAIN, torch.Generator().manual_seed(0), (32, 32), 32)], x, 32)
    assert (out - plain[:1]).abs().amax(dim=(1, 2, 3)).min() > 0.05  # every cutout was augmented
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def test_padding_decides_what_a_rotation_shows_at_the_corners():
    from dataclasses import replace

    x = torch.full((1, 3, 32, 32), 0.5)
    spec = replace(PLAIN, degrees=45.0, p=1.0, cutn=1)
    zeros = apply([draw(spec, torch.Generator().manual_seed(2), (32, 32), 32)], x, 32)
    border = apply([draw(replace(spec, padding="border"), torch.Generator().manual_seed(2), (32, 32), 32)], x, 32)
    assert zeros[0, :, 0, 0].max() < 0.5 and torch.allclose(border, x)  # border repeats the edge: grey stays grey


@pytest.mark.parametrize("bad", [{"cutn": 0}, {"cutn": 2.5}, {"method": "squares"}, {"p": 1.5}, {"cut_pow": 0},
                                 {"padding": "wrap"}])
def test_bad_specs_are_refused(bad):
    with pytest.raises(InvalidInputError):
        CutoutSpec(**bad)
