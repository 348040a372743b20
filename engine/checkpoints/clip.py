"""Loading CLIP weights from OpenAI, OpenCLIP and Hugging Face files, strictly.

One path for every format: read the file safely (``read_tensors``; shards merged), unwrap
a training checkpoint, strip wrapper prefixes, rename Hugging Face keys
(``convert_hf_clip``), drop OpenAI's metadata entries, pick the architecture, then copy
the tensors key for key into ``vqclip.models.clip.CLIP`` with a full key and shape check.

The architecture is what the checkpoint or the caller says (``clip_configs``): a given
config or zoo name (checked against the file's own config where it has one), the
config file beside the weights, vqclip's safetensors metadata, or, for OpenAI's own
files, their shapes under OpenAI's rules. Anything else is refused: the same tensors
are a QuickGELU or a GELU model, and shapes cannot tell which.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Mapping

import torch

from vqclip.checkpoints._io import read_json, read_metadata, read_tensors, sniff_format
from vqclip.checkpoints.clip_configs import FileConfig, check_agrees, config_beside, config_from_metadata
from vqclip.checkpoints.identity import remember_source, shard_files, weights_file_of
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
    has_image = "visual.positional_embedding" in sd or "visual.attnpool.positional_embedding" in sd
    if not has_image and "token_embedding.weight" not in sd:
        sample = ", ".join(sorted(sd)[:5]) or "none"
        hint = " (it looks like a VQGAN checkpoint)" if any(k.startswith(("encoder.", "decoder.", "quantize."))
                                                             for k in sd) else ""
        raise CheckpointError(
            f"not a CLIP checkpoint{hint}: no 'visual.positional_embedding' (ViT), 'visual.attnpool.*' "
            f"(ResNet) or 'token_embedding.weight' keys (nor Hugging Face 'vision_model.*' / 'text_model.*' "
            f"ones); it has {len(sd)} keys, e.g. {sample}"
        )
    return sd


def _layer_count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if idx != set(range(len(idx))):
        raise CheckpointError(f"checkpoint's {prefix}N blocks are not numbered 0..{len(idx) - 1}: {sorted(idx)}")
    return len(idx)


def _mlp_width(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Hidden units of a tower's MLPs (``c_fc`` is (hidden, width)); 0, the 4x default, for no blocks."""
    w = sd.get(prefix + "0.mlp.c_fc.weight")
    return int(w.shape[0]) if w is not None else 0


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
    positional embedding's grid, MLP widths from ``c_fc``; and OpenAI's conventions for what
    shapes cannot tell: heads = width // 64, QuickGELU, eps 1e-5 (``load_clip`` uses this
    only for OpenAI's own formats). ModifiedResNet towers as ``build_model`` infers them.

    Example::

        cfg = infer_clip_config(CLIP(get("ViT-B/32").config).state_dict())  # == that config
    """
    if "visual.attnpool.positional_embedding" in state_dict:
        return _infer_resnet_config(state_dict)
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
            vision_mlp_width=_mlp_width(state_dict, "visual.transformer.resblocks."),
            text_mlp_width=_mlp_width(state_dict, "transformer.resblocks."),
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


def _infer_resnet_config(sd: Mapping[str, torch.Tensor]) -> CLIPConfig:
    """A ModifiedResNet CLIP's config from its shapes, by OpenAI's ``build_model`` rules."""
    try:
        stages = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
        width = sd["visual.layer1.0.conv1.weight"].shape[0]  # (W, W, 1, 1): the stem's output width
        pos = sd["visual.attnpool.positional_embedding"]  # (1 + g*g, 32 W)
        grid = round((pos.shape[0] - 1) ** 0.5)
        if grid * grid + 1 != pos.shape[0] or 0 in stages:
            raise CheckpointError(f"visual.attnpool.positional_embedding has {pos.shape[0]} rows and the stages "
                                  f"{stages} blocks; not a ModifiedResNet image tower")
        text_width = sd["ln_final.weight"].shape[0]
        return CLIPConfig(
            embed_dim=sd["text_projection"].shape[1],  # (Wt, E)
            image_size=grid * 32, vision_patch_size=32, vision_width=width, vision_layers=stages,
            vision_heads=width * 32 // _HEAD_DIM,
            context_length=sd["positional_embedding"].shape[0], vocab_size=sd["token_embedding.weight"].shape[0],
            text_width=text_width, text_layers=_layer_count(sd, "transformer.resblocks."),
            text_heads=_heads(text_width, "text"), text_mlp_width=_mlp_width(sd, "transformer.resblocks."),
        )
    except KeyError as e:
        raise CheckpointError(f"cannot infer the ResNet CLIP architecture: key {e.args[0]!r} is missing") from e


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
    counters = [k for k in model.state_dict() if k.endswith(".num_batches_tracked") and k not in sd]
    sd = {**sd, **{k: torch.tensor(0) for k in counters}}  # BatchNorm's training counter: some saves drop it
    cast = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in sd.items()}
    strict_load(model, cast, source=source, assign=True)
    # The causal mask is the one non-persistent buffer: derived from the config, never saved.
    # test_loaded_model_matches_a_built_one guards that this stays CLIP's own rule.
    if cfg.has_text:
        model.attn_mask = torch.full((cfg.context_length, cfg.context_length), float("-inf"),
                                     device=device).triu_(1)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not left, f"tensors left on the meta device after loading: {left}"
    return model


def _resolve(source: str | os.PathLike) -> tuple[Path, CLIPConfig | None]:
    """A file to read (a shard index for a sharded folder) and, for a zoo name, its config."""
    path = Path(os.path.expanduser(os.fspath(source)))
    if path.is_dir():  # a Hugging Face or OpenCLIP model folder
        return weights_file_of(path), None
    if path.is_file():
        return path, None
    from vqclip.zoo import get

    try:
        rec = get(str(source), family="clip")
    except UnknownModelError as e:
        looks_like_path = os.sep in str(source) or Path(str(source)).suffix in (".pt", ".bin", ".safetensors", ".pth")
        what = f"file {str(path)!r} does not exist" if looks_like_path else str(e)
        raise CheckpointError(f"{str(source)!r} is neither a file nor a known CLIP model ({e}); give a local "
                              "weights path or a zoo name",
                              cli=f"--model: {what}; give a weights file or folder, or a zoo name (`vqclip models`)"
                              ) from e
    if rec.weights is None:
        raise CheckpointError(
            f"zoo model {rec.name!r} has no bundled weights; give the weights file or folder and name {rec.name!r} "
            "as its architecture (load_clip(path, config=...))",
            cli=f"zoo model {rec.name!r} has no bundled weights; give its weights file or folder instead "
                f"(--model PATH, adding --arch {rec.name} if the file does not state its architecture)")
    from vqclip.zoo.bundled import weights_file

    wpath = weights_file(rec)  # missing or corrupt: an error naming the file and the recipe
    return wpath, rec.config


def _read_all(path: Path) -> dict:
    """The checkpoint object of ``path``; a shard index's shards merged into one dict."""
    files = shard_files(path)
    if files == [path]:
        return read_tensors(path)
    merged: dict = {}
    for f in files:
        part = read_tensors(f)
        if not isinstance(part, Mapping):
            raise CheckpointError(f"shard {f} holds a {type(part).__name__}, expected a dict of tensors")
        twice = set(part) & set(merged)
        if twice:
            raise CheckpointError(f"shards of {path} both hold {sorted(twice)[:3]}; is the index damaged?")
        merged.update(part)
    return merged


def _is_openai_file(path: Path, raw: Mapping[str, object]) -> bool:
    """OpenAI's own formats, whose architecture their shapes decide under OpenAI's rules
    (QuickGELU, heads = width // 64): their TorchScript archives, and state dicts that
    still hold the archives' metadata entries."""
    return sniff_format(path) == "torchscript" or any(k in raw for k in OPENAI_METADATA_KEYS)


def _matching_zoo_names(shapes: CLIPConfig) -> list[str]:
    """Zoo architectures with these shapes, whatever their activation and heads."""
    from vqclip.zoo import get, list_models

    keep = ("activation", "vision_heads", "text_heads", "layer_norm_eps")
    def shape_of(c: CLIPConfig) -> dict:
        return {k: v for k, v in c.to_dict().items() if k not in keep and not k.endswith("head_width")}
    return [n for n in list_models("clip") if shape_of(get(n).config) == shape_of(shapes)]


def _undetermined(path: Path, sd: Mapping[str, torch.Tensor]) -> CheckpointError:
    try:
        names = _matching_zoo_names(infer_clip_config(sd))
    except CheckpointError:
        names = []
    from vqclip.zoo import get

    shown = [f"{n} ({'QuickGELU' if get(n).config.activation == 'quick_gelu' else 'GELU'})" for n in names]
    pick = f"one of {', '.join(shown)}" if names else "a zoo name or a CLIPConfig"
    return CheckpointError(
        f"{path} does not say its architecture (the same tensors are a QuickGELU or a GELU model, and head "
        f"counts cannot be told from shapes): name it ({pick}; CLI --arch NAME), or put the model's "
        "config.json / open_clip_config.json beside it")


_GIVEN_ONLY = "the given config (the checkpoint states none)"


def _choose_config(path: Path, raw: Mapping[str, object], sd: Mapping[str, torch.Tensor],
                   found: FileConfig | None, given: CLIPConfig | None, given_name: str,
                   zoo_config: CLIPConfig | None) -> FileConfig:
    """The architecture to build, from the caller and what the checkpoint says (module docstring)."""
    if zoo_config is not None:
        if given is not None:
            check_agrees(given, FileConfig(zoo_config, "the zoo record"), given_name)
        return FileConfig(zoo_config, "the zoo")
    if found is None:
        meta = config_from_metadata(read_metadata(path) if path.suffix != ".json" else {}, str(path))
        found = FileConfig(meta, f"{path.name}'s metadata") if meta is not None else None
    if found is None and _is_openai_file(path, raw):
        found = FileConfig(infer_clip_config(sd), "OpenAI's format")  # QuickGELU, heads = width // 64
    if given is not None:
        if found is not None:
            check_agrees(given, found, given_name)
            return dataclasses.replace(found, config=given, source=given_name)
        return FileConfig(given, _GIVEN_ONLY)
    if found is not None:
        return found
    raise _undetermined(path, sd)


def _no_projection(path: Path, cls: str) -> CheckpointError:
    """A single tower saved without its projection gives features, not CLIP embeddings."""
    return CheckpointError(f"{path} is a {cls} without its projection, so its outputs are not CLIP embeddings; "
                           f"give a {cls}WithProjection or a CLIPModel folder")


def _bare_hf_tower(path: Path) -> None:
    """Refuse a CLIPVisionModel / CLIPTextModel folder (transformers saves their keys without
    the ``vision_model.`` / ``text_model.`` prefix)."""
    kind = (read_json(path.parent / "config.json") or {}).get("model_type")
    cls = {"clip_vision_model": "CLIPVisionModel", "clip_text_model": "CLIPTextModel"}.get(str(kind))
    if cls is not None:
        raise _no_projection(path, cls)


def _check_single_tower(cfg: CLIPConfig, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    key, cls = ("visual.proj", "CLIPVisionModel") if cfg.has_image else ("text_projection", "CLIPTextModel")
    if key not in sd:
        raise _no_projection(path, cls)


def load_clip(source: str | os.PathLike, *, config: CLIPConfig | str | None = None, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> CLIP:
    """A ``CLIP`` in eval mode with the weights of ``source``, checked key for key.

    ``source`` is a zoo name with bundled weights (``vqclip/zoo/weights``), a local
    weights file, or a Hugging Face / OpenCLIP model folder (sharded ones included).
    Files: OpenAI ``ViT-*.pt`` / ``RN*.pt`` TorchScript archives (read without executing
    them), OpenAI / OpenCLIP state dicts and training checkpoints
    (``.pt``/``.bin``/``.safetensors``), Hugging Face ``CLIPModel`` weights.

    The architecture (module docstring): ``config`` (a ``CLIPConfig`` or a zoo name such
    as ``"ViT-B/32"``), checked against the checkpoint's own ``config.json`` /
    ``open_clip_config.json`` when one is beside it; else that file; else vqclip's
    safetensors metadata; else, for OpenAI's formats, the shapes. A checkpoint that says
    none of these is refused: loading it as QuickGELU would be silently wrong for
    OpenCLIP's GELU models. Weights are cast to ``dtype`` (OpenAI's files are float16)
    and moved to ``device``; a file's stated preprocessing is kept in ``model.preprocess_cfg``.

    Raises ``CheckpointError`` for a missing, truncated, unsafe or non-CLIP file, for an
    undetermined or contradicted architecture, and for missing / unexpected / mis-shaped
    keys (all listed in one message).

    Example::

        model = load_clip("ViT-B-32.pt")  # OpenAI's file; architecture inferred
        emb = model.encode_image(pixels)  # (B, 3, 224, 224) -> (B, 512)
    """
    given_name = repr(config) if isinstance(config, str) else "given"
    if isinstance(config, str):
        from vqclip.zoo import get

        config = get(config, family="clip").config  # UnknownModelError lists the known names
    path, zoo_config = _resolve(source)
    raw = _read_all(path)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, expected a dict of tensors")
    unwrapped = convert_openclip(raw)
    beside = config_beside(path, _is_hf(unwrapped)) if zoo_config is None else None  # refuses what it describes
    if beside is None and zoo_config is None and not _is_hf(unwrapped):
        _bare_hf_tower(path)  # transformers saves CLIPVisionModel / CLIPTextModel without the prefix
    sd = clip_state_dict(unwrapped)
    chosen = _choose_config(path, raw, sd, beside, config, given_name, zoo_config)
    cfg = chosen.config
    if cfg.towers != "both":
        _check_single_tower(cfg, sd, path)
        sd.setdefault("logit_scale", torch.tensor(4.6052))  # HF's single-tower classes hold no temperature
    log.info("loading CLIP from %s (%d tensors) as %s (architecture from %s)", path, len(sd), cfg, chosen.source)
    model = _build_loaded(cfg, sd, str(path), device, dtype).eval()
    # Only the caller vouches for this architecture: caches key their exports by it too.
    model.architecture_given = chosen.source == _GIVEN_ONLY
    stated = (("mean", chosen.mean), ("std", chosen.std), ("interpolation", chosen.interpolation),
              ("resize_mode", chosen.resize_mode), ("fill", chosen.fill))
    model.preprocess_cfg = {k: v for k, v in stated if v is not None}
    remember_source(model, path)
    return model
