"""What the CLI tests share: ``env``, a cache of their own and rendered scenes of the
bundled shapes world for the bundled shapes-clip (the CLI's default model)."""
from __future__ import annotations

import pytest
from PIL import Image

from vqclip.errors import CheckpointError


def _scenes(n):
    from vqclip.zoo import shapes

    return shapes.sample_scenes("test", 100, n)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A cache of its own, and 5 rendered held-out scenes (2 in a subfolder), named by class:
    (tmp_path, {image path: true label}, the images folder)."""
    from vqclip.checkpoints import load_clip
    from vqclip.zoo import shapes

    try:
        load_clip("shapes-clip")
    except CheckpointError as e:
        pytest.skip(f"bundled shapes-clip weights missing: {e}")
    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "images"
    truth = {}
    for i, (scene, px) in enumerate(zip(_scenes(5), shapes.render_batch(_scenes(5), size=64))):
        p = src / ("sub" if i % 2 else "") / f"img{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px).save(p)
        truth[str(p)] = shapes.label(scene.colour, scene.shape)
    return tmp_path, truth, src
