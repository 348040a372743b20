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
import hashlib
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.errors import InvalidInputError

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL", "ModelIdentity", "Encoder", "open_encoder", "weights_digest"]

DEFAULT_MODEL = "shapes-clip"  # the bundled CLIP: every command uses it when no model is named
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


_digest_cache: dict[tuple, str] = {}
_digest_lock = threading.Lock()


def weights_digest(source: Any) -> str:
    """sha256 hex of a weights file (streamed; cached per path, size and mtime) or of a
    module's state dict (names, dtypes, shapes and bytes of every tensor, in key order)."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        with _digest_lock:
            if key in _digest_cache:
                return _digest_cache[key]
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        with _digest_lock:
            _digest_cache[key] = h.hexdigest()
        return h.hexdigest()
    import torch

    h = hashlib.sha256()
    for name, t in source.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (logit_scale) cannot be byte-viewed
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _normalise(x: np.ndarray) -> np.ndarray:
    # A zero row stays zero (norm clamped) rather than becoming NaN.
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class Encoder:
    """Image and text encoders of one CLIP model on one backend, with its metadata.

    ``encode_image`` / ``encode_text`` take the backend's numpy inputs and return
    L2-normalised float32 rows. Safe to call from several threads at once: calls into the
    backend session (which is not thread-safe) take a lock; preprocessing and the
    kernels around them run in parallel.
    """

    def __init__(self, session: Any, identity: ModelIdentity, *, image_size: int,
                 mean: Sequence[float], std: Sequence[float], default_template: str,
                 logit_scale: float, context_length: int = 77, backend: str = "torch",
                 interpolation: str = "bicubic"):
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
        self._preprocessor = None
        self._lock = threading.Lock()  # backend sessions are not thread-safe: one call at a time

    def describe(self) -> str:
        """One line: model, backend, input size."""
        extra = self.session.describe() if hasattr(self.session, "describe") else self.backend
        return f"{self.identity} on {extra}, {self.image_size}px input"

    @property
    def preprocessor(self):
        """The model's CLIP preprocessing (resize, centre crop, normalise), built on first use."""
        if self._preprocessor is None:
            from engine.preprocess import Preprocessor

            self._preprocessor = Preprocessor(self.image_size, self.mean, self.std, self.interpolation)
        return self._preprocessor

    def preprocess(self, images: list) -> np.ndarray:
        """PIL RGB images -> float32 (B, 3, S, S) normalised pixels."""
        return self.preprocessor(images)

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (B, 3, S, S) normalised pixels -> float32 (B, E) unit rows."""
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        with self._lock:
            return _normalise(self.session.encode_image(x))

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        """int64 (B, T) token ids -> float32 (B, E) unit rows."""
        x = np.ascontiguousarray(ids, dtype=np.int64)
        with self._lock:
            return _normalise(self.session.encode_text(x))

    def encode_texts(self, texts: Sequence[str], truncate: bool = False) -> np.ndarray:
        """Texts -> float32 (N, E) unit rows, tokenised and encoded in batches.

        A text longer than the context raises ``TextTooLongError`` unless ``truncate``.
        An empty list gives a (0, E)-shaped result only if E is known, so it is refused.
        """
        from engine.tokenizer import tokenize

        if not texts:
            raise InvalidInputError("no texts to encode; give at least one")
        out = []
        for i in range(0, len(texts), _TEXT_BATCH):
            ids = tokenize(list(texts[i:i + _TEXT_BATCH]), context_length=self.context_length, truncate=truncate)
            out.append(self.encode_text(ids))
        return np.concatenate(out, axis=0)


class _TorchSession:
    """A bare torch module as a session (the reference: no input checks, no copies). Tests
    use it to count calls; the jobs get ``engine.backends``' torch backend."""

    def __init__(self, module: Any, device: str = "cpu"):
        import torch

        self._torch = torch
        self.module = module.eval().to(device)
        self.device = device

    def describe(self) -> str:
        return f"torch {self.device} {str(self.module.dtype).replace('torch.', '')}"

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.device, self.module.dtype)
            return self.module.encode_image(x).float().cpu().numpy()

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            return self.module.encode_text(torch.from_numpy(ids).to(self.device)).float().cpu().numpy()


def open_encoder(model: Any = None, backend: str = "torch", *, precision: str = "fp32",
                 device: str = "cpu", export_dir: str | Path | None = None) -> Encoder:
    """An ``Encoder`` for ``model`` (a zoo name, a checkpoint path, or a ``CLIP`` module) on
    ``backend`` ("torch", "onnxruntime", "tensorrt") at ``precision``.

    ``None`` means the bundled ``shapes-clip``. Zoo records give the preprocessing mean/std
    and the default prompt; a bare file or module gets OpenAI's. The exported backends run
    the graphs in ``export_dir``, by default an export cached under ``<cache_root>/exports``
    keyed by the weights digest and made on first use (``export.export_model``; seconds for
    the bundled model, minutes for ViT-B/32). Raises ``UnknownModelError`` /
    ``CheckpointError`` for a bad model, ``UnknownBackendError`` / ``BackendUnavailableError``
    for a backend this machine cannot run.

    Example: ``enc = open_encoder("shapes-clip", "onnxruntime", precision="int8")``
    """
    from engine.backends import open_backend
    from engine.models.clip import CLIP
    from engine.zoo.registry import OPENAI_MEAN, OPENAI_STD

    record = None
    if model is None:
        model = DEFAULT_MODEL
    if isinstance(model, CLIP):
        module, name = model, "in-memory CLIP"
        digest = weights_digest(module)
    else:
        from engine.checkpoints import load_clip

        src = str(model)
        if not Path(src).exists():
            from engine.zoo import get

            record = get(src, family="clip")
            name = record.name
        else:
            name = str(Path(src).resolve())  # absolute: an index header must find it from any folder
        module = load_clip(src)
        digest = (_record_digest(record) if record is not None else weights_digest(src)) or weights_digest(module)
    module = module.eval()
    if backend in ("torch", "pytorch"):
        session = open_backend("torch", clip=module, precision=precision, device=device)
    else:
        if export_dir is not None:
            session = open_backend(backend, Path(export_dir), precision=precision, device=device)
        else:  # the cache has just checked the graphs this backend loads: no second hashing
            folder = _cached_export(module, name, digest, precision)
            session = open_backend(backend, folder, precision=precision, device=device, verify=False)
    cfg = module.config
    return Encoder(
        session, ModelIdentity(name, digest), image_size=cfg.image_size,
        mean=record.weights.mean if record and record.weights else OPENAI_MEAN,
        std=record.weights.std if record and record.weights else OPENAI_STD,
        default_template=record.default_template if record else "a photo of a {}.",
        logit_scale=float(module.logit_scale.detach().exp().clamp(max=100.0)),
        context_length=cfg.context_length, backend=f"{backend}-{precision}",
        interpolation=record.weights.interpolation if record and record.weights else "bicubic",
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
    from engine import __version__
    from engine._files import cache_root
    from engine.errors import ManifestError

    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(name).name)[:40]
    folder = cache_root() / "exports" / f"{slug}-{digest[:16]}"
    if (folder / "manifest.json").is_file():
        try:
            from engine.manifest import read_manifest, verify_sha256

            manifest = read_manifest(folder, verify=False)
            made_by = manifest.versions.get("vqclip")
            if made_by == __version__:
                for g in manifest.graphs:
                    if g.precision == precision:
                        verify_sha256(folder / g.file, g.sha256)
                return folder
            log.info("re-exporting %s: the cached export was made by vqclip %s, this is %s",
                     name, made_by, __version__)
        except ManifestError as e:
            log.warning("re-exporting %s: the cached export is damaged (%s)", name, e)
    from export import export_model  # the engine never imports export at import time

    from engine.errors import ParityError

    log.info("exporting %s to ONNX in %s (once; later runs reuse it)", name, folder)
    with _quiet_exporter():
        try:
            export_model(module, folder, ["fp32", "int8"], force=True, name=Path(name).name)
        except ParityError as e:  # int8 outside its bound for this model: keep the exact graphs
            log.warning("int8 export of %s failed its parity check (%s); exporting fp32 only", name, e)
            export_model(module, folder, ["fp32"], force=True, name=Path(name).name)
    return folder


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's known, harmless chatter while a job exports on the user's behalf:
    torch.onnx's "torchvision is not installed" warnings, its FutureWarnings, and ONNX
    Runtime's quantiser advice, which it logs on the root logger. Errors still raise, and
    the export's own parity figures are in its manifest."""
    torch_onnx = logging.getLogger("torch.onnx")
    root = logging.getLogger()
    level, drop = torch_onnx.level, _DropRecords()
    torch_onnx.setLevel(logging.ERROR)
    root.addFilter(drop)  # applies to records logged on the root logger itself only
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        root.removeFilter(drop)
        torch_onnx.setLevel(level)


def _record_digest(record: Any) -> str | None:
    w = getattr(record, "weights", None)
    if w is None:
        return None
    if w.sha256:
        return w.sha256
    p = Path(w.path)
    if not p.is_absolute():
        p = Path(__file__).parent / "zoo" / "weights" / p
    return weights_digest(p) if p.is_file() else None
