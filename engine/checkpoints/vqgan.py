"""Loading taming-transformers VQGAN checkpoints (Lightning ``.ckpt``) into ``vqclip.models.vqgan``.

The file is read through ``read_tensors`` (``torch.load(weights_only=True)``: no pickled code
runs). Keys match the model key for key; the training-only ``loss.*`` keys (LPIPS and the
discriminator) are dropped, anything else unknown or missing is a ``CheckpointError`` naming
the keys. The architecture comes from the ``config`` argument, the run's ``.yaml``
(``model.params.ddconfig``, ``n_embed``, ``embed_dim``), or the tensor shapes.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from vqclip.checkpoints._io import read_tensors
from vqclip.checkpoints.identity import remember_source
from vqclip.errors import CheckpointError
from vqclip.models.vqgan import VQGAN, VQGANConfig
from vqclip.zoo import get

log = logging.getLogger(__name__)

__all__ = ["load_vqgan", "infer_vqgan_config", "read_vqgan_yaml", "vqgan_state_dict"]

# Key prefixes a taming checkpoint carries that inference never uses.
_TRAINING_ONLY_PREFIXES = (
    "loss.",  # VQLPIPSWithDiscriminator: LPIPS network and PatchGAN discriminator
)
# Prefixes that exist only for encoding; dropped before building a decode-only model.
_ENCODER_PREFIXES = ("encoder.", "quant_conv.")

# Classes that old PyTorch Lightning (1.0-1.4, which wrote the released taming files) pickled
# by reference as dictionary keys of ``ckpt["callbacks"]``. The weights-only unpickler refuses
# any global it does not know; these are mapped to an inert marker class, so the file loads
# without importing Lightning and without running any of its code.
_LIGHTNING_CALLBACK_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
)

# The taming model classes this loader understands (``model.target`` in the yaml).
_SUPPORTED_TARGETS = ("taming.models.vqgan.VQModel",)


class _LightningCallbackMarker:
    """Stands in for a Lightning callback class named in a checkpoint; never instantiated."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise CheckpointError("a checkpoint tried to instantiate a Lightning callback; refused")


def _read_checkpoint(path: Path) -> Mapping:
    markers = [(_LightningCallbackMarker, name) for name in _LIGHTNING_CALLBACK_GLOBALS]
    with torch.serialization.safe_globals(markers):
        return read_tensors(path)


def vqgan_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model's tensors from a loaded checkpoint object, training-only keys dropped.

    Accepts a Lightning checkpoint (``{"state_dict": {...}, ...}``) or a bare state dict.
    Raises ``CheckpointError`` when the object holds no VQGAN (e.g. a CLIP state dict).
    """
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # Lightning: epoch, optimizer_states, callbacks ... sit beside it
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict; "
                              "expected a taming-transformers .ckpt or a VQGAN state dict")
    sd = {k: v for k, v in obj.items() if not k.startswith(_TRAINING_ONLY_PREFIXES)}
    if not any(k.startswith("decoder.") for k in sd):
        sample = ", ".join(sorted(sd)[:4]) or "none"
        hint = " (it looks like a CLIP checkpoint)" if any(k.startswith(("visual.", "vision_model.", "text_model."))
                                                           for k in sd) else ""
        raise CheckpointError(f"{source}: no 'decoder.*' keys (first keys: {sample}){hint}; "
                              "expected a taming-transformers VQGAN checkpoint")
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {_names(bad)}")
    return sd


def _names(keys: list[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _shape(sd: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Size:
    if key not in sd:
        raise CheckpointError(f"{source}: missing key {key!r}, needed to infer the architecture; "
                              "is the file truncated or of another model? Pass config= or yaml_path=")
    return sd[key].shape


def _levels(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[int, set[str]]:
    """``{level index: keys under it}`` for ``prefix`` ``"decoder.up."`` / ``"encoder.down."``."""
    out: dict[int, set[str]] = {}
    for k in sd:
        if k.startswith(prefix):
            idx = k[len(prefix):].split(".", 1)[0]
            if idx.isdigit():
                out.setdefault(int(idx), set()).add(k)
    return out


def infer_vqgan_config(sd: Mapping[str, torch.Tensor], *, resolution: int = 256,
                       source: str = "checkpoint") -> VQGANConfig:
    """Architecture from tensor shapes (decoder keys suffice; encoder keys refine ``ch``).

    ``resolution`` cannot be read from shapes: it only decides which levels carry attention,
    so the levels that have ``attn`` keys are named by their side at ``resolution`` (256, the
    size every released taming VQGAN was trained at). ``dropout`` is 0 (inert at inference).

    Example: ``infer_vqgan_config(vqgan_state_dict(torch.load(p, weights_only=True)))``.
    """
    up = _levels(sd, "decoder.up.")
    n = len(up)
    if n == 0 or sorted(up) != list(range(n)):
        raise CheckpointError(f"{source}: decoder levels {sorted(up)} are not 0..n-1; truncated state dict?")
    n_blocks = {i: len({k.split(".")[4] for k in up[i] if k.split(".")[3] == "block"}) for i in up}
    if len(set(n_blocks.values())) != 1 or min(n_blocks.values()) < 2:
        raise CheckpointError(f"{source}: decoder levels hold {n_blocks} ResNet blocks; expected the same "
                              "number (num_res_blocks + 1 >= 2) at every level")
    num_res_blocks = n_blocks[0] - 1
    widths = [_shape(sd, f"decoder.up.{i}.block.0.conv2.weight", source)[0] for i in range(n)]
    if "encoder.conv_in.weight" in sd:
        ch_out, in_channels = _shape(sd, "encoder.conv_in.weight", source)[:2]
        ch = int(ch_out)
    else:
        # The decoder alone fixes only ch * ch_mult[i]; the largest common width gives integral
        # multipliers (128 and (1, 1, 2, 2, 4) for the f16 models) and the same decoder.
        ch, in_channels = math.gcd(*map(int, widths)), None
    if any(w % ch for w in widths):
        raise CheckpointError(f"{source}: decoder widths {widths} are not multiples of the encoder's {ch}")
    out_ch = _shape(sd, "decoder.conv_out.weight", source)[0]
    z_channels = _shape(sd, "decoder.conv_in.weight", source)[1]
    n_embed, embed_dim = _shape(sd, "quantize.embedding.weight", source)
    attn_levels = sorted(i for i in up if any(k.split(".")[3] == "attn" for k in up[i]))
    enc_attn = sorted(i for i, ks in _levels(sd, "encoder.down.").items() if any(".attn." in k for k in ks))
    if "encoder.conv_in.weight" in sd and enc_attn != attn_levels:
        raise CheckpointError(f"{source}: encoder attention at levels {enc_attn} but decoder at {attn_levels}; "
                              "one config cannot describe that model")
    try:
        return VQGANConfig(
            ch=ch, ch_mult=tuple(int(w) // ch for w in widths), num_res_blocks=num_res_blocks,
            attn_resolutions=tuple(resolution // 2**i for i in attn_levels), z_channels=int(z_channels),
            embed_dim=int(embed_dim), n_embed=int(n_embed), resolution=resolution,
            in_channels=int(in_channels) if in_channels is not None else int(out_ch), out_ch=int(out_ch))
    except ValueError as e:
        raise CheckpointError(f"{source}: the tensor shapes describe no valid VQGAN ({e})") from e


def read_vqgan_yaml(path: str | Path) -> VQGANConfig:
    """Architecture from a taming run's ``*-project.yaml`` (``model.params.ddconfig``, ``n_embed``,
    ``embed_dim``). Raises ``CheckpointError`` for a missing/unreadable file or another model type.

    Example: ``read_vqgan_yaml("vqgan_imagenet_f16_16384/configs/model.yaml")``.
    """
    import yaml  # only this path needs it

    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as e:
        raise CheckpointError(f"config {str(path)!r} cannot be read ({e}); give the .yaml saved with the run") from e
    except yaml.YAMLError as e:
        raise CheckpointError(f"config {str(path)!r} is not valid YAML ({str(e).splitlines()[0]})") from e
    try:
        model = doc["model"]
        params, dd = model["params"], model["params"]["ddconfig"]
    except (TypeError, KeyError) as e:
        raise CheckpointError(f"config {str(path)!r} has no model.params.ddconfig; expected a taming-transformers "
                              "VQGAN config") from e
    target = model.get("target", _SUPPORTED_TARGETS[0])
    if target not in _SUPPORTED_TARGETS:
        raise CheckpointError(f"config {str(path)!r} describes {target}; supported: {', '.join(_SUPPORTED_TARGETS)}")
    if dd.get("double_z", False):
        raise CheckpointError(f"config {str(path)!r} has double_z: true (a KL autoencoder); a VQGAN has double_z: false")
    try:
        return VQGANConfig(
            ch=int(dd["ch"]), ch_mult=tuple(dd["ch_mult"]), num_res_blocks=int(dd["num_res_blocks"]),
            attn_resolutions=tuple(dd["attn_resolutions"]), z_channels=int(dd["z_channels"]),
            embed_dim=int(params["embed_dim"]), n_embed=int(params["n_embed"]),
            resolution=int(dd["resolution"]), in_channels=int(dd["in_channels"]), out_ch=int(dd["out_ch"]),
            dropout=float(dd.get("dropout", 0.0)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"config {str(path)!r}: model.params is incomplete or invalid ({e})") from e


def _resolve(source: str | Path) -> tuple[Path, VQGANConfig | None]:
    """A file to read and, for a zoo name with bundled weights ("shapes-vqgan"), its config."""
    path = Path(source)
    if path.exists() or not isinstance(source, str):
        return path, None  # a Path is always a file; the reader reports a missing one
    from vqclip.errors import UnknownModelError
    from vqclip.zoo import get
    from vqclip.zoo.bundled import weights_file

    try:
        rec = get(str(source), family="vqgan")
    except UnknownModelError as e:
        raise CheckpointError(f"{str(source)!r} does not exist as a file and is not a known VQGAN model ({e}); "
                              "give a local checkpoint path or a zoo name") from e
    return weights_file(rec), rec.config  # missing or corrupt: an error naming the file and the recipe


def load_vqgan(path: str | Path, *, config: VQGANConfig | str | None = None, yaml_path: str | Path | None = None,
               decode_only: bool = False, device: str | torch.device = "cpu") -> VQGAN:
    """Build a ``VQGAN`` from a taming-transformers ``.ckpt`` (or a safetensors/state-dict file).

    Args:
        path: local checkpoint file, or a zoo name with bundled weights ("shapes-vqgan", whose
            config is then the zoo's). Lightning ``.ckpt`` files are read with weights_only=True.
        config: the architecture, a ``VQGANConfig`` or a zoo name (``"vqgan-f16-16384"``); default:
            the zoo's for a bundled name, else read from ``yaml_path`` if given, else inferred from
            the tensor shapes.
        decode_only: build decoder, ``post_quant_conv`` and codebook only; the encoder's tensors are
            dropped as soon as the file is read and never copied into a module.
        device: where the returned model lives.

    Returns the model in eval mode. Raises ``CheckpointError`` for unreadable files, files of
    another kind, missing or unexpected keys (named), and shape mismatches (named).

    Example: ``model = load_vqgan("last.ckpt", yaml_path="model.yaml", decode_only=True)``.
    """
    if config is not None and yaml_path is not None:
        raise CheckpointError("give config= or yaml_path=, not both")
    if isinstance(config, str):
        config = get(config, family="vqgan").config  # UnknownModelError lists the known names
    path, zoo_config = _resolve(path)
    if config is None and yaml_path is None:
        config = zoo_config
    sd = vqgan_state_dict(_read_checkpoint(path), source=str(path))
    if decode_only:
        for k in [k for k in sd if k.startswith(_ENCODER_PREFIXES)]:
            del sd[k]  # release the encoder's tensors before anything is built
    if config is None:
        config = read_vqgan_yaml(yaml_path) if yaml_path is not None else infer_vqgan_config(sd, source=str(path))
    with torch.device("meta"):
        # Parameters without storage: the checkpoint's tensors are assigned, not copied.
        model = VQGAN(config, with_encoder=not decode_only)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_names(unexpected)}")
        raise CheckpointError(f"{path}: does not match the VQGAN config {config}: {'; '.join(parts)}; "
                              "truncated file, or another architecture? Pass the run's yaml_path=")
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if sd[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path}: shape mismatch for {len(wrong)} tensors: {_names(wrong, 4)}; "
                              "the config does not describe this checkpoint")
    model.load_state_dict({k: sd[k].float() if sd[k].is_floating_point() else sd[k] for k in expected},
                          strict=True, assign=True)
    del sd
    log.info("loaded VQGAN %s (%s) from %s", config, "decode-only" if decode_only else "full", path)
    model = model.to(device).eval()
    remember_source(model, path)
    return model
