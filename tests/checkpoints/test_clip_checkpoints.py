"""vqclip.checkpoints: CLIP weights from OpenAI, OpenCLIP and Hugging Face files.

Parity is judged against the peers' own code on the same random weights: OpenAI's
``clip.model.build_model`` (clip-anytorch) and ``transformers.CLIPModel``. The bound is
1e-4 max abs difference in fp32: both sides compute the same function in fp32 and differ
only in summation order (fused SDPA vs explicit softmax, split vs packed q/k/v), which
moves embeddings of magnitude ~1 by ~1e-6; a wrong key, transpose or pooling position
moves them by ~1e-1.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from vqclip.checkpoints import convert_hf_clip, convert_openclip, infer_clip_config, load_clip, read_tensors
from vqclip.errors import CheckpointError, UnknownModelError
from vqclip.models.clip import CLIP, CLIPConfig
from vqclip.zoo import ModelRecord, WeightsRecord, bundled, get, list_models, registry

ATOL = 1e-4  # see the module docstring
EOT = 49407

SMALL = CLIPConfig(embed_dim=64, image_size=32, vision_patch_size=8, vision_width=128, vision_layers=2,
                   vision_heads=2, context_length=16, vocab_size=EOT + 1, text_width=128, text_layers=2,
                   text_heads=2)


# ---------------------------------------------------------------- helpers

def _openai_model_module():
    """clip-anytorch's clip/model.py, imported alone: the package's __init__ pulls in torchvision."""
    spec = importlib.util.find_spec("clip")
    if spec is None or spec.origin is None:
        pytest.skip("clip-anytorch is not installed (pip install --no-deps clip-anytorch)")
    path = Path(spec.origin).parent / "model.py"
    mspec = importlib.util.spec_from_file_location("_openai_clip_model", path)
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module


def _noise(shapes: list[torch.Size]) -> list[torch.Tensor]:
    """N(0, 0.02^2) tensors of the given shapes, drawn as one flat buffer (fast at full size)."""
    sizes = [s.numel() for s in shapes]
    flat = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(0)).mul_(0.02)
    return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes)]


def _randomize(sd: dict) -> dict:
    """Perturb every float tensor so that no bias is zero and no LayerNorm is the identity."""
    floats = [k for k, v in sd.items() if v.is_floating_point()]
    out = dict(sd)
    for k, n in zip(floats, _noise([sd[k].shape for k in floats])):
        out[k] = n.add_(sd[k].float())
    return out


def _inputs(cfg: CLIPConfig, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)  # (B, 3, S, S)
    ids = torch.zeros(batch, cfg.context_length, dtype=torch.long)  # (B, T), zero padding
    for i in range(batch):
        n = 3 + 4 * i  # EOT at different positions per row
        ids[i, 0] = EOT - 1  # start of text
        ids[i, 1:n] = torch.randint(1, EOT - 1, (n - 1,), generator=g)
        ids[i, n] = EOT
    return pixels, ids


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    return (a - b).abs().max().item()


def _assert_same_embeddings(ours: CLIP, encode_image, encode_text, cfg: CLIPConfig) -> None:
    pixels, ids = _inputs(cfg)
    with torch.no_grad():
        img_ref, txt_ref = encode_image(pixels), encode_text(ids)
        img, txt = ours.encode_image(pixels), ours.encode_text(ids)
    assert img_ref.abs().max() > 0.1 and txt_ref.abs().max() > 0.1  # not a degenerate all-zero check
    assert _max_diff(img, img_ref) <= ATOL
    assert _max_diff(txt, txt_ref) <= ATOL


def _small_sd(cfg: CLIPConfig = SMALL) -> dict:
    torch.manual_seed(0)
    return _randomize(CLIP(cfg).state_dict())


# ---------------------------------------------------------------- config inference

@pytest.mark.parametrize("name", list_models("clip"))
def test_infer_config_matches_every_zoo_config(name):
    # Shapes give everything but what OpenAI's conventions fill in (QuickGELU, heads =
    # width // 64): exactly the zoo config for OpenAI's models, only those fields off for OpenCLIP's.
    cfg = get(name).config
    with torch.device("meta"):  # shapes only: no ViT-L allocation
        sd = CLIP(cfg).state_dict()
    inferred = infer_clip_config(sd)
    openai_rules = dict(activation="quick_gelu", vision_heads=(cfg.vision_width * (32 if cfg.is_resnet else 1)) // 64,
                        text_heads=cfg.text_width // 64)
    assert inferred == dataclasses.replace(cfg, **openai_rules)


@pytest.mark.parametrize("patch", [8, 16])
def test_infer_config_conv_stem(patch):
    cfg = CLIPConfig(embed_dim=64, image_size=4 * patch, vision_patch_size=patch, vision_width=128, vision_layers=1,
                     vision_heads=2, vision_stem="conv", context_length=8, vocab_size=EOT + 1, text_width=64,
                     text_layers=1, text_heads=1)
    with torch.device("meta"):
        sd = CLIP(cfg).state_dict()
    assert infer_clip_config(sd) == cfg


def test_infer_config_refuses_unguessable_heads():
    cfg = CLIPConfig(embed_dim=32, image_size=32, vision_patch_size=16, vision_width=96, vision_layers=1,
                     vision_heads=2, context_length=8, text_width=64, text_layers=1, text_heads=1)
    with torch.device("meta"):
        sd = CLIP(cfg).state_dict()
    with pytest.raises(CheckpointError, match="head count from width 96"):
        infer_clip_config(sd)


# ---------------------------------------------------------------- parity with OpenAI's code

def _random_openai_weights(cfg: CLIPConfig) -> dict:
    """Random fp16 weights in OpenAI's layout for ``cfg``, drawn in one flat buffer (fast at full size).

    LayerNorm gains near 1, everything else near 0, nothing exactly 0, so every key matters.
    """
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CLIP(cfg).state_dict().items()}
    out = {}
    for (k, shape), part in zip(shapes.items(), _noise(list(shapes.values()))):
        if ".ln_" in f".{k}" and k.endswith(".weight"):
            part = part.add_(1.0)
        out[k] = part.half()  # fp16, as OpenAI ships its weights
    out["logit_scale"] = torch.tensor(4.6052, dtype=torch.float16)
    return out


# ViT-L/14 runs at its full widths, heads, patch and grid but 2 + 2 blocks: the full 24 + 12
# took 155 s on the shared 2-core machine (ViT-B/32 in full: 58 s), and depth only repeats
# the same per-block key pattern that ViT-B/32 checks in full.
_VIT_L_14_SHALLOW = dataclasses.replace(get("ViT-L/14").config, vision_layers=2, text_layers=2)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [get("ViT-B/32").config, _VIT_L_14_SHALLOW], ids=["ViT-B-32", "ViT-L-14-shallow"])
def test_parity_with_openai_build_model(cfg, tmp_path):
    m = _openai_model_module()
    weights = _random_openai_weights(cfg)
    # build_model keeps LayerNorms and embeddings in fp32 and casts the rest to fp16; the
    # values are fp16-representable, so both sides hold the same numbers. Compare in fp32.
    ref = m.build_model({k: v.float() for k, v in weights.items()}).float().eval()
    weights.update(input_resolution=torch.tensor(cfg.image_size), context_length=torch.tensor(77),
                   vocab_size=torch.tensor(49408))  # OpenAI's metadata entries: dropped on load
    path = tmp_path / "openai_state_dict.pt"
    torch.save(weights, path)
    ours = load_clip(path)
    assert ours.config == cfg
    assert next(ours.parameters()).dtype == torch.float32
    _assert_same_embeddings(ours, ref.encode_image, ref.encode_text, cfg)


def _traced_openai(tmp_path: Path):
    m = _openai_model_module()
    torch.manual_seed(0)
    ref = m.CLIP(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=128, vision_patch_size=8,
                 context_length=16, vocab_size=EOT + 1, transformer_width=128, transformer_heads=2,
                 transformer_layers=2)
    ref.load_state_dict(_randomize(ref.state_dict()))
    ref.eval()
    pixels, ids = _inputs(SMALL, batch=1)
    with warnings.catch_warnings():  # the tracer's notes on nn.MultiheadAttention's Python checks
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(ref, (pixels, ids), check_trace=False)
    traced.half()  # OpenAI's archives hold float16 tensors
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    ref.half().float()  # the reference sees the same fp16-rounded weights
    return path, ref


def test_torchscript_archive_loads_without_running_it(tmp_path, monkeypatch):
    path, ref = _traced_openai(tmp_path)

    def _forbidden(*a, **k):
        raise AssertionError("torch.jit.load must not be called: it would run the archive's code")

    monkeypatch.setattr(torch.jit, "load", _forbidden)
    sd = read_tensors(path)
    assert sd["visual.conv1.weight"].dtype == torch.float16
    assert set(sd) == set(ref.state_dict())
    ours = load_clip(path)
    assert ours.config == SMALL
    assert next(ours.parameters()).dtype == torch.float32
    _assert_same_embeddings(ours, ref.encode_image, ref.encode_text, SMALL)


@pytest.mark.parametrize("damage", ["short_storage", "no_storage"])
def test_torchscript_archive_with_damaged_storage_is_refused(tmp_path, damage):
    path, _ = _traced_openai(tmp_path)
    bad = tmp_path / "damaged.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0"):
                if damage == "no_storage":
                    continue
                data = data[: len(data) // 2]
            dst.writestr(info, data)
    with pytest.raises(CheckpointError, match="refused.*storage"):
        load_clip(bad)


def test_loaded_model_matches_a_built_one(tmp_path):
    # load_clip builds on the meta device: every tensor, incl. the non-persistent causal mask,
    # must come out as the eagerly built module's.
    built = CLIP(SMALL)
    torch.save(built.state_dict(), tmp_path / "m.pt")
    loaded = load_clip(tmp_path / "m.pt", config=SMALL)
    assert torch.equal(loaded.attn_mask, built.attn_mask)
    assert dict(loaded.named_buffers(remove_duplicate=False)).keys() == dict(built.named_buffers()).keys()
    for k, v in built.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_requested_dtype_is_applied(tmp_path):
    path, _ = _traced_openai(tmp_path)
    ours = load_clip(path, dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    assert not ours.training


# ---------------------------------------------------------------- parity with Hugging Face

@pytest.mark.slow
def test_parity_with_hf_clipmodel_vit_b32(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.CLIPConfig()  # ViT-B/32 shapes; eos_token_id 49407 -> pools at the first EOT
    torch.manual_seed(0)
    hf = transformers.CLIPModel(hf_cfg).eval()
    hf.load_state_dict(_randomize(hf.state_dict()))
    hf.save_pretrained(tmp_path)  # model.safetensors + config.json, as on the Hub
    ours = load_clip(tmp_path / "model.safetensors")
    assert ours.config == get("ViT-B/32").config
    # transformers 5.x returns a BaseModelOutputWithPooling whose pooler_output is projected.
    _assert_same_embeddings(
        ours,
        lambda px: hf.get_image_features(pixel_values=px).pooler_output,
        lambda ids: hf.get_text_features(input_ids=ids).pooler_output,
        ours.config,
    )
    # HF's first-EOT rule and OpenAI's argmax rule (ours) agree on tokenizer output; the
    # legacy eos_token_id=2 configs of OpenAI-converted checkpoints use argmax, as we do.
    hf.text_model.eos_token_id = 2
    _, ids = _inputs(ours.config)
    with torch.no_grad():
        assert _max_diff(ours.encode_text(ids), hf.get_text_features(input_ids=ids).pooler_output) <= ATOL


def _small_hf(heads: int = 4, act: str = "quick_gelu"):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=heads,
                         max_position_embeddings=16, hidden_act=act),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=heads,
                           image_size=32, patch_size=8, hidden_act=act),
        projection_dim=64,
    )
    torch.manual_seed(0)
    hf = transformers.CLIPModel(cfg).eval()
    hf.load_state_dict(_randomize(hf.state_dict()))
    return hf


def test_hf_config_json_gives_heads_shapes_cannot(tmp_path):
    hf = _small_hf(heads=4)  # head dim 32: width // 64 would say 2
    hf.save_pretrained(tmp_path)
    ours = load_clip(tmp_path)  # the folder: model.safetensors + config.json
    assert ours.config.vision_heads == 4 and ours.config.text_heads == 4
    _assert_same_embeddings(ours, lambda px: hf.get_image_features(pixel_values=px).pooler_output,
                            lambda ids: hf.get_text_features(input_ids=ids).pooler_output, ours.config)


@pytest.mark.parametrize("text,match", [("{not json", "not readable JSON"), ('{"model_type": "siglip"}', "siglip")])
def test_bad_hf_config_json_is_refused(tmp_path, text, match):
    _small_hf(heads=2).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        load_clip(tmp_path / "model.safetensors")


def test_convert_hf_clip_needs_all_of_qkv():
    hf = _small_hf(heads=2)
    sd = dict(hf.state_dict())
    del sd["vision_model.encoder.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(CheckpointError, match=r"lacks visual\.transformer\.resblocks\.1\.self_attn\.\{k\}"):
        convert_hf_clip(sd)


def test_convert_hf_clip_round_trip_keys():
    hf = _small_hf(heads=2)
    sd = convert_hf_clip(hf.state_dict())
    expected = CLIP(infer_clip_config(sd)).state_dict()
    assert set(sd) == set(expected)
    assert all(sd[k].shape == expected[k].shape for k in sd)


# ---------------------------------------------------------------- OpenCLIP layouts

def test_openclip_training_checkpoint_with_wrapper_prefixes(tmp_path):
    sd = _small_sd()
    wrapped = {"_orig_mod.module." + k if i % 2 else "module._orig_mod." + k: v for i, (k, v) in enumerate(sd.items())}
    torch.save({"epoch": 3, "name": "run", "state_dict": wrapped}, tmp_path / "epoch_3.pt")
    ours = load_clip(tmp_path / "epoch_3.pt", config=SMALL)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_openclip_custom_text_tower_prefix():
    sd = _small_sd()
    moved = {("text." + k if k.startswith(("token_embedding", "positional_embedding", "transformer.", "ln_final",
                                            "text_projection")) else k): v for k, v in sd.items()}
    assert convert_openclip(moved).keys() == sd.keys()


def test_openclip_duplicate_after_strip_is_refused():
    sd = _small_sd()
    sd["module.logit_scale"] = sd["logit_scale"]
    with pytest.raises(CheckpointError, match="twice"):
        convert_openclip(sd)


# ---------------------------------------------------------------- strictness

def test_missing_unexpected_and_misshaped_keys_listed_in_one_error(tmp_path):
    sd = _small_sd()
    for k in [k for k in sd if k.startswith("transformer.resblocks.1.")][:8]:
        del sd[k]
    sd["visual.extra_head.weight"] = torch.zeros(3)
    sd["ln_final.weight"] = torch.ones(7)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_clip(tmp_path / "bad.pt", config=SMALL)
    msg = str(err.value)
    assert "8 missing" in msg and "(3 more)" in msg
    assert "1 unexpected: visual.extra_head.weight" in msg
    assert "1 mis-shaped: ln_final.weight (file (7,), model (128,))" in msg
    assert "\n" not in msg


def test_wrong_config_is_a_shape_error(tmp_path):
    torch.save(_small_sd(), tmp_path / "small.pt")
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_clip(tmp_path / "small.pt", config=get("ViT-B/32").config)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_clip(tmp_path / "small.pt", config="ViT-B/32")  # a zoo name works as the config too
    with pytest.raises(UnknownModelError):
        load_clip(tmp_path / "small.pt", config="ViT-Z/99")


def test_vqgan_checkpoint_is_named_as_such(tmp_path):
    ckpt = {"state_dict": {"encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
                           "quantize.embedding.weight": torch.zeros(1024, 256),
                           "decoder.conv_out.bias": torch.zeros(3)}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match="VQGAN"):
        load_clip(tmp_path / "last.ckpt")


_NOISE = bytes((i * 37 + 11) % 256 for i in range(4096))  # fixed "random" bytes: no pickle/zip/safetensors magic


@pytest.mark.parametrize("content", [b"", _NOISE, b"\x89PNG\r\n\x1a\n" + bytes(100)], ids=["empty", "noise", "png"])
def test_non_weight_files_are_refused(tmp_path, content):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a weights file"):
        load_clip(tmp_path / "x.pt")


@pytest.mark.parametrize("kind", ["torch-zip", "safetensors", "torchscript"])
def test_truncated_files_are_refused(tmp_path, kind):
    if kind == "torchscript":
        path, _ = _traced_openai(tmp_path)
    elif kind == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "m.safetensors"
        save_file(_small_sd(), path)
    else:
        path = tmp_path / "m.pt"
        torch.save(_small_sd(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_clip(path, config=SMALL)


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(CheckpointError, match="neither a file nor a known CLIP model"):
        load_clip(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="available"):
        load_clip("ViT-Z/99")
    with pytest.raises(CheckpointError, match="no bundled weights"):
        load_clip("ViT-B/32")


# ---------------------------------------------------------------- malicious pickles

class _Payload:
    """Unpickling this creates ``target``: the side effect a real attack would hide."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_malicious_torch_save_is_refused(tmp_path):
    side = tmp_path / "pwned"
    torch.save({"visual.proj": torch.zeros(2, 2), "x": _Payload(side)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_clip(tmp_path / "evil.pt")
    assert not side.exists()


@pytest.mark.parametrize("nested", [False, True])
def test_malicious_torchscript_archive_is_refused(tmp_path, nested):
    # A zip shaped like a TorchScript archive whose data.pkl calls open() when unpickled,
    # at the top level or hidden inside a module's state.
    side = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _Payload(side)} if nested else _Payload(side), protocol=2)
    if nested:  # wrap as a __torch__ module object: GLOBAL, EMPTY_TUPLE, NEWOBJ, <state>, BUILD, STOP
        body = payload[2:-1]  # strip PROTO and STOP
        payload = b"\x80\x02c__torch__.model\nCLIP\n)\x81" + body + b"b."
    path = tmp_path / "ViT-evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", payload)
        zf.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        zf.writestr("evil/version", "3\n")
    with pytest.raises(CheckpointError, match="refused.*not allowed"):
        load_clip(path)
    assert not side.exists()
    # Control: the same payload does run under plain pickle, so the test can fail.
    if not nested:
        pickle.loads(payload).close()
        assert side.exists()


# ---------------------------------------------------------------- the zoo path

def _register_tiny(monkeypatch, tmp_path, sha256=None):
    from safetensors.torch import save_file

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    sd = _small_sd()
    save_file(sd, weights_dir / "tiny.safetensors")
    rec = ModelRecord(name="tiny-test", family="clip", config=SMALL,
                      weights=WeightsRecord(path="tiny.safetensors", sha256=sha256))
    monkeypatch.setitem(registry._REGISTRY, "tiny-test", rec)
    monkeypatch.setattr(bundled, "WEIGHTS_DIR", weights_dir)
    return sd, weights_dir / "tiny.safetensors"


def test_zoo_name_with_bundled_weights(tmp_path, monkeypatch):
    sd, _ = _register_tiny(monkeypatch, tmp_path)
    ours = load_clip("tiny-test")
    assert ours.config == SMALL
    for k, v in ours.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_zoo_weights_with_wrong_sha256_are_refused(tmp_path, monkeypatch):
    _register_tiny(monkeypatch, tmp_path, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="sha256"):
        load_clip("tiny-test")
