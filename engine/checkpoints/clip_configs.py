"""The architecture a CLIP checkpoint was made with, read from what the checkpoint says.

Tensor shapes give widths, depths, patch and image size, but not what the released
families differ in: the activation (OpenAI's weights QuickGELU, OpenCLIP's LAION and
DataComp ViTs exact GELU) and the head width (64 for OpenAI's, 80 for OpenCLIP's ViT-H,
g and bigG). A model built on the wrong one loads without a shape error and gives wrong
embeddings, so the config comes from the checkpoint's own config file (Hugging Face
``config.json``, legacy keys included; OpenCLIP's ``open_clip_config.json``), from the
config vqclip writes into its safetensors metadata, or from OpenAI's own file format;
a file that says none of these is refused (``vqclip.checkpoints.clip``), never guessed.

Example::

    found = config_beside(Path("laion-vit-b-32/open_clip_model.safetensors"))
    found.config.activation   # "gelu"
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

from vqclip.checkpoints._io import read_json
from vqclip.errors import CheckpointError
from vqclip.models.configs import ACTIVATION_NAMES, CLIPConfig

log = logging.getLogger(__name__)

__all__ = ["FileConfig", "config_beside", "config_from_hf", "config_from_openclip", "config_from_metadata",
           "check_agrees"]

# Hugging Face's CLIPTextConfig / CLIPVisionConfig defaults: a config.json leaves out what equals them.
_HF_TEXT = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
            "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5}
_HF_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
              "layer_norm_eps": 1e-5}
# HF names "gelu" the exact erf GELU; the tanh forms ("gelu_new", "gelu_pytorch_tanh") are other functions.
_HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}

# OpenCLIP model-config entries, by what vqclip does with them. Read: the architecture.
_OC_VISION_READ = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "norm_kwargs"}
_OC_TEXT_READ = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "norm_kwargs"}
# No effect on inference (training-time switches; padding id 0 is what the tokenizer pads with).
_OC_NEUTRAL = {"patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained",
               "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path", "hf_model_pretrained",
               "hf_proj_type", "hf_pooler_type", "pad_id", "image_seq_len", "variable_text"}
# Must hold their OpenAI-tower value; anything else is another network, refused by name.
_OC_DEFAULTS = {
    "ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
    "final_ln_after_pool": False, "pool_type": None, "act_kwargs": None, "block_type": None, "qk_norm": False,
    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
    "scale_fc": False, "timm_model_name": None, "hf_model_name": None, "hf_tokenizer_name": None,
    "text_arch": "clip", "embed_cls": False, "no_causal_mask": False, "proj_bias": False, "proj_type": "linear",
    "tokenizer_type": "", "tokenizer_mode": None, "tokenizer_kwargs": None, "bos_id": None, "eos_id": None,
}
_OC_POOL = {"vision_cfg": "tok", "text_cfg": "argmax"}  # the pooling of OpenAI's towers
_OC_TOP_READ = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}
_OC_TOP_NEUTRAL = {"custom_text", "cast_dtype", "init_logit_scale"}  # key layout, training dtype, initial value


@dataclass(frozen=True)
class FileConfig:
    """An architecture and where it was read, plus the preprocessing the file states, if any."""

    config: CLIPConfig
    source: str  # the file it came from, for messages
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None
    resize_mode: str | None = None  # OpenCLIP's "squash" / "longest" (vqclip.preprocess.RESIZE_MODES)
    fill: int | None = None  # the padding's grey level for "longest"


def _refuse(where: str, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what}; vqclip implements OpenAI's CLIP towers (ViT or ModifiedResNet) "
                           "with QuickGELU or exact GELU only")


def _one(where: str, name: str, values: dict[str, object]) -> object:
    """The one value both towers must share (vqclip's CLIP has one activation, one eps)."""
    if len(set(values.values())) != 1:
        shown = ", ".join(f"{t} {v!r}" for t, v in values.items())
        raise _refuse(where, f"the towers use different {name} ({shown})")
    return next(iter(values.values()))


def _hf_tower(cfg: Mapping[str, object], tower: str, defaults: dict, top_level: bool) -> dict:
    """One tower's settings: its ``*_config`` over HF's defaults, then, as transformers does, a
    legacy ``*_config_dict`` with the defaults filled in over that; the top level for a
    single-tower config."""
    out = {**defaults, **(cfg if top_level else {}), **(cfg.get(f"{tower}_config") or {})}
    legacy = cfg.get(f"{tower}_config_dict")
    if legacy:
        out.update({**defaults, **legacy})
    return out


def config_from_hf(cfg: Mapping[str, object], where: str = "config.json") -> CLIPConfig:
    """A ``CLIPConfig`` from a Hugging Face CLIP config (``config.json``).

    ``CLIPModel`` configs, and the single-tower ``CLIPVisionModelWithProjection`` /
    ``CLIPTextModelWithProjection`` ones (``towers="image"`` / ``"text"``). Reads the
    legacy ``text_config_dict`` / ``vision_config_dict`` as transformers does (a legacy
    dict, its defaults filled in, overrides ``text_config`` / ``vision_config``), fills
    HF's defaults for what the file leaves out, and refuses what vqclip's towers do not compute (another activation,
    per-tower differences, pooling at a token other than the largest id).
    """
    kind = cfg.get("model_type", "clip")
    towers = {"clip": "both", "clip_vision_model": "image", "clip_text_model": "text"}.get(str(kind))
    if towers is None:
        raise CheckpointError(f"{where} describes a {kind!r} model, not 'clip'; give a CLIP checkpoint "
                              "(SigLIP, ALIGN and others are other networks)")
    try:
        t = _hf_tower(cfg, "text", _HF_TEXT, towers == "text")
        v = _hf_tower(cfg, "vision", _HF_VISION, towers == "image")
        acts = {"text": t["hidden_act"], "vision": v["hidden_act"]}
        if towers != "both":  # the absent tower's defaults are not the model's: only the present one counts
            acts = {"vision": v["hidden_act"]} if towers == "image" else {"text": t["hidden_act"]}
        for tower, act in acts.items():
            if act not in _HF_ACTIVATIONS:
                raise _refuse(where, f"{tower}_config.hidden_act is {act!r}")
        if int(v["num_channels"]) != 3:
            raise _refuse(where, f"vision_config.num_channels is {v['num_channels']}, not 3 (RGB)")
        vocab, eos = int(t["vocab_size"]), t.get("eos_token_id", 2)
        if eos not in (2, vocab - 1):  # 2: transformers' legacy argmax pooling; vocab-1: OpenAI's EOT, the largest id
            raise _refuse(where, f"text_config.eos_token_id {eos} is not the largest id {vocab - 1}, so the text "
                                 "tower pools elsewhere than OpenAI's argmax")
        return CLIPConfig(
            embed_dim=int(cfg.get("projection_dim", 512)),
            image_size=int(v["image_size"]),
            vision_patch_size=int(v["patch_size"]),
            vision_width=int(v["hidden_size"]),
            vision_layers=int(v["num_hidden_layers"]),
            vision_heads=int(v["num_attention_heads"]),
            vision_mlp_width=int(v["intermediate_size"]),
            context_length=int(t["max_position_embeddings"]),
            vocab_size=vocab,
            text_width=int(t["hidden_size"]),
            text_layers=int(t["num_hidden_layers"]),
            text_heads=int(t["num_attention_heads"]),
            text_mlp_width=int(t["intermediate_size"]),
            activation=_HF_ACTIVATIONS[_one(where, "hidden_act", acts)],
            layer_norm_eps=float(_one(where, "layer_norm_eps", {
                k: float(x["layer_norm_eps"]) for k, x in (("text", t), ("vision", v)) if k in acts})),
            towers=towers,
        )
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{where} is not a Hugging Face CLIPModel config ({e!r}); fix or remove it") from e


def _check_openclip_tower(sub: Mapping[str, object], tower: str, where: str) -> None:
    read = _OC_VISION_READ if tower == "vision_cfg" else _OC_TEXT_READ
    for key, value in sub.items():
        if key in read or key in _OC_NEUTRAL:
            continue
        if key == "pool_type":
            if value != _OC_POOL[tower]:
                raise _refuse(where, f"{tower}.pool_type is {value!r}, not {_OC_POOL[tower]!r}")
            continue
        if key not in _OC_DEFAULTS:
            raise _refuse(where, f"{tower}.{key} = {value!r} is not an OpenCLIP setting vqclip knows")
        if value != _OC_DEFAULTS[key] and not (value in ({}, "default") and _OC_DEFAULTS[key] is None):
            raise _refuse(where, f"{tower}.{key} = {value!r}")


def _eps(sub: Mapping[str, object], where: str, tower: str) -> float:
    norm = sub.get("norm_kwargs") or {}
    extra = set(norm) - {"eps"}
    if extra:
        raise _refuse(where, f"{tower}.norm_kwargs sets {sorted(extra)}")
    return float(norm.get("eps", 1e-5))


def config_from_openclip(obj: Mapping[str, object], where: str = "open_clip_config.json") -> FileConfig:
    """A ``CLIPConfig`` (and preprocessing) from OpenCLIP's ``open_clip_config.json``.

    Accepts the Hub file (``{"model_cfg": ..., "preprocess_cfg": ...}``) or a bare model
    config (OpenCLIP's ``model_configs/*.json``). Activation: exact GELU unless
    ``quick_gelu`` is true (OpenCLIP's rule); heads: width // head_width (image) and
    ``heads`` (text); a list of layers is a ModifiedResNet. Every other setting must be
    OpenAI's tower's, or it is refused by name (timm and HF towers, CoCa, SigLIP, layer
    scale, attentional pooling).
    """
    mc = obj.get("model_cfg", obj)
    try:
        if not isinstance(mc, Mapping):
            raise TypeError("model_cfg is not an object")
        for key in mc:
            if key not in _OC_TOP_READ | _OC_TOP_NEUTRAL:
                raise _refuse(where, f"model_cfg.{key} is set (CoCa, SigLIP and other variants are other networks)")
        v, t = mc.get("vision_cfg") or {}, mc.get("text_cfg") or {}
        _check_openclip_tower(v, "vision_cfg", where)
        _check_openclip_tower(t, "text_cfg", where)
        size = v.get("image_size", 224)
        if isinstance(size, (list, tuple)):
            if len(set(size)) != 1:
                raise _refuse(where, f"vision_cfg.image_size {size} is not square")
            size = size[0]
        layers = v.get("layers", 12)
        width, head_width = int(v.get("width", 768)), int(v.get("head_width", 64))
        resnet = isinstance(layers, (list, tuple))
        heads = width * 32 // head_width if resnet else width // head_width  # OpenCLIP's two rules
        text_width = int(t.get("width", 512))
        config = CLIPConfig(
            embed_dim=int(mc["embed_dim"]),
            image_size=int(size),
            vision_patch_size=32 if resnet else int(v.get("patch_size", 16)),
            vision_width=width,
            vision_layers=tuple(int(n) for n in layers) if resnet else int(layers),
            vision_heads=heads,
            vision_mlp_width=int(width * float(v.get("mlp_ratio", 4.0))),
            context_length=int(t.get("context_length", 77)),
            vocab_size=int(t.get("vocab_size", 49408)),
            text_width=text_width,
            text_layers=int(t.get("layers", 12)),
            text_heads=int(t.get("heads", 8)),
            text_mlp_width=int(text_width * float(t.get("mlp_ratio", 4.0))),
            activation="quick_gelu" if mc.get("quick_gelu") else "gelu",
            layer_norm_eps=float(_one(where, "norm_kwargs eps", {"text": _eps(t, where, "text_cfg"),
                                                                  "vision": _eps(v, where, "vision_cfg")})),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{where} is not an OpenCLIP model config ({e!r}); fix or remove it") from e
    return FileConfig(config, where, *_openclip_preprocess(obj.get("preprocess_cfg") or {}, where))


def _openclip_preprocess(pre: Mapping[str, object], where: str) -> tuple:
    """(mean, std, interpolation, resize_mode, fill) of OpenCLIP's ``preprocess_cfg``; an
    unknown resize filter is logged and bicubic used, an unknown resize mode refused."""
    from vqclip.preprocess import INTERPOLATIONS, RESIZE_MODES

    if not isinstance(pre, Mapping):
        raise CheckpointError(f"{where}: preprocess_cfg is a {type(pre).__name__}, not an object; fix or remove it")
    try:
        mean = tuple(float(x) for x in pre["mean"]) if pre.get("mean") else None
        std = tuple(float(x) for x in pre["std"]) if pre.get("std") else None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: preprocess_cfg mean/std are not lists of numbers ({e}); "
                              "fix or remove them") from e
    if any(len(v) != 3 for v in (mean, std) if v is not None):
        raise CheckpointError(f"{where}: preprocess_cfg mean/std need 3 values (RGB)")
    interpolation = pre.get("interpolation")
    if interpolation is not None and (not isinstance(interpolation, str) or interpolation not in INTERPOLATIONS):
        log.warning("%s: resize filter %r is not one of %s; using bicubic", where, interpolation,
                    sorted(INTERPOLATIONS))
        interpolation = None
    mode, fill = pre.get("resize_mode"), pre.get("fill_color")
    if mode is not None and mode not in RESIZE_MODES:
        raise CheckpointError(f"{where}: preprocess_cfg resize_mode {mode!r} is not one of {list(RESIZE_MODES)}")
    if fill is not None and (isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 255):
        raise CheckpointError(f"{where}: preprocess_cfg fill_color {fill!r} is not a grey level 0..255")
    return mean, std, interpolation, mode, fill


def config_from_metadata(metadata: Mapping[str, str] | None, where: str) -> CLIPConfig | None:
    """The config vqclip writes into its safetensors metadata (``"config"``: the config's
    JSON), or None when the metadata holds none."""
    text = (metadata or {}).get("config")
    if not text:
        return None
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        return None  # another tool's "config" entry: not vqclip's
    names = {f.name for f in fields(CLIPConfig)}
    if not isinstance(d, dict) or not d or not set(d) <= names | {"vision_head_width", "text_head_width"}:
        return None
    try:
        cfg = CLIPConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: its metadata's CLIP config is invalid ({e}); pass config=") from e
    if "activation" in d and d["activation"] not in ACTIVATION_NAMES:
        raise CheckpointError(f"{where}: metadata activation {d['activation']!r} is unknown")
    return cfg


def config_beside(weights: Path, hf_layout: bool) -> FileConfig | None:
    """The config file in the weights' folder that describes them, read, or None.

    ``open_clip_config.json`` for OpenCLIP files; ``config.json`` for Hugging Face
    (``hf_layout``: the keys are ``text_model.*`` / ``vision_model.*``), with the image
    preprocessing its ``preprocessor_config.json`` states. An OpenCLIP-layout file never
    takes a ``config.json``: that describes another file of the folder.
    """
    folder = weights.parent
    oc, hf = folder / "open_clip_config.json", folder / "config.json"
    if not hf_layout and oc.is_file():
        return config_from_openclip(read_json(oc), str(oc))
    if hf_layout:
        obj = read_json(hf)
        if obj is None:
            return None
        return FileConfig(config_from_hf(obj, str(hf)), str(hf), *_hf_preprocess(folder / "preprocessor_config.json"))
    return None


# Pillow's resampling codes, as transformers' image processors store them.
_PIL_FILTERS = {3: "bicubic", 2: "bilinear", 1: "lanczos"}


def _hf_preprocess(path: Path) -> tuple:
    """(mean, std, interpolation) from a Hugging Face ``preprocessor_config.json``, or Nones."""
    obj = read_json(path)
    if obj is None:
        return None, None, None
    try:
        mean = tuple(float(x) for x in obj["image_mean"]) if obj.get("image_mean") else None
        std = tuple(float(x) for x in obj["image_std"]) if obj.get("image_std") else None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: image_mean/image_std are not lists of numbers ({e}); fix or remove it") from e
    if any(len(v) != 3 for v in (mean, std) if v is not None):
        raise CheckpointError(f"{path}: image_mean/image_std need 3 values (RGB)")
    resample = obj.get("resample")
    return mean, std, _PIL_FILTERS.get(resample) if isinstance(resample, int) else None


# The fields a wrong config gets past the strict key/shape check with: named first in a refusal.
_SHAPELESS = ("activation", "vision_heads", "text_heads", "layer_norm_eps")


def check_agrees(given: CLIPConfig, found: FileConfig, given_name: str) -> None:
    """Raise ``CheckpointError`` naming every field where ``given`` and the file's config differ."""
    names = sorted((f.name for f in fields(CLIPConfig) if f.name != "vision_stem"),
                   key=lambda n: n not in _SHAPELESS)  # what shapes cannot catch comes first
    diffs = [f"{n} {getattr(given, n)!r} vs {getattr(found.config, n)!r}" for n in names
             if getattr(given, n) != getattr(found.config, n)]
    if diffs:
        raise CheckpointError(f"config {given_name} disagrees with {found.source} on {'; '.join(diffs[:4])}"
                              f"{' ...' if len(diffs) > 4 else ''}; drop the config to use the file's, or fix "
                              "the file")
