"""Checkpoints whose architecture the shapes cannot tell: never loaded silently wrong.

Every parity case runs the peer's own code on the same random weights: OpenCLIP's
``model.py`` (``open_clip_torch``, its model modules loaded by file: the package imports
torchvision, whose wheels do not load beside this torch), ``transformers.CLIPModel`` and
OpenAI's ``clip/model.py`` (clip-anytorch). Bound: 1e-4 max abs in fp32, as in
test_clip_checkpoints.py. Each OpenCLIP case also builds the same tensors on OpenAI's
conventions (what shapes alone say) and asserts that this control is far off; the figures
of both columns are printed by ``python benchmarks/check_clip_parity.py``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from vqclip.checkpoints import load_clip, weights_digest
from vqclip.checkpoints.clip import _undetermined
from vqclip.errors import CheckpointError
from vqclip.models.clip import CLIP, CLIPConfig
from vqclip.zoo import get

ATOL = 1e-4
EOT = 49407


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Every float tensor moved off its init, so no bias is zero and no LayerNorm the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.02)


def _inputs(image_size: int, context: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, 3, image_size, image_size, generator=g)
    ids = torch.zeros(batch, context, dtype=torch.long)
    for i in range(batch):
        n = 3 + 4 * i
        ids[i, 0] = EOT - 1
        ids[i, 1:n] = torch.randint(1, EOT - 1, (n - 1,), generator=g)
        ids[i, n] = EOT
    return pixels, ids


def _diff(ours: CLIP, image_fn, text_fn) -> float:
    cfg = ours.config
    pixels, ids = _inputs(cfg.image_size, cfg.context_length)
    with torch.no_grad():
        ref_i, ref_t = image_fn(pixels), text_fn(ids)
        assert ref_i.abs().max() > 0.1 and ref_t.abs().max() > 0.1  # not a degenerate comparison
        return max((ours.encode_image(pixels) - ref_i).abs().max().item(),
                   (ours.encode_text(ids) - ref_t).abs().max().item())


# ---------------------------------------------------------------- OpenCLIP's own modules

def _openclip_model_module(monkeypatch):
    """OpenCLIP's ``model.py`` and the modules it imports, loaded by file as a private package.

    ``open_clip.utils`` imports ``torchvision.ops.misc.FrozenBatchNorm2d`` at the top, used
    only to freeze a tower for training; torchvision's wheels do not load beside this torch,
    so that one name is given a placeholder for the duration of the test.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        pytest.skip("open_clip_torch is not installed (pip install --no-deps open_clip_torch==3.3.0)")
    root = Path(spec.origin).parent
    if importlib.util.find_spec("transformers") is not None:
        import transformers  # noqa: F401  (imported before the placeholder, so it sees torchvision's real absence)
    misc = types.ModuleType("torchvision.ops.misc")
    misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.Module,), {})
    for name, mod in (("torchvision", types.ModuleType("torchvision")),
                      ("torchvision.ops", types.ModuleType("torchvision.ops")), ("torchvision.ops.misc", misc)):
        monkeypatch.setitem(sys.modules, name, mod)
    pkg = types.ModuleType("_openclip_peer")
    pkg.__path__ = [str(root)]
    monkeypatch.setitem(sys.modules, "_openclip_peer", pkg)
    for sub in ("utils", "pos_embed", "hf_configs", "hf_model", "timm_model", "modified_resnet", "transformer",
                "model"):
        mspec = importlib.util.spec_from_file_location(f"_openclip_peer.{sub}", root / f"{sub}.py")
        module = importlib.util.module_from_spec(mspec)
        monkeypatch.setitem(sys.modules, f"_openclip_peer.{sub}", module)
        mspec.loader.exec_module(module)
    return sys.modules["_openclip_peer.model"]


# Small OpenCLIP model configs in the shape of the released ones: ViT-B-32 (exact GELU),
# ViT-H-14 (head width 80: 4 heads where width // 64 says 5), ViT-bigG-14 (MLP ratio 4.9231).
_OC_CONFIGS = {
    "gelu": {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": EOT + 1, "width": 128, "heads": 2, "layers": 2}},
    "head-width-80": {"embed_dim": 64,
                      "vision_cfg": {"image_size": 28, "layers": 2, "width": 320, "head_width": 80, "patch_size": 14},
                      "text_cfg": {"context_length": 16, "vocab_size": EOT + 1, "width": 320, "heads": 4,
                                   "layers": 2}},
    "mlp-ratio": {"embed_dim": 64, "vision_cfg": {"image_size": 28, "layers": 2, "width": 208, "head_width": 104,
                                                  "mlp_ratio": 4.9231, "patch_size": 14},
                  "text_cfg": {"context_length": 16, "vocab_size": EOT + 1, "width": 128, "heads": 2, "layers": 2}},
    "quickgelu": {"embed_dim": 64, "quick_gelu": True,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
                  "text_cfg": {"context_length": 16, "vocab_size": EOT + 1, "width": 128, "heads": 2, "layers": 2}},
}


def _openclip_model(monkeypatch, model_cfg: dict):
    m = _openclip_model_module(monkeypatch)
    torch.manual_seed(0)
    ref = m.CLIP(model_cfg["embed_dim"], m.CLIPVisionCfg(**model_cfg["vision_cfg"]),
                 m.CLIPTextCfg(**model_cfg["text_cfg"]), quick_gelu=model_cfg.get("quick_gelu", False)).eval()
    _randomize(ref)
    return ref


def _save_openclip_folder(folder: Path, ref, model_cfg: dict) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}}))
    return folder


@pytest.mark.parametrize("case", list(_OC_CONFIGS))
def test_openclip_hub_folder_matches_openclip(case, tmp_path, monkeypatch):
    model_cfg = _OC_CONFIGS[case]
    ref = _openclip_model(monkeypatch, model_cfg)
    folder = _save_openclip_folder(tmp_path / case, ref, model_cfg)
    ours = load_clip(folder)
    assert _diff(ours, ref.encode_image, ref.encode_text) <= ATOL
    assert ours.preprocess_cfg == {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bilinear"}
    # The control: the same tensors on OpenAI's conventions (what shapes alone would say) are far off.
    cfg = ours.config
    try:
        openai_rules = dataclasses.replace(cfg, activation="quick_gelu", vision_heads=cfg.vision_width // 64,
                                           text_heads=cfg.text_width // 64)
    except ValueError:  # width 208 has no width // 64 split at all: the activation alone is the control
        openai_rules = dataclasses.replace(cfg, activation="quick_gelu")
    if openai_rules != cfg:
        built = CLIP(openai_rules).eval()
        built.load_state_dict(ours.state_dict())
        assert _diff(built, ref.encode_image, ref.encode_text) > 100 * ATOL


def test_openclip_state_dict_without_config_is_refused_not_guessed(tmp_path, monkeypatch):
    ref = _openclip_model(monkeypatch, _OC_CONFIGS["gelu"])
    torch.save({"epoch": 32, "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}},
               tmp_path / "epoch_32.pt")
    with pytest.raises(CheckpointError, match="does not say its architecture.*open_clip_config.json") as err:
        load_clip(tmp_path / "epoch_32.pt")
    assert "\n" not in str(err.value)
    # Named, it loads: the config the message asks for.
    cfg = load_clip(_save_openclip_folder(tmp_path / "f", ref, _OC_CONFIGS["gelu"])).config
    ours = load_clip(tmp_path / "epoch_32.pt", config=cfg)
    assert _diff(ours, ref.encode_image, ref.encode_text) <= ATOL


def test_undetermined_message_names_the_zoo_candidates():
    with torch.device("meta"):
        sd = CLIP(get("ViT-B-32").config).state_dict()
    msg = str(_undetermined(Path("open_clip_pytorch_model.bin"), sd))
    assert "ViT-B-32 (QuickGELU), ViT-B-32-gelu (GELU)" in msg and "--arch" in msg


def test_explicit_config_is_checked_against_open_clip_config(tmp_path, monkeypatch):
    model_cfg = _OC_CONFIGS["gelu"]
    folder = _save_openclip_folder(tmp_path / "m", _openclip_model(monkeypatch, model_cfg), model_cfg)
    right = load_clip(folder).config
    with pytest.raises(CheckpointError, match=r"disagrees with .*open_clip_config.json on activation 'quick_gelu' vs "
                                              r"'gelu'"):
        load_clip(folder, config=dataclasses.replace(right, activation="quick_gelu"))
    assert load_clip(folder, config=right).config == right


@pytest.mark.parametrize("change,match", [
    ({"vision_cfg": {"timm_model_name": "convnext_base"}}, "timm_model_name"),
    ({"vision_cfg": {"ls_init_value": 1e-5}}, "ls_init_value"),
    ({"vision_cfg": {"attentional_pool": True}}, "attentional_pool"),
    ({"text_cfg": {"hf_model_name": "xlm-roberta-base"}}, "hf_model_name"),
    ({"text_cfg": {"pool_type": "last"}}, "pool_type"),
    ({"init_logit_bias": -10}, "init_logit_bias"),
    ({"multimodal_cfg": {"width": 512}}, "multimodal_cfg"),
    ({"vision_cfg": {"act_kwargs": {"approximate": "tanh"}}}, "act_kwargs"),
    ({"text_cfg": {"norm_kwargs": {"eps": 1e-6}}}, "different norm_kwargs eps"),
])
def test_openclip_variants_vqclip_does_not_compute_are_refused_by_name(tmp_path, monkeypatch, change, match):
    model_cfg = json.loads(json.dumps(_OC_CONFIGS["gelu"]))
    for key, value in change.items():
        if isinstance(value, dict):
            model_cfg[key] = {**model_cfg.get(key, {}), **value}
        else:
            model_cfg[key] = value
    folder = _save_openclip_folder(tmp_path / "m", _openclip_model(monkeypatch, _OC_CONFIGS["gelu"]), model_cfg)
    with pytest.raises(CheckpointError, match=match) as err:
        load_clip(folder)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- Hugging Face variants

def _hf_model(act: str = "gelu", eps: float = 1e-6, heads: int = 4, **extra):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=heads,
                         max_position_embeddings=16, hidden_act=act, layer_norm_eps=eps),
        vision_config=dict(hidden_size=128, intermediate_size=320, num_hidden_layers=2, num_attention_heads=heads,
                           image_size=32, patch_size=8, hidden_act=act, layer_norm_eps=eps),
        projection_dim=64, **extra)
    torch.manual_seed(0)
    hf = transformers.CLIPModel(cfg).eval()
    _randomize(hf)
    return hf


def _hf_fns(hf):
    return (lambda px: hf.get_image_features(pixel_values=px).pooler_output,
            lambda ids: hf.get_text_features(input_ids=ids).pooler_output)


def test_hf_gelu_eps_and_mlp_widths_match_transformers(tmp_path):
    hf = _hf_model()  # exact GELU, eps 1e-6, MLP 3x / 2.5x, head width 32
    hf.save_pretrained(tmp_path)
    ours = load_clip(tmp_path)
    c = ours.config
    assert (c.activation, c.layer_norm_eps, c.vision_mlp_width, c.text_mlp_width, c.vision_heads) == \
        ("gelu", 1e-6, 320, 384, 4)
    assert _diff(ours, *_hf_fns(hf)) <= ATOL


def test_hf_gelu_folder_with_a_quickgelu_config_is_refused(tmp_path):
    _hf_model().save_pretrained(tmp_path)
    wrong = dataclasses.replace(load_clip(tmp_path).config, activation="quick_gelu")
    with pytest.raises(CheckpointError, match="disagrees with .*config.json on activation"):
        load_clip(tmp_path, config=wrong)
    with pytest.raises(CheckpointError, match="disagrees"):  # the file given alone: its folder's config still counts
        load_clip(tmp_path / "model.safetensors", config=wrong)


def test_hf_weights_without_config_json_are_refused(tmp_path):
    hf = _hf_model(act="quick_gelu", eps=1e-5, heads=2)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="does not say its architecture"):
        load_clip(tmp_path / "pytorch_model.bin")


def test_hf_legacy_config_dict_keys_are_read(tmp_path):
    hf = _hf_model(heads=4)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["text_config_dict"], cfg["vision_config_dict"] = cfg.pop("text_config"), cfg.pop("vision_config")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = load_clip(tmp_path)
    assert ours.config.vision_heads == 4 and ours.config.activation == "gelu"
    assert _diff(ours, *_hf_fns(hf)) <= ATOL


@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "relu"])
def test_hf_other_activations_are_refused_by_name(tmp_path, act):
    _hf_model(act=act).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=f"hidden_act is '{act}'"):
        load_clip(tmp_path)


def test_hf_towers_with_different_activations_are_refused(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["text_config"]["hidden_act"] = "quick_gelu"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="different hidden_act"):
        load_clip(tmp_path)


def test_sharded_hf_folder_loads_and_has_one_identity(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    ours = load_clip(tmp_path)
    assert _diff(ours, *_hf_fns(hf)) <= ATOL
    assert weights_digest(tmp_path) == weights_digest(ours) == weights_digest(load_clip(tmp_path))
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(CheckpointError):
        load_clip(tmp_path)


def _single_tower(cls: str, act: str = "gelu"):
    transformers = pytest.importorskip("transformers")
    vision = "Vision" in cls
    cfg_cls = transformers.CLIPVisionConfig if vision else transformers.CLIPTextConfig
    extra = dict(image_size=32, patch_size=8) if vision else dict(max_position_embeddings=16)
    torch.manual_seed(0)
    model = getattr(transformers, cls)(cfg_cls(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                               num_attention_heads=2, projection_dim=32, hidden_act=act,
                                               **extra)).eval()
    _randomize(model)
    return model


def test_image_only_hf_folder_encodes_images_and_refuses_texts(tmp_path):
    from vqclip.encoder import open_encoder
    from vqclip.errors import UnsupportedOperationError

    hf = _single_tower("CLIPVisionModelWithProjection")  # what IP-Adapter-style image encoders ship as
    hf.save_pretrained(tmp_path)
    ours = load_clip(tmp_path)
    assert (ours.config.towers, ours.config.activation, ours.config.vision_mlp_width) == ("image", "gelu", 160)
    pixels, ids = _inputs(32, 16)
    with torch.no_grad():
        assert (ours.encode_image(pixels) - hf(pixel_values=pixels).image_embeds).abs().max() <= ATOL
        with pytest.raises(UnsupportedOperationError, match="no text tower"):
            ours.encode_text(ids)
    for backend in ("torch", "onnxruntime"):
        enc = open_encoder(tmp_path, backend, export_dir=None)
        want = torch.nn.functional.normalize(hf(pixel_values=pixels).image_embeds, dim=-1).detach().numpy()
        assert abs(enc.encode_image(pixels.numpy()) - want).max() <= ATOL
        with pytest.raises(UnsupportedOperationError, match="no text tower.*both towers"):
            enc.encode_texts(["a red circle"])


def test_text_only_hf_folder_encodes_texts(tmp_path):
    hf = _single_tower("CLIPTextModelWithProjection", act="quick_gelu")
    hf.save_pretrained(tmp_path)
    ours = load_clip(tmp_path)
    assert ours.config.towers == "text" and not hasattr(ours, "visual")
    _, ids = _inputs(32, 16)
    with torch.no_grad():
        assert (ours.encode_text(ids) - hf(input_ids=ids).text_embeds).abs().max() <= ATOL


@pytest.mark.parametrize("cls", ["CLIPVisionModel", "CLIPTextModel"])
def test_single_tower_folders_without_projection_are_refused(tmp_path, cls):
    transformers = pytest.importorskip("transformers")
    cfg_cls = transformers.CLIPVisionConfig if "Vision" in cls else transformers.CLIPTextConfig
    getattr(transformers, cls)(cfg_cls(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                       num_attention_heads=1)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=f"{cls} without its projection.*{cls}WithProjection"):
        load_clip(tmp_path)


# ---------------------------------------------------------------- folders everywhere a model is named

def test_open_encoder_takes_a_folder(tmp_path):
    from vqclip.encoder import open_encoder

    hf = _hf_model()
    hf.save_pretrained(tmp_path)
    enc = open_encoder(tmp_path)
    assert enc.identity.digest == weights_digest(tmp_path)
    pixels, ids = _inputs(32, 16)
    with torch.no_grad():
        want = torch.nn.functional.normalize(hf.get_text_features(input_ids=ids).pooler_output, dim=-1)
    assert abs(enc.encode_text(ids.numpy()) - want.numpy()).max() <= ATOL


# ---------------------------------------------------------------- the config records what was built

def test_config_dict_records_activation_and_head_widths():
    d = get("ViT-H-14").config.to_dict()
    assert (d["activation"], d["vision_head_width"], d["text_head_width"], d["vision_heads"]) == ("gelu", 80, 64, 16)
    assert CLIPConfig.from_dict(json.loads(json.dumps(d))) == get("ViT-H-14").config
    rn = get("RN50x4").config
    assert CLIPConfig.from_dict(json.loads(json.dumps(rn.to_dict()))) == rn


@pytest.mark.slow
def test_hf_gelu_export_matches_transformers(tmp_path):
    # The export validates against the module as loaded; this checks the load itself, end to end.
    from vqclip.encoder import open_encoder
    from vqclip.export import export_model
    from vqclip.manifest import read_manifest

    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    manifest = export_model(str(tmp_path / "hf"), tmp_path / "export", ["fp32"])
    assert read_manifest(tmp_path / "export").config["activation"] == "gelu"
    assert (manifest.config["vision_head_width"], manifest.config["layer_norm_eps"]) == (32, 1e-6)
    enc = open_encoder(tmp_path / "hf", "onnxruntime", export_dir=tmp_path / "export")
    pixels, ids = _inputs(32, 16, batch=3)
    with torch.no_grad():
        img, txt = _hf_fns(hf)[0](pixels), _hf_fns(hf)[1](ids)
    norm = torch.nn.functional.normalize
    assert abs(enc.encode_image(pixels.numpy()) - norm(img, dim=-1).numpy()).max() <= ATOL
    assert abs(enc.encode_text(ids.numpy()) - norm(txt, dim=-1).numpy()).max() <= ATOL


def test_openclip_preprocess_cfg_is_checked(tmp_path, monkeypatch, caplog):
    model_cfg = _OC_CONFIGS["gelu"]
    folder = _save_openclip_folder(tmp_path / "m", _openclip_model(monkeypatch, model_cfg), model_cfg)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
        "mean": [0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    with pytest.raises(CheckpointError, match="need 3 values"):
        load_clip(folder)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
        "interpolation": "random", "resize_mode": "longest", "fill_color": 128}}))
    assert load_clip(folder).preprocess_cfg == {"resize_mode": "longest", "fill": 128}
    assert "resize filter 'random'" in caplog.text
    from vqclip.encoder import open_encoder

    pre = open_encoder(folder).preprocessor  # what the model was trained with reaches the pipeline
    assert (pre.resize_mode, pre.fill, pre.interpolation) == ("longest", 128, "bicubic")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
        "resize_mode": "stretch"}}))
    with pytest.raises(CheckpointError, match="resize_mode 'stretch'"):
        load_clip(folder)


def test_an_image_only_model_indexes_and_searches_by_image(tmp_path):
    import numpy as np
    from PIL import Image

    from vqclip.encoder import open_encoder
    from vqclip.errors import UnsupportedOperationError
    from vqclip.index.build import build_index
    from vqclip.index.reader import Index

    _single_tower("CLIPVisionModelWithProjection").save_pretrained(tmp_path / "hf")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(photos / f"{i}.png")
    enc = open_encoder(tmp_path / "hf")
    build_index(photos, tmp_path / "idx", enc, progress=False)
    with Index.open(tmp_path / "idx", encoder=enc) as idx:
        assert idx.search(image=photos / "2.png", k=1)[0].path.endswith("2.png")
        with pytest.raises(UnsupportedOperationError, match="no text tower"):
            idx.search(text="a red circle")


# ---------------------------------------------------------------- what the review found

def test_a_given_config_is_checked_against_openais_format(tmp_path):
    from test_clip_checkpoints import SMALL, _traced_openai

    path, _ = _traced_openai(tmp_path)
    with pytest.raises(CheckpointError, match="disagrees with OpenAI's format on activation 'gelu' vs 'quick_gelu'"):
        load_clip(path, config=dataclasses.replace(SMALL, activation="gelu"))
    assert load_clip(path, config=SMALL).config == SMALL


def test_legacy_config_dict_overrides_as_transformers_does(tmp_path):
    # Legacy dicts without hidden_act / layer_norm_eps: transformers fills its defaults (quick_gelu,
    # 1e-5) over the GELU, 1e-6 text_config / vision_config, and so must vqclip.
    transformers = pytest.importorskip("transformers")
    _hf_model(act="gelu", eps=1e-6, heads=4).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    cfg["text_config_dict"] = {k: cfg["text_config"][k] for k in (*keep, "max_position_embeddings")}
    cfg["vision_config_dict"] = {k: cfg["vision_config"][k] for k in (*keep, "image_size", "patch_size")}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    peer = transformers.CLIPModel.from_pretrained(tmp_path).eval()
    ours = load_clip(tmp_path)
    assert ours.config.activation == peer.config.text_config.hidden_act == peer.config.vision_config.hidden_act
    assert ours.config.layer_norm_eps == peer.config.text_config.layer_norm_eps
    assert _diff(ours, *_hf_fns(peer)) <= ATOL


def test_timm_config_json_does_not_hide_the_openclip_files(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    model_cfg = _OC_CONFIGS["gelu"]
    ref = _openclip_model(monkeypatch, model_cfg)
    folder = _save_openclip_folder(tmp_path / "timm-hub", ref, model_cfg)
    save_file({"cls_token": torch.zeros(1, 1, 8), "patch_embed.proj.weight": torch.zeros(8, 3, 4, 4)},
              folder / "model.safetensors")  # timm's image tower, as timm's Hub CLIP repos hold it
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_base_patch32_clip_224"}))
    ours = load_clip(folder)
    assert _diff(ours, ref.encode_image, ref.encode_text) <= ATOL
    assert weights_digest(folder) == weights_digest(folder / "open_clip_model.safetensors")


def test_hf_preprocessor_config_gives_the_preprocessing(tmp_path):
    from vqclip.encoder import open_encoder

    _hf_model().save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 2}))
    enc = open_encoder(tmp_path)
    assert (enc.mean, enc.std, enc.interpolation) == ((0.5,) * 3, (0.25,) * 3, "bilinear")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": "grey"}))
    with pytest.raises(CheckpointError, match="image_mean"):
        load_clip(tmp_path)


@pytest.mark.parametrize("pre", [["x"], {"interpolation": ["bicubic"]}])
def test_malformed_openclip_preprocess_cfg_is_a_checkpoint_error(tmp_path, monkeypatch, pre):
    model_cfg = _OC_CONFIGS["gelu"]
    folder = _save_openclip_folder(tmp_path / "m", _openclip_model(monkeypatch, model_cfg), model_cfg)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pre}))
    if isinstance(pre, list):
        with pytest.raises(CheckpointError, match="preprocess_cfg is a list"):
            load_clip(folder)
    else:
        assert load_clip(folder).preprocess_cfg == {}  # an unusable filter name: logged, bicubic used
