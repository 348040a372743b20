"""Loading CLIP weights from OpenAI, OpenCLIP and Hugging Face files, strictly.

One path for every format: read the file safely (``read_tensors``), unwrap a training
checkpoint, strip wrapper prefixes, rename Hugging Face keys (``convert_hf_clip``), drop
OpenAI's metadata entries, pick the architecture (given, from the zoo, from a
``config.json`` next to the weights, or inferred from the tensor shapes), then copy the
tensors key for key into ``vqclip.models.clip.CLIP`` with a full key and shape check.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Mapping

import torch

from vqclip.checkpoints._io import read_json, read_tensors
from vqclip.checkpoints.identity import remember_source, weights_file_of
from vqclip.errors import CheckpointError, UnknownModelError
from vqclip.models.clip import CLIP, CLIPConfig

log = logging.getLogger(__name__)

__all__ = ["load_clip", "infer_clip_config", "convert_hf_clip", "convert_openclip", "clip_state_dict", "strict_load"]

# Entries of OpenAI's checkpoints that are architecture metadata, not weights
# (build_model reads nothing from them either: the shapes say the same).
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")

# Prefixes that training wrappers put in front of every key; stripped in any order.
WRAPPER_PREFIXES = (
    "module.",  # torch.nn.parallel.DistributedDataParallel / DataParallel (OpenCLIP's --distributed runs)
    "_orig_mod.",  # torch.compile's OptimizedModule (OpenCLIP's --torchcompile)
)

# Keys that OpenCLIP's training checkpoints wrap the weights in ({"epoch", "name", "state_dict", "optimizer"}).
CONTAINER_KEYS = ("state_dict",)

# OpenCLIP's CustomTextCLIP keeps the text tower under "text."; with OpenAI's text
# transformer its keys are otherwise the same as CLIP's top-level ones.
_OPENCLIP_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")

_HEAD_DIM = 64  # OpenAI's and HF's released CLIPs: heads = width // 64

# Keys of HF's CLIPModel that map one to one (OpenAI name, HF name, transpose?).
_HF_SIMPLE = (
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight", False),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight", False),
    ("ln_final.weight", "text_model.final_layer_norm.weight", False),
    ("ln_final.bias", "text_model.final_layer_norm.bias", False),
    ("text_projection", "text_projection.weight", True),  # nn.Linear stores (out, in)
    ("logit_scale", "logit_scale", False),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding", False),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", False),
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", False),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight", False),  # sic: HF's spelling
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias", False),
    ("visual.ln_post.weight", "vision_model.post_layernorm.weight", False),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias", False),
    ("visual.proj", "visual_projection.weight", True),
)
# Per-layer renames (OpenAI suffix, HF suffix) inside resblocks.N / encoder.layers.N.
_HF_LAYER = (
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
    ("attn.out_proj", "self_attn.out_proj"),
)
# HF buffers that are derived (arange), saved by transformers < 4.31 only.
_HF_DERIVED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def _is_hf(sd: Mapping[str, object]) -> bool:
    return any(k.startswith(("text_model.", "vision_model.")) for k in sd)


def convert_hf_clip(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``CLIPModel`` state dict to OpenAI's layout (vqclip's own).

    ``self_attn.{q,k,v}_proj`` are concatenated into ``attn.in_proj_{weight,bias}``
    (q, k, v order, as ``nn.MultiheadAttention``); the two projections are transposed
    from ``nn.Linear``'s (out, in) to OpenAI's (in, out). HF's derived ``position_ids``
    buffers are dropped. Keys this function does not know are passed through unchanged,
    so the strict load afterwards names them.

    Example::

        sd = convert_hf_clip(safetensors.torch.load_file("model.safetensors"))
        sd["visual.proj"].shape  # (768, 512) for ViT-B/32
    """
    src = {k: v for k, v in state_dict.items() if k not in _HF_DERIVED}
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, transpose in _HF_SIMPLE:
        if theirs in src:
            t = src.pop(theirs)
            out[ours] = t.t().contiguous() if transpose else t
    layer_re = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$")
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key in list(src):
        m = layer_re.match(key)
        if not m:
            continue
        tower, idx, rest = m.groups()
        base = f"{'visual.' if tower == 'vision_model' else ''}transformer.resblocks.{idx}."
        pm = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if pm:  # gathered, concatenated below once all three are seen
            qkv.setdefault((base, pm.group(2)), {})[pm.group(1)] = src.pop(key)
            continue
        for ours, theirs in _HF_LAYER:
            if rest.startswith(theirs + "."):
                out[base + ours + rest[len(theirs):]] = src.pop(key)
                break
    for (base, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise CheckpointError(f"Hugging Face checkpoint lacks {base}self_attn.{{{','.join(missing)}}}_proj."
                                  f"{kind}; the file is incomplete")
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    out.update(src)  # unknown keys: left for the strict check to report
    return out


def convert_openclip(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Bring an OpenCLIP checkpoint (or OpenAI state dict) to vqclip's key layout.

    Unwraps ``{"state_dict": ...}`` training checkpoints, strips the ``WRAPPER_PREFIXES``
    (``module.`` from DDP, ``_orig_mod.`` from torch.compile, in any nesting), moves a
    CustomTextCLIP's ``text.*`` tower to the top level, and drops OpenAI's metadata
    entries (``input_resolution``, ``context_length``, ``vocab_size``). OpenCLIP's ViT
    CLIPs otherwise use OpenAI's names, so nothing else is renamed; extra keys (e.g.
    SigLIP's ``logit_bias``) are kept so that the strict load reports them.

    Example::

        sd = convert_openclip(torch.load("epoch_32.pt", weights_only=True))
    """
    sd: Mapping[str, object] = state_dict
    for key in CONTAINER_KEYS:
        if key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor; "
                                  "expected a flat state dict of tensors")
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        if key.startswith("text.") and key[5:].startswith(_OPENCLIP_TEXT_KEYS):
            key = key[5:]
        if key in OPENAI_METADATA_KEYS:
            continue
        if key in out:
            raise CheckpointError(f"checkpoint has key {key!r} twice once wrapper prefixes are stripped")
        out[key] = value
    return out


def clip_state_dict(obj: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Any supported checkpoint object -> a flat state dict in vqclip's CLIP layout.

    Raises ``CheckpointError`` when the object holds no CLIP weights at all (a VQGAN
    checkpoint, an optimizer state), naming a few of the keys it does hold.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, expected a dict of tensors")
    sd = convert_openclip(obj)
    if _is_hf(sd):
        sd = convert_hf_clip(sd)
    if "visual.positional_embedding" not in sd or "token_embedding.weight" not in sd:
        sample = ", ".join(sorted(sd)[:5]) or "none"
        hint = " (it looks like a VQGAN checkpoint)" if any(k.startswith(("encoder.", "decoder.", "quantize."))
                                                             for k in sd) else ""
        raise CheckpointError(
            f"not a CLIP checkpoint{hint}: no 'visual.positional_embedding' / 'token_embedding.weight' "
            f"(or Hugging Face 'vision_model.*') keys; it has {len(sd)} keys, e.g. {sample}"
        )
    return sd


def _layer_count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if idx != set(range(len(idx))):
        raise CheckpointError(f"checkpoint's {prefix}N blocks are not numbered 0..{len(idx) - 1}: {sorted(idx)}")
    return len(idx)


def _heads(width: int, tower: str) -> int:
    if width % _HEAD_DIM:
        raise CheckpointError(f"cannot infer the {tower} head count from width {width} (OpenAI's rule is "
                              f"width // {_HEAD_DIM}); pass config=CLIPConfig(...) or a zoo name")
    return width // _HEAD_DIM


def infer_clip_config(state_dict: Mapping[str, torch.Tensor]) -> CLIPConfig:
    """The ``CLIPConfig`` a vqclip-layout state dict was made with, from tensor shapes.

    As OpenAI's ``build_model``: widths from the embeddings, layer counts from the
    block indices, patch size from ``visual.conv1`` (or, for vqclip's conv stem,
    ``2 ** number of stride-2 3x3 convs`` in ``visual.stem``), image size from the
    positional embedding's grid, heads = width // 64 (shapes cannot tell heads; pass a
    config for models that break this rule).

    Example::

        cfg = infer_clip_config(CLIP(get("ViT-B/32").config).state_dict())  # == that config
    """
    try:
        vis_pos = state_dict["visual.positional_embedding"]  # (1 + g*g, Wv)
        vision_width = vis_pos.shape[1]
        if "visual.conv1.weight" in state_dict:
            stem, patch = "patch", state_dict["visual.conv1.weight"].shape[-1]  # (Wv, 3, p, p)
        else:
            convs = [k for k, v in state_dict.items()
                     if re.match(r"^visual\.stem\.layers\.\d+\.weight$", k) and v.ndim == 4 and v.shape[-1] == 3]
            if not convs:
                raise CheckpointError("checkpoint has neither 'visual.conv1.weight' (patch stem) nor "
                                      "'visual.stem.layers.N.weight' (conv stem)")
            stem, patch = "conv", 2 ** len(convs)
        grid = round((vis_pos.shape[0] - 1) ** 0.5)
        if grid * grid + 1 != vis_pos.shape[0]:
            raise CheckpointError(f"visual.positional_embedding has {vis_pos.shape[0]} rows, expected 1 + a "
                                  "square grid of patches")
        text_width = state_dict["ln_final.weight"].shape[0]
        return CLIPConfig(
            embed_dim=state_dict["visual.proj"].shape[1],  # (Wv, E)
            image_size=grid * patch,
            vision_patch_size=patch,
            vision_width=vision_width,
            vision_layers=_layer_count(state_dict, "visual.transformer.resblocks."),
            vision_heads=_heads(vision_width, "vision"),
            vision_stem=stem,
            context_length=state_dict["positional_embedding"].shape[0],  # (T, Wt)
            vocab_size=state_dict["token_embedding.weight"].shape[0],  # (V, Wt)
            text_width=text_width,
            text_layers=_layer_count(state_dict, "transformer.resblocks."),
            text_heads=_heads(text_width, "text"),
        )
    except KeyError as e:
        raise CheckpointError(f"cannot infer the CLIP architecture: key {e.args[0]!r} is missing") from e


def _config_from_hf_json(cfg: Mapping[str, object]) -> CLIPConfig:
    """A CLIPConfig from a Hugging Face ``config.json`` of a ``CLIPModel``."""
    if cfg.get("model_type", "clip") != "clip":
        raise CheckpointError(f"config.json describes a {cfg.get('model_type')!r} model, not 'clip'; remove it "
                              "or pass config= if the weights really are CLIP's")
    try:
        t, v = cfg["text_config"], cfg["vision_config"]
        return CLIPConfig(
            embed_dim=int(cfg.get("projection_dim", 512)),
            image_size=int(v.get("image_size", 224)),
            vision_patch_size=int(v.get("patch_size", 32)),
            vision_width=int(v.get("hidden_size", 768)),
            vision_layers=int(v.get("num_hidden_layers", 12)),
            vision_heads=int(v.get("num_attention_heads", 12)),
            context_length=int(t.get("max_position_embeddings", 77)),
            vocab_size=int(t.get("vocab_size", 49408)),
            text_width=int(t.get("hidden_size", 512)),
            text_layers=int(t.get("num_hidden_layers", 12)),
            text_heads=int(t.get("num_attention_heads", 8)),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"config.json is not a Hugging Face CLIPModel config ({e!r}); remove it to "
                              "infer the architecture from the weights") from e


def _check_hf_json(cfg: Mapping[str, object]) -> None:
    # Our towers are OpenAI's: QuickGELU, LayerNorm eps 1e-5. A config asking for others
    # would load without a shape error and give wrong embeddings, so refuse it.
    for tower in ("text_config", "vision_config"):
        sub = cfg.get(tower) or {}
        act = sub.get("hidden_act", "quick_gelu")
        eps = float(sub.get("layer_norm_eps", 1e-5))
        if act != "quick_gelu" or abs(eps - 1e-5) > 1e-12:
            raise CheckpointError(f"config.json {tower} uses hidden_act={act!r}, layer_norm_eps={eps}; vqclip's "
                                  "CLIP implements OpenAI's quick_gelu with eps 1e-5 only")


def strict_load(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str = "checkpoint", *,
                assign: bool = False) -> None:
    """Copy ``sd`` into ``model``, or raise one ``CheckpointError`` listing every mismatch.

    Missing, unexpected and mis-shaped keys are each listed (first 5 and a count).
    Floating tensors are cast to the model's dtype by the copy; with ``assign=True`` the
    tensors themselves become the parameters (for a model built on the meta device).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = sorted(f"{k} (file {tuple(sd[k].shape)}, model {tuple(expected[k].shape)})"
                       for k in set(sd) & set(expected) if sd[k].shape != expected[k].shape)
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f", ... ({len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not fit the CLIP architecture: {'; '.join(problems)}. "
                              "Is the config right (pass config= or a zoo name), or the file another model?")
    model.load_state_dict(sd, strict=True, assign=assign)


def _build_loaded(cfg: CLIPConfig, sd: Mapping[str, torch.Tensor], source: str, device: str | torch.device,
                  dtype: torch.dtype) -> CLIP:
    """CLIP(cfg) holding ``sd``, without a random init that the checkpoint would overwrite.

    Built on the meta device (no memory, no random init to overwrite), then the
    checkpoint's tensors, cast once, become the parameters.
    """
    with torch.device("meta"):
        model = CLIP(cfg)
    cast = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in sd.items()}
    strict_load(model, cast, source=source, assign=True)
    # The causal mask is the one non-persistent buffer: derived from the config, never saved.
    # test_loaded_model_matches_a_built_one guards that this stays CLIP's own rule.
    model.attn_mask = torch.full((cfg.context_length, cfg.context_length), float("-inf"), device=device).triu_(1)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not left, f"tensors left on the meta device after loading: {left}"
    return model


def _resolve(source: str | os.PathLike) -> tuple[Path, CLIPConfig | None]:
    """A file to read and, for a zoo name, its config."""
    path = Path(source)
    if path.is_dir():  # a Hugging Face or OpenCLIP model folder
        return weights_file_of(path), None
    if path.is_file():
        return path, None
    from vqclip.zoo import get

    try:
        rec = get(str(source), family="clip")
    except UnknownModelError as e:
        raise CheckpointError(f"{str(source)!r} is neither a file nor a known CLIP model ({e}); give a local "
                              "weights path or a zoo name") from e
    if rec.weights is None:
        raise CheckpointError(f"zoo model {rec.name!r} has no bundled weights; download them yourself and pass "
                              f"the file path, e.g. load_clip('ViT-B-32.pt', config=get({rec.name!r}).config)")
    from vqclip.zoo.bundled import weights_file

    wpath = weights_file(rec)  # missing or corrupt: an error naming the file and the recipe
    return wpath, rec.config


def load_clip(source: str | os.PathLike, *, config: CLIPConfig | str | None = None, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> CLIP:
    """A ``CLIP`` in eval mode with the weights of ``source``, checked key for key.

    ``source`` is a zoo name with bundled weights (``vqclip/zoo/weights``), a local
    weights file, or a Hugging Face model folder. Files: OpenAI ``ViT-*.pt`` TorchScript
    archives (read without executing them), OpenAI / OpenCLIP state dicts and training
    checkpoints (``.pt``/``.bin``/``.safetensors``), Hugging Face ``CLIPModel``
    ``model.safetensors`` / ``pytorch_model.bin``. The architecture is ``config`` if
    given (a ``CLIPConfig`` or a zoo name such as ``"ViT-B/32"``), else the zoo's, else a
    ``config.json`` beside a HF file, else inferred from the shapes (``infer_clip_config``). Weights are cast to ``dtype`` (OpenAI's files are
    float16) and moved to ``device``.

    Raises ``CheckpointError`` for a missing, truncated, unsafe or non-CLIP file and for
    missing / unexpected / mis-shaped keys (all listed in one message).

    Example::

        model = load_clip("ViT-B-32.pt")  # OpenAI's file; architecture inferred
        emb = model.encode_image(pixels)  # (B, 3, 224, 224) -> (B, 512)
    """
    if isinstance(config, str):
        from vqclip.zoo import get

        config = get(config, family="clip").config  # UnknownModelError lists the known names
    path, zoo_config = _resolve(source)
    raw = read_tensors(path)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, expected a dict of tensors")
    unwrapped = convert_openclip(raw)
    # A Hugging Face export keeps its architecture (incl. head counts) in config.json beside the weights.
    hf_json = read_json(path.parent / "config.json") if _is_hf(unwrapped) else None
    sd = clip_state_dict(unwrapped)
    if config is None and zoo_config is None and hf_json is not None:
        config = _config_from_hf_json(hf_json)
        _check_hf_json(hf_json)
    cfg = config or zoo_config or infer_clip_config(sd)
    log.info("loading CLIP from %s (%d tensors) as %s", path, len(sd), cfg)
    model = _build_loaded(cfg, sd, str(path), device, dtype).eval()
    remember_source(model, path)
    return model
