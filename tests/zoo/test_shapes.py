"""The shapes world: determinism, disjoint splits, what a render contains, captions."""
import dataclasses
import math

import numpy as np
import pytest

from vqclip.zoo import shapes


def test_same_split_and_index_give_the_same_scene_and_pixels():
    a = shapes.sample_scenes("train", 100, 20)
    b = shapes.sample_scenes("train", 100, 20)
    assert a == b
    assert np.array_equal(shapes.render_batch(a), shapes.render_batch(b))
    # Different indices give different scenes.
    assert len({dataclasses.astuple(s) for s in a}) == 20


def test_splits_never_share_a_scene():
    # Every float of a scene comes from its own stream, so equal scenes across splits
    # would mean equal streams; check a few thousand of each.
    train = {dataclasses.astuple(s) for s in shapes.sample_scenes("train", 0, 3000)}
    for split in ("val", "test"):
        held = {dataclasses.astuple(s) for s in shapes.sample_scenes(split, 0, 3000)}
        assert not train & held
    # The same index in two splits is a different scene.
    assert shapes.sample_scene("train", 7) != shapes.sample_scene("test", 7)


def test_unknown_split_and_negative_index_are_refused():
    with pytest.raises(ValueError, match="unknown split"):
        shapes.sample_scene("training", 0)
    with pytest.raises(ValueError, match=">= 0"):
        shapes.sample_scene("test", -1)


def test_scenes_cover_the_world_and_respect_its_rules():
    scenes = shapes.sample_scenes("test", 0, 2000)
    assert {s.shape for s in scenes} == set(shapes.SHAPES)
    assert {s.colour for s in scenes} == set(shapes.COLOURS)
    assert {s.style for s in scenes} == {"plain", "noisy", "gradient"}
    for s in scenes:
        assert s.background != s.colour  # the background is another colour
        # The whole shape is inside the frame.
        assert s.radius <= s.cx <= 1 - s.radius and s.radius <= s.cy <= 1 - s.radius
        assert max(abs(a - b) for a, b in zip(s.rgb, shapes.COLOURS[s.colour])) <= 12


def _plain(shape: str, **kw) -> shapes.Scene:
    base = shapes.sample_scene("test", 0)
    fields = dict(shape=shape, colour="red", rgb=shapes.COLOURS["red"], radius=0.3, cx=0.5, cy=0.5, rotation=0.0,
                  background="blue", style="plain", shade=shapes.COLOURS["blue"], angle=0.0, noise=0.0)
    fields.update(kw)
    return dataclasses.replace(base, **fields)


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_render_draws_the_shape_in_its_colour_on_its_background(shape):
    img = shapes.render(_plain(shape), size=64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    img = img.astype(int)
    red, blue = np.array(shapes.COLOURS["red"]), np.array(shapes.COLOURS["blue"])
    assert np.abs(img[32, 32] - red).max() <= 1  # the centre is inside every shape
    assert np.abs(img[1, 1] - blue).max() <= 1  # a corner is background
    inside = (np.abs(img - red).max(-1) <= 1).mean()
    # Area fractions of a circumradius-0.3 shape: from a triangle (0.117) to a circle (0.283).
    assert 0.08 < inside < 0.30
    if shape == "circle":
        assert inside == pytest.approx(math.pi * 0.3**2, abs=0.02)
    # Supersampling leaves blended pixels on the edge (anti-aliasing), none outside the two colours' span.
    edge = (np.abs(img - red).max(-1) > 1) & (np.abs(img - blue).max(-1) > 1)
    assert edge.any()


def test_render_any_size_and_dtype():
    scene = shapes.sample_scene("test", 3)
    for size in (16, 64, 200):
        img = shapes.render(scene, size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert shapes.render_batch([], 32).shape == (0, 32, 32, 3)
    with pytest.raises(ValueError):
        shapes.render(scene, 4)


def test_rotation_moves_the_corners():
    a = shapes.render(_plain("square", rotation=0.0))
    b = shapes.render(_plain("square", rotation=45.0))
    assert not np.array_equal(a, b)
    c = shapes.render(_plain("square", rotation=90.0))  # a square is symmetric under 90 degrees
    assert np.abs(a.astype(int) - c.astype(int)).max() <= 2


def test_noisy_and_gradient_backgrounds_vary():
    noisy = shapes.render(_plain("circle", style="noisy", noise=15.0, radius=0.15))
    corner = noisy[:12, :12].reshape(-1, 3).astype(float)
    assert 8 < corner.std(0).mean() < 25
    grad = shapes.render(_plain("circle", style="gradient", shade=(0, 0, 0), angle=0.0, radius=0.15))
    # Angle 0: the colour moves from the background colour (left) toward the shade (right).
    assert grad[5, 2].astype(int).sum() > grad[5, 61].astype(int).sum() + 60


def test_captions_state_true_things():
    for i, scene in enumerate(shapes.sample_scenes("test", 0, 300)):
        for t in range(len(shapes.TEMPLATES)):
            cap = shapes.caption(scene, t)
            assert cap.matches(scene)
            assert "{" not in cap.text and " a o" not in cap.text and not cap.text.startswith("a o")
            if cap.colour:
                assert scene.colour in cap.text
            if cap.shape:
                assert scene.shape in cap.text
    scene = _plain("circle", colour="orange")
    assert shapes.caption(scene, 0).text == "an orange circle"
    assert shapes.caption(scene, 7).text == "an orange circle on a blue background"
    assert shapes.label("orange", "star") == "an orange star"
    other = _plain("star")
    assert not shapes.caption(scene, 0).matches(other)
    assert shapes.caption(scene, 10).matches(dataclasses.replace(other, colour="orange"))  # "an orange shape"


def test_size_words():
    assert _plain("circle", radius=0.15).size_word == "small"
    assert _plain("circle", radius=0.27).size_word is None
    assert _plain("circle", radius=0.40).size_word == "large"
    assert shapes.caption(_plain("circle", radius=0.15), 5).text == "a small red circle"
    assert shapes.caption(_plain("circle", radius=0.27), 5).text == "a red circle"


def test_all_labels():
    labels = shapes.all_labels()
    assert len(labels) == len(set(labels)) == len(shapes.COLOURS) * len(shapes.SHAPES) == 40
