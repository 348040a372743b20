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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vqclip.constants import DEFAULT_CLIP, OPENAI_MEAN, OPENAI_STD
from vqclip.errors import InvalidInputError

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
                 interpolation: str = "bicubic", architecture: str | None = None):
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

            self._preprocessor = Preprocessor(self.image_size, self.mean, self.std, self.interpolation)
        return self._preprocessor

    def preprocess(self, images: list) -> np.ndarray:
        """PIL RGB images -> float32 (B, 3, S, S) normalised pixels."""
        return self.preprocessor(images)

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (B, 3, S, S) normalised pixels -> float32 (B, E) unit rows."""
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        return _normalise(self.session.encode_image(x))

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        """int64 (B, T) token ids -> float32 (B, E) unit rows."""
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
        out = []
        for i in range(0, len(texts), _TEXT_BATCH):
            ids = tokenize(list(texts[i:i + _TEXT_BATCH]), context_length=self.context_length, truncate=truncate)
            out.append(self.encode_text(ids))
        return np.concatenate(out, axis=0)


def open_encoder(model: Any = None, backend: str = "torch", *, precision: str = "fp32",
                 device: str = "cpu", export_dir: str | Path | None = None, config: Any = None) -> Encoder:
    """An ``Encoder`` for ``model`` (a zoo name, a checkpoint file or folder, or a ``CLIP``
    module) on ``backend`` ("torch", "onnxruntime", "tensorrt", any case) at ``precision``.
    ``config`` names the architecture of a weights file that does not state it
    (``load_clip``'s ``config``).

    ``None`` means the bundled ``shapes-clip``. The model's identity is its weights digest
    (``vqclip.checkpoints.weights_digest``), the same for a zoo name, its file and a module
    loaded from either; a zoo record with those weights gives the preprocessing mean/std
    and the default prompt, else the checkpoint's own config file, else OpenAI's. The exported backends run the
    graphs in ``export_dir``, by default an export cached under ``<cache_root>/exports``
    keyed by the digest and made on first use (``vqclip.export.export_model``; seconds for
    the bundled model, minutes for ViT-B/32). Raises ``UnknownModelError`` /
    ``CheckpointError`` for a bad model, ``UnknownBackendError`` / ``BackendUnavailableError``
    for a backend this machine cannot run.

    Example: ``enc = open_encoder("shapes-clip", "onnxruntime", precision="int8")``
    """
    from vqclip.backends import open_backend, resolve_backend_name
    from vqclip.checkpoints import load_clip, weights_digest
    from vqclip.models.clip import CLIP
    from vqclip.zoo import record_with_weights

    backend = resolve_backend_name(backend)  # an unknown name fails before any model loads
    model = DEFAULT_CLIP if model is None else model
    if isinstance(model, CLIP):
        module = model
    else:
        module = load_clip(Path(model).expanduser() if Path(str(model)).expanduser().exists() else str(model),
                           config=config)
    digest = weights_digest(module)
    record = record_with_weights(digest, "clip")
    if record is not None:
        name = record.name
    elif isinstance(model, CLIP):
        name = "in-memory CLIP"
    else:
        name = str(Path(model).expanduser().resolve())  # absolute: an index header must find it from any folder
    module = module.eval()
    if backend == "torch":
        session = open_backend("torch", clip=module, precision=precision, device=device)
    elif export_dir is not None:
        session = open_backend(backend, Path(export_dir), precision=precision, device=device)
    else:  # the cache has just checked the graphs this backend loads: no second hashing
        folder = _cached_export(module, name, digest, precision)
        session = open_backend(backend, folder, precision=precision, device=device, verify=False)
    cfg = module.config
    weights = record.weights if record is not None else None
    stated = getattr(module, "preprocess_cfg", None) or {}
    return Encoder(
        session, ModelIdentity(name, digest), image_size=cfg.image_size,
        mean=weights.mean if weights else stated.get("mean", OPENAI_MEAN),
        std=weights.std if weights else stated.get("std", OPENAI_STD),
        default_template=record.default_template if record else "a photo of a {}.",
        logit_scale=float(module.logit_scale.detach().exp().clamp(max=100.0)),
        context_length=cfg.context_length, backend=f"{backend}-{precision}",
        interpolation=weights.interpolation if weights else stated.get("interpolation", "bicubic"),
        architecture=config if isinstance(config, str) else None,
    )


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
    folder = cache_root() / "exports" / f"{slug}-{digest[:16]}"
    if folder.exists() and not (folder / "manifest.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)  # a leftover in vqclip's own cache, never a user's folder
    if (folder / "manifest.json").is_file():
        try:
            from vqclip.manifest import read_manifest, verify_sha256

            manifest = read_manifest(folder, verify=False)
            made_by = manifest.versions.get("vqclip")
            if made_by == __version__:
                for g in manifest.graphs:
                    if g.precision == precision:
                        verify_sha256(folder / g.file, g.sha256)
                        if g.selftest:
                            verify_sha256(folder / g.selftest["file"], g.selftest["sha256"])
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
