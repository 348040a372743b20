"""Loading taming-transformers VQGAN checkpoints: formats, config sources, and every bad file.

The key layout itself is proven against taming's modules in tests/models/test_vqgan.py; here the
files are written from vqclip's own (small, random) model, whose keys are the same.
"""
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from vqclip.checkpoints.vqgan import infer_vqgan_config, load_vqgan, read_vqgan_yaml, vqgan_state_dict
from vqclip.errors import CheckpointError, UnknownModelError
from vqclip.models.clip import CLIP, CLIPConfig
from vqclip.models.vqgan import VQGAN, VQGANConfig
from vqclip.zoo import get

SMALL = VQGANConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), z_channels=64,
                    embed_dim=32, n_embed=128, resolution=64)

# The shape of the model.yaml shipped with taming's vqgan_imagenet_f16_16384 (lossconfig trimmed).
F16_16384_YAML = """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 256
    n_embed: 16384
    monitor: val/rec_loss
    ddconfig:
      double_z: false
      z_channels: 256
      resolution: 256
      in_channels: 3
      out_ch: 3
      ch: 128
      ch_mult: [1, 1, 2, 2, 4]
      num_res_blocks: 2
      attn_resolutions: [16]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params: {disc_conditional: false, disc_in_channels: 3, disc_start: 0, disc_weight: 0.75}
"""


def _small_yaml(cfg: VQGANConfig = SMALL, target: str = "taming.models.vqgan.VQModel", double_z: str = "false"):
    return (f"model:\n  target: {target}\n  params:\n    embed_dim: {cfg.embed_dim}\n    n_embed: {cfg.n_embed}\n"
            f"    ddconfig:\n      double_z: {double_z}\n      z_channels: {cfg.z_channels}\n"
            f"      resolution: {cfg.resolution}\n      in_channels: 3\n      out_ch: 3\n      ch: {cfg.ch}\n"
            f"      ch_mult: {list(cfg.ch_mult)}\n      num_res_blocks: {cfg.num_res_blocks}\n"
            f"      attn_resolutions: {list(cfg.attn_resolutions)}\n      dropout: 0.0\n")


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return VQGAN(SMALL).eval()


def _lightning_ckpt(model: VQGAN) -> dict:
    state = dict(model.state_dict())
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)  # training only: dropped
    state["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)
    return {"epoch": 12, "global_step": 34567, "pytorch-lightning_version": "1.0.8", "state_dict": state,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "params": [0, 1]}]}],
            "lr_schedulers": []}


@pytest.fixture(scope="module")
def ckpt_path(small_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("vqgan") / "last.ckpt"
    torch.save(_lightning_ckpt(small_model), path)
    return path


def _decode(model, grid=(3, 5)):
    torch.manual_seed(3)
    idx = torch.randint(0, model.config.n_embed, (1, *grid))
    with torch.inference_mode():
        return model.decode_indices(idx)


# -- what loads ---------------------------------------------------------------------------------
def test_lightning_ckpt_loads_with_inferred_config(small_model, ckpt_path):
    model = load_vqgan(ckpt_path, config=None)
    # Shapes cannot tell `resolution`; the attention level is named by its side at 256 instead.
    assert model.config == VQGANConfig(**{**SMALL.to_dict(), "resolution": 256, "attn_resolutions": (64,)})
    assert not model.training
    torch.testing.assert_close(_decode(model), _decode(small_model), rtol=0, atol=0)  # same modules, same order


def test_yaml_gives_the_exact_config(ckpt_path, tmp_path):
    yaml_path = tmp_path / "model.yaml"
    yaml_path.write_text(_small_yaml())
    assert load_vqgan(ckpt_path, yaml_path=yaml_path).config == SMALL


def test_released_f16_16384_yaml_is_the_zoo_config(tmp_path):
    yaml_path = tmp_path / "2021-04-03T19-39-50-project.yaml"
    yaml_path.write_text(F16_16384_YAML)
    assert read_vqgan_yaml(yaml_path) == get("vqgan-f16-16384").config


def test_decode_only_drops_the_encoder(small_model, ckpt_path):
    model = load_vqgan(ckpt_path, config=SMALL, decode_only=True)
    assert not any(k.startswith(("encoder.", "quant_conv.")) for k in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for n, p in small_model.named_parameters() if not n.startswith(("encoder.", "quant_conv.")))
    torch.testing.assert_close(_decode(model), _decode(small_model), rtol=0, atol=0)


def test_decode_only_infers_config_from_decoder_keys(ckpt_path):
    model = load_vqgan(ckpt_path, decode_only=True)
    # Decoder keys alone give the same ch / ch_mult here because ch_mult[0] == 1.
    assert (model.config.ch, model.config.ch_mult) == (SMALL.ch, SMALL.ch_mult)


def test_inference_agrees_with_registry_configs():
    for name in ("vqgan-f16-1024", "vqgan-f16-16384"):
        cfg = get(name).config
        with torch.device("meta"):
            sd = VQGAN(cfg).state_dict()
        assert infer_vqgan_config(sd) == cfg
        assert infer_vqgan_config({k: v for k, v in sd.items() if not k.startswith("encoder.")}) == cfg


def test_bare_state_dict_and_safetensors_load(small_model, tmp_path):
    pt, st = tmp_path / "vqgan.pt", tmp_path / "vqgan.safetensors"
    torch.save(small_model.state_dict(), pt)
    save_file({k: v.contiguous() for k, v in small_model.state_dict().items()}, st)
    for path in (pt, st):
        torch.testing.assert_close(_decode(load_vqgan(path, config=SMALL)), _decode(small_model), rtol=0, atol=0)


def test_fp16_checkpoint_loads_as_fp32(small_model, tmp_path):
    path = tmp_path / "half.ckpt"
    torch.save({"state_dict": {k: v.half() for k, v in small_model.state_dict().items()}}, path)
    model = load_vqgan(path, config=SMALL)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_old_lightning_callback_keys_load_without_lightning(small_model, tmp_path, monkeypatch):
    # PL 1.0 keyed ckpt["callbacks"] by the callback *class*, so the pickle names
    # pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint. Write such a file with a stand-in
    # module (Lightning is not installed), then load it with the stand-in gone.
    class ModelCheckpoint:
        pass

    names = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = names[-1], "ModelCheckpoint"
    sys.modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    ckpt = _lightning_ckpt(small_model)
    ckpt["callbacks"] = {ModelCheckpoint: {"best_model_score": torch.tensor(0.1), "best_model_path": "x.ckpt"}}
    path = tmp_path / "pl10.ckpt"
    torch.save(ckpt, path)
    monkeypatch.undo()
    assert "pytorch_lightning" not in sys.modules
    torch.testing.assert_close(_decode(load_vqgan(path, config=SMALL)), _decode(small_model), rtol=0, atol=0)


# -- what is refused ------------------------------------------------------------------------------
def test_pickled_code_is_refused(small_model, tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.ckpt"
    torch.save({**_lightning_ckpt(small_model), "hyper_parameters": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_vqgan(path)


def test_clip_checkpoint_is_refused(tmp_path):
    cfg = CLIPConfig(embed_dim=32, image_size=32, vision_patch_size=16, vision_width=64, vision_layers=1,
                     vision_heads=1, context_length=8, vocab_size=64, text_width=32, text_layers=1, text_heads=1)
    path = tmp_path / "ViT-tiny.pt"
    torch.save(CLIP(cfg).state_dict(), path)
    with pytest.raises(CheckpointError, match="no 'decoder.\\*' keys.*CLIP checkpoint"):
        load_vqgan(path)


def test_truncated_file_is_refused(ckpt_path, tmp_path):
    data = ckpt_path.read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_vqgan(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vqgan(tmp_path / "nope.ckpt")


@pytest.mark.parametrize("config", [None, SMALL], ids=["inferred", "given"])
def test_missing_decoder_key_is_named(small_model, tmp_path, config):
    ckpt = _lightning_ckpt(small_model)
    del ckpt["state_dict"]["decoder.up.1.block.0.conv1.weight"]
    del ckpt["state_dict"]["decoder.mid.attn_1.q.bias"]
    path = tmp_path / "partial.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="missing 2 keys: decoder.mid.attn_1.q.bias, "
                                              "decoder.up.1.block.0.conv1.weight"):
        load_vqgan(path, config=config)


def test_missing_decoder_level_is_refused(small_model, tmp_path):
    sd = {k: v for k, v in small_model.state_dict().items() if not k.startswith("decoder.up.1.")}
    path = tmp_path / "nolevel.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="decoder levels \\[0, 2\\]"):
        load_vqgan(path)


def test_unknown_key_is_named(small_model, tmp_path):
    ckpt = _lightning_ckpt(small_model)
    ckpt["state_dict"]["model_ema.decay"] = torch.tensor(0.999)
    path = tmp_path / "ema.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="unexpected 1 keys: model_ema.decay"):
        load_vqgan(path)


def test_wrong_config_is_a_shape_mismatch(ckpt_path):
    with pytest.raises(CheckpointError, match="shape mismatch.*quantize.embedding.weight \\(128, 32\\) "
                                              "\\(expected \\(256, 32\\)\\)"):
        load_vqgan(ckpt_path, config=VQGANConfig(**{**SMALL.to_dict(), "n_embed": 256}))


def test_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a state dict"):
        load_vqgan(path)


@pytest.mark.parametrize("text, match", [
    (_small_yaml(target="taming.models.vqgan.GumbelVQ"), "describes taming.models.vqgan.GumbelVQ"),
    (_small_yaml(double_z="true"), "double_z: true"),
    ("model:\n  params: {embed_dim: 4}\n", "no model.params.ddconfig"),
    (_small_yaml().replace("      ch: 32\n", ""), "incomplete or invalid.*'ch'"),
    (_small_yaml().replace("ch: 32", "ch: 48"), "multiple of 32"),
    ("model: [unclosed\n", "not valid YAML"),
])
def test_bad_yaml_is_refused(ckpt_path, tmp_path, text, match):
    yaml_path = tmp_path / "model.yaml"
    yaml_path.write_text(text)
    with pytest.raises(CheckpointError, match=match):
        load_vqgan(ckpt_path, yaml_path=yaml_path)


def test_config_by_zoo_name(ckpt_path):
    with pytest.raises(CheckpointError, match="does not match the VQGAN config.*missing 194 keys"):  # another model
        load_vqgan(ckpt_path, config="vqgan-f16-1024")
    with pytest.raises(UnknownModelError, match="unknown vqgan model 'ViT-B-32'; available: shapes-vqgan, vqgan-f16-1024"):
        load_vqgan(ckpt_path, config="ViT-B-32")


def test_missing_yaml_and_conflicting_sources_are_refused(ckpt_path, tmp_path):
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_vqgan(ckpt_path, yaml_path=tmp_path / "absent.yaml")
    with pytest.raises(CheckpointError, match="not both"):
        load_vqgan(ckpt_path, config=SMALL, yaml_path=tmp_path / "absent.yaml")


def test_state_dict_helper_drops_only_training_keys(small_model):
    sd = vqgan_state_dict(_lightning_ckpt(small_model))
    assert set(sd) == set(small_model.state_dict())
