"""The CLIP module family: shapes, key layout and the registry configs."""
import pytest
import torch

from vqclip.models.clip import CLIP, CLIPConfig
from vqclip.zoo import get, list_models


@pytest.mark.parametrize("name", list_models("clip"))
def test_registry_configs_build(name):
    cfg = get(name).config
    # Build on the meta device: the shapes are checked without allocating ViT-L.
    with torch.device("meta"):
        model = CLIP(cfg)
    if cfg.is_resnet:  # the attention pool's tokens: the 32x-downsampled grid and the mean
        assert model.visual.attnpool.positional_embedding.shape == (cfg.grid_size**2 + 1, 32 * cfg.vision_width)
    else:
        assert model.visual.positional_embedding.shape == (cfg.grid_size**2 + 1, cfg.vision_width)
    assert model.text_projection.shape == (cfg.text_width, cfg.embed_dim)


def test_vit_b32_matches_openai_counts():
    # OpenAI's ViT-B-32.pt holds 151,277,313 parameters in 302 keys (minus the 3 metadata entries).
    with torch.device("meta"):
        model = CLIP(get("ViT-B/32").config)
    assert sum(p.numel() for p in model.parameters()) == 151_277_313
    assert len(model.state_dict()) == 302


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_small_model_forward(stem):
    cfg = CLIPConfig(embed_dim=32, image_size=32, vision_patch_size=8, vision_width=64, vision_layers=2,
                     vision_heads=2, vision_stem=stem, context_length=16, text_width=32, text_layers=2,
                     text_heads=2)
    model = CLIP(cfg).eval()
    img = model.encode_image(torch.randn(3, 3, 32, 32))
    ids = torch.randint(1, 100, (2, 16))
    ids[:, 5] = cfg.vocab_size - 1  # EOT: the largest id
    txt = model.encode_text(ids)
    assert img.shape == (3, 32) and txt.shape == (2, 32)
    # Causality: tokens after EOT must not change the pooled embedding.
    ids2 = ids.clone()
    ids2[:, 6:] = 7
    torch.testing.assert_close(model.encode_text(ids2), txt)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="multiple"):
        CLIPConfig(image_size=225, vision_patch_size=32)
