"""One CLIP model ready for the runtime jobs: encoders on a backend plus what the jobs
need to know about the model (its identity, preprocessing, default prompt, temperature).

The jobs (classify, index, search) talk to an ``Encoder`` and never to a backend or a
torch module directly, so every backend serves every job the same way.

Example::

    enc = open_encoder("shapes-clip")                     # zoo name, file path or CLIP module
    img = enc.encode_image(enc.preprocess([pil_image]))   # (1, E) float32, unit rows
    txt = enc.encode_texts(["a red circle"])              # (1, E) float32, unit rows
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vqclip.constants import DEFAULT_CLIP, OPENAI_MEAN, OPENAI_STD
from vqclip.errors import InvalidInputError, UnsupportedOperationError, VqclipError

log = logging.getLogger(__name__)

__all__ = ["ModelIdentity", "Encoder", "open_encoder"]

_TEXT_BATCH = 256  # prompts per text-encoder call: bounds memory for the 80-template ensemble


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights produced an embedding: a readable name and a digest of the weights.

    Two identities are the same model when their digests match; the name is for people.
    """

    name: str  # zoo name or the file path as given
    digest: str  # sha256 hex of the weights (file bytes, or the tensors of an in-memory module)

    def __str__(self) -> str:
        return f"{self.name} (weights sha256 {self.digest[:12]})"

    def to_dict(self) -> dict:
        return {"name": self.name, "digest": self.digest}


def _normalise(x: np.ndarray) -> np.ndarray:
    # A zero row stays zero (norm clamped) rather than becoming NaN.
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class Encoder:
    """Image and text encoders of one CLIP model on one backend, with its metadata.

    ``encode_image`` / ``encode_text`` take the backend's numpy inputs and return
    L2-normalised float32 rows. Safe to call from several threads at once, as its backend
    is (``vqclip.backends.Backend``'s contract); calls are not serialised here, so
    concurrent requests overlap where the backend allows it.
    """

    def __init__(self, session: Any, identity: ModelIdentity, *, image_size: int,
                 mean: Sequence[float], std: Sequence[float], default_template: str,
                 logit_scale: float, context_length: int = 77, backend: str = "torch",
                 interpolation: str = "bicubic", architecture: str | None = None, embed_dim: int | None = None,
                 towers: str = "both", config: dict | None = None, resize_mode: str = "shortest",
                 fill: int = 0):
        self.session = session  # has encode_image(np) / encode_text(np) -> np
        self.identity = identity
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.default_template = default_template
        self.logit_scale = float(logit_scale)  # exp(learned log-temperature), e.g. 100
        self.context_length = int(context_length)
        self.backend = backend
        self.interpolation = interpolation  # the resize filter the model was trained with
        self.architecture = architecture  # zoo name given for weights that do not state it (index headers keep it)
        self.embed_dim = embed_dim  # E, when the model's config is known
        self.towers = towers  # "both", or the one tower of a single-tower checkpoint
        self.config = config  # the architecture as CLIPConfig.to_dict(), when known
        self.resize_mode, self.fill = resize_mode, fill  # how an image becomes S x S (vqclip.preprocess)
        self._preprocessor = None

    def describe(self) -> str:
        """One line: model, backend, input size."""
        extra = self.session.describe() if hasattr(self.session, "describe") else self.backend
        return f"{self.identity} on {extra}, {self.image_size}px input"

    @property
    def preprocessor(self):
        """The model's CLIP preprocessing (resize, centre crop, normalise), built on first use."""
        if self._preprocessor is None:
            from vqclip.preprocess import Preprocessor

            self._preprocessor = Preprocessor(self.image_size, self.mean, self.std, self.interpolation,
                                              resize_mode=self.resize_mode, fill=self.fill)
        return self._preprocessor

    def preprocess(self, images: list) -> np.ndarray:
        """PIL RGB images -> float32 (B, 3, S, S) normalised pixels."""
        return self.preprocessor(images)

    def _need(self, tower: str) -> None:
        if self.towers not in ("both", tower):
            raise UnsupportedOperationError(
                f"{self.identity.name} has no {tower} tower (a {self.towers}-only checkpoint): it can "
                f"{'search by image and index images' if self.towers == 'image' else 'encode texts'} only; "
                "give a model with both towers for this")

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (B, 3, S, S) normalised pixels -> float32 (B, E) unit rows."""
        self._need("image")
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        return _normalise(self.session.encode_image(x))

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        """int64 (B, T) token ids -> float32 (B, E) unit rows."""
        self._need("text")
        x = np.ascontiguousarray(ids, dtype=np.int64)
        return _normalise(self.session.encode_text(x))

    def encode_texts(self, texts: Sequence[str], truncate: bool = False) -> np.ndarray:
        """Texts -> float32 (N, E) unit rows, tokenised and encoded in batches.

        A text longer than the context raises ``TextTooLongError`` unless ``truncate``.
        An empty list gives a (0, E)-shaped result only if E is known, so it is refused.
        """
        from vqclip.tokenizer import tokenize

        if not texts:
            raise InvalidInputError("no texts to encode; give at least one")
        self._need("text")
        out = []
        for i in range(0, len(texts), _TEXT_BATCH):
            ids = tokenize(list(texts[i:i + _TEXT_BATCH]), context_length=self.context_length, truncate=truncate)
            out.append(self.encode_text(ids))
        return np.concatenate(out, axis=0)


def open_encoder(model: Any = None, backend: str | None = "torch", *, precision: str | None = "fp32",
                 device: str | None = None, export_dir: str | Path | None = None, config: Any = None,
                 digest: str | None = None) -> Encoder:
    """An ``Encoder`` for ``model`` (a zoo name, a checkpoint file or folder, or a ``CLIP``
    module) on ``backend`` ("torch", "onnxruntime", "tensorrt", any case) at ``precision``.
    ``config`` names the architecture of a weights file that does not state it
    (``load_clip``'s ``config``). ``device``: None is the backend's own (cuda for tensorrt,
    else cpu).

    ``None`` means the bundled ``shapes-clip``. The model's identity is its weights digest
    (``vqclip.checkpoints.weights_digest``), the same for a zoo name, its file and a module
    loaded from either; a zoo record with those weights gives the preprocessing mean/std
    and the default prompt, else the checkpoint's own config file, else OpenAI's. The
    exported backends run the graphs in ``export_dir``, by default an export cached under
    ``<cache_root>/exports`` keyed by the digest and made on first use
    (``vqclip.export.export_model``; seconds for the bundled model, minutes for ViT-B/32).

    A cached export is opened without loading the model or importing torch: the fast
    start of one-shot commands. ``backend=None`` picks ONNX Runtime (int8 where the export
    has it and its self-test passes on this CPU, else fp32) when such an export exists,
    else torch fp32, and logs which at INFO. ``digest``: the weights digest when the caller
    already knows it (an index header), so that a cached export opens without reading
    the weights at all.

    Raises ``UnknownModelError`` / ``CheckpointError`` for a bad model,
    ``UnknownBackendError`` / ``BackendUnavailableError`` for a backend this machine
    cannot run.

    Example: ``enc = open_encoder("shapes-clip", "onnxruntime", precision="int8")``
    """
    from vqclip.backends import open_backend, resolve_backend_name

    auto = backend is None
    backend = None if auto else resolve_backend_name(backend)  # an unknown name fails before any model loads
    model = DEFAULT_CLIP if model is None else model
    device = device or ("cuda" if backend == "tensorrt" else "cpu")
    module_given = _is_clip_module(model)
    if not module_given and export_dir is None and backend in (None, "onnxruntime") and device == "cpu":
        enc = _open_cached(model, precision, config, digest, auto)
        if enc is not None:
            return enc
    if auto:
        backend, precision = "torch", precision or "fp32"
        log.info("%s has no cached export yet: running on torch fp32 (`--backend onnxruntime` exports it once)",
                 model)
    precision = precision or "fp32"
    from vqclip.checkpoints import load_clip, weights_digest
    from vqclip.zoo import record_with_weights

    if module_given:
        module = model
    else:
        module = load_clip(_source(model), config=config)
    digest = weights_digest(module)
    record = record_with_weights(digest, "clip")
    name = _display_name(model, record, module_given)
    module = module.eval()
    if backend == "torch":
        session = open_backend("torch", clip=module, precision=precision, device=device)
    elif export_dir is not None:
        session = open_backend(backend, Path(export_dir), precision=precision, device=device)
    else:  # the cache has just checked the graphs this backend loads: no second hashing
        folder = _cached_export(module, name, digest, precision)
        session = open_backend(backend, folder, precision=precision, device=device, verify=False)
    stated = module.runtime_info()
    return _encoder(session, name, digest, record, module.config.to_dict(), stated, f"{backend}-{precision}",
                    config)


def _is_clip_module(model: Any) -> bool:
    """Whether ``model`` is a loaded CLIP module; without torch imported it cannot be one."""
    clip_module = sys.modules.get("vqclip.models.clip")
    return clip_module is not None and isinstance(model, clip_module.CLIP)


def _display_name(model: Any, record: Any, module_given: bool) -> str:
    if record is not None:
        return record.name
    if module_given:
        return "in-memory CLIP"
    return str(Path(model).expanduser().resolve())  # absolute: an index header must find it from any folder


def _encoder(session: Any, name: str, digest: str, record: Any, cfg: dict, stated: dict, backend: str,
             config: Any) -> Encoder:
    """An Encoder from what is known about the model: its zoo record wins, then what its
    checkpoint stated (``stated``: mean, std, interpolation, logit_scale), then OpenAI's."""
    weights = record.weights if record is not None else None
    return Encoder(
        session, ModelIdentity(name, digest), image_size=cfg["image_size"],
        mean=weights.mean if weights else stated.get("mean", OPENAI_MEAN),
        std=weights.std if weights else stated.get("std", OPENAI_STD),
        default_template=record.default_template if record else "a photo of a {}.",
        logit_scale=stated["logit_scale"], context_length=cfg["context_length"], backend=backend,
        interpolation=weights.interpolation if weights else stated.get("interpolation", "bicubic"),
        architecture=config if isinstance(config, str) else None, embed_dim=cfg["embed_dim"],
        towers=cfg.get("towers", "both"), config=cfg, resize_mode=stated.get("resize_mode", "shortest"),
        fill=stated.get("fill", 0),
    )


def _source(model: Any) -> Any:
    """A model argument as ``load_clip`` / ``weights_digest`` take it: an existing path (``~``
    expanded), else the name as given."""
    path = Path(str(model)).expanduser()
    return path if path.exists() else str(model)


def _given_config(config: Any) -> Any:
    """The ``CLIPConfig`` a caller named (a zoo name or a config), or None; torch-free."""
    if config is None or not isinstance(config, str):
        return config
    from vqclip.zoo import get

    return get(config, family="clip").config


def _architecture_key(config: Any) -> str:
    """The cache's name for an architecture a caller gave: a digest of its fields, so the
    same weights built as two architectures never share an export."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


def _open_cached(model: Any, precision: str | None, config: Any, digest: str | None, auto: bool) -> Encoder | None:
    """The encoder on ONNX Runtime from a cached export of ``model``, opened without torch;
    None when there is no usable one (no export yet, made by another vqclip, of another
    architecture, without the precision asked for, or one that predates the manifest's
    runtime record). With no precision asked for, int8 is self-tested now and fp32 taken
    when this CPU fails it."""
    from vqclip.backends import open_backend
    from vqclip.errors import BackendUnavailableError, ManifestError

    try:
        from vqclip.checkpoints.identity import weights_digest

        given = _given_config(config)
        digest = digest or weights_digest(_source(model))
    except VqclipError:
        return None  # the slow path names what is wrong with the model
    found = _find_cached_export(digest, given)
    if found is None:
        return None
    folder, manifest = found
    have = manifest.precisions()
    wanted = [precision] if precision else [p for p in ("int8", "fp32") if p in have]
    for p in wanted:
        if p not in have:
            return None
        try:
            _verify_graphs(folder, manifest, p)
            session = open_backend("onnxruntime", folder, precision=p, verify=False)
            if p == "int8" and not precision:
                session.load()  # the int8 self-test runs as a session opens: now, while fp32 can still be chosen
        except BackendUnavailableError as e:
            if precision:
                raise
            log.info("cached %s export not used on this CPU (%s)", p, e)
            continue
        except ManifestError as e:
            log.warning("the cached export in %s is damaged (%s); it will be made again", folder, e)
            return None
        from vqclip.zoo import record_with_weights

        record = record_with_weights(digest, "clip")
        name = _display_name(model, record, False)
        log.info("running %s on onnxruntime %s from the cached export %s (torch not loaded)", name, p, folder)
        return _encoder(session, name, digest, record, manifest.config, manifest.runtime, f"onnxruntime-{p}",
                        config)
    return None


def _find_cached_export(digest: str, given: Any = None) -> tuple[Path, Any] | None:
    """The cache folder holding an export of these weights by this vqclip, with its manifest:
    one built as the ``given`` architecture (whoever stated it), or, with none given, one
    built as the checkpoint itself states."""
    from vqclip import __version__
    from vqclip._files import cache_root
    from vqclip.errors import ManifestError
    from vqclip.manifest import read_manifest
    from vqclip.models.configs import CLIPConfig

    for folder in sorted((cache_root() / "exports").glob(f"*-{digest[:16]}*")):
        try:
            manifest = read_manifest(folder, verify=False)
            built = CLIPConfig.from_dict(manifest.config)
        except (ManifestError, TypeError, ValueError):
            continue
        stated = manifest.runtime.get("architecture") == "stated"
        if (manifest.versions.get("vqclip") == __version__ and manifest.source.get("sha256") == digest
                and manifest.family == "clip" and "logit_scale" in manifest.runtime
                and (built == given if given is not None else stated)):
            return folder, manifest
    return None


def _verify_graphs(folder: Path, manifest: Any, precision: str) -> None:
    """The sha256 of the graphs (and self-tests) a backend at ``precision`` will load."""
    from vqclip.manifest import verify_sha256

    for g in manifest.graphs:
        if g.precision == precision:
            verify_sha256(folder / g.file, g.sha256)
            if g.selftest:
                verify_sha256(folder / g.selftest["file"], g.selftest["sha256"])


def _cached_export(module: Any, name: str, digest: str, precision: str) -> Path:
    """The ONNX export of these weights in the cache, made now if missing or damaged.

    The graphs at ``precision`` (the ones a backend will load) are checked against their
    sha256 here, so a damaged cache is remade rather than served, and the caller opens
    the backend without hashing them again (hundreds of MB for ViT-B/32, per process).

    Keyed by the weights digest, so two models never share a folder and new weights get a
    new export; an export made by another vqclip version is made again (the graph form may
    have changed); ``export_model`` writes into a temp folder and renames, so a killed export
    leaves no half folder to trip over.
    """
    from vqclip import __version__
    from vqclip._files import cache_root
    from vqclip.errors import ManifestError

    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(name).name)[:40]
    arch = f"-{_architecture_key(module.config)}" if getattr(module, "architecture_given", False) else ""
    folder = cache_root() / "exports" / f"{slug}-{digest[:16]}{arch}"
    if folder.exists() and not (folder / "manifest.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)  # a leftover in vqclip's own cache, never a user's folder
    if (folder / "manifest.json").is_file():
        try:
            from vqclip.manifest import read_manifest

            manifest = read_manifest(folder, verify=False)
            made_by = manifest.versions.get("vqclip")
            if made_by == __version__ and manifest.config == module.config.to_dict():
                _verify_graphs(folder, manifest, precision)
                return folder
            log.info("re-exporting %s: the cached export was made by vqclip %s, this is %s",
                     name, made_by, __version__)
        except ManifestError as e:
            log.warning("re-exporting %s: the cached export is damaged (%s)", name, e)
            shutil.rmtree(folder, ignore_errors=True)  # vqclip's own cache: export's --force would keep it
    from vqclip.errors import ParityError
    from vqclip.export import export_model  # the engine never imports export at import time

    log.info("exporting %s to ONNX in %s (once; later runs reuse it)", name, folder)
    with _quiet_exporter():
        try:
            export_model(module, folder, ["fp32", "int8"], force=True, name=Path(name).name)
        except ParityError as e:  # int8 outside its bound for this model: keep the exact graphs
            log.warning("int8 export of %s failed its parity check (%s); exporting fp32 only", name, e)
            export_model(module, folder, ["fp32"], force=True, name=Path(name).name)
    return folder


# The loggers whose chatter an export on the user's behalf hides: the exporter's own
# (torch.onnx and its helpers) and ONNX Runtime's quantiser, nothing else in the process.
_EXPORTER_LOGGERS = ("torch.onnx", "torch._dynamo", "onnxscript", "onnx_ir", "onnxruntime")


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's known, harmless chatter while a job exports on the user's behalf:
    torch.onnx's "torchvision is not installed" warnings and FutureWarnings, and its
    helpers' progress logs. Only those loggers are raised to ERROR for the duration;
    records of every other logger pass as before. Errors still raise, and the export's
    own parity figures are in its manifest."""
    loggers = [logging.getLogger(n) for n in _EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
