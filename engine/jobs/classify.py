"""Zero-shot image classification: labels -> prompt embeddings -> ranked labels per image.

Each label is put into every template, the prompts are encoded, each embedding is
L2-normalised, averaged per label and normalised again (OpenAI's ensembling). The label
embeddings are cached on disk, keyed by the model's weights digest, the backend, the
templates and the labels, so a second run with the same labels encodes no text.
Probabilities are ``softmax(logit_scale * cos)`` over the labels, as CLIP was trained;
the logits themselves (``logit_scale * cos``) are kept beside them.

Example::

    clf = ZeroShotClassifier(open_encoder(), ["a red circle", "a blue square"])
    [res] = clf.classify_paths(["circle.png"], top_k=2)
    res.labels[0].label, res.labels[0].prob   # ("a red circle", 0.97)
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import numbers
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vqclip._files import atomic_write_bytes, cache_root
from vqclip._validate import check_k
from vqclip.decode import Timings, decode_batches, read_and_decode
from vqclip.encoder import Encoder
from vqclip.errors import InvalidInputError
from vqclip.jobs.templates import format_prompts, resolve_templates

log = logging.getLogger(__name__)

__all__ = ["Prediction", "ImageResult", "ZeroShotClassifier", "label_embeddings", "check_labels", "check_threshold"]

_CACHE_VERSION = 2  # bump when the cached file's layout or the averaging rule changes


@dataclass(frozen=True)
class Prediction:
    label: str
    prob: float  # softmax probability over all labels, in [0, 1]
    logit: float | None = None  # logit_scale * cosine, the softmax's input; None when not given to rank()


@dataclass
class ImageResult:
    """One image's ranked labels (best first), or the reason it could not be read."""

    image: str
    labels: list[Prediction] = field(default_factory=list)
    error: str | None = None

    def to_dict(self, logits: bool = False) -> dict:
        """``{"image", "labels": [{"label", "prob"}]}``; with ``logits``, "logit" in place of "prob"."""
        key = "logit" if logits else "prob"
        d: dict = {"image": self.image, "labels": [{"label": p.label, key: getattr(p, key)} for p in self.labels]}
        if self.error is not None:
            d["error"] = self.error
        return d


def check_labels(labels: Sequence[str]) -> list[str]:
    """Stripped labels; ``InvalidInputError`` for none, a blank one, or a repeated one."""
    if not labels:
        raise InvalidInputError("no labels were given; give at least one label to classify into")
    out = [str(label).strip() for label in labels]
    blank = [i for i, label in enumerate(out) if not label]
    if blank:
        raise InvalidInputError(f"label #{blank[0] + 1} is blank; every label needs some text")
    seen: set[str] = set()
    for label in out:
        if label in seen:
            raise InvalidInputError(f"label {label!r} is given twice; give each label once")
        seen.add(label)
    return out


def check_threshold(threshold: float) -> float:
    """``threshold`` as a probability in [0, 1]; ``InvalidInputError`` otherwise (nan included)."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"threshold must be a probability from 0 to 1, got {threshold!r}")
    return float(threshold)


def _cache_key(encoder: Encoder, labels: list[str], templates: list[str]) -> str:
    spec = {"v": _CACHE_VERSION, "model": encoder.identity.digest, "backend": encoder.backend,
            "templates": templates, "labels": labels}
    return hashlib.sha256(json.dumps(spec, ensure_ascii=False).encode("utf-8")).hexdigest()


def label_embeddings(encoder: Encoder, labels: Sequence[str], templates: Sequence[str],
                     cache_dir: str | Path | None = None, use_cache: bool = True,
                     truncate: bool = False) -> tuple[np.ndarray, bool]:
    """float32 (L, E) unit rows, one per label, and whether they came from the cache.

    A prompt longer than the model's context raises ``TextTooLongError`` unless
    ``truncate`` (then it is cut). Not part of the cache key: without ``truncate`` such
    labels never reach the cache, so both give the same rows for the labels that do.

    ``cache_dir`` defaults to ``<cache_root>/labels``. Each cache file holds its key and the
    sha256 of its rows; one that does not verify (unreadable, another key, other bytes) is
    ignored with a warning and rewritten; writes are atomic.
    """
    labels, templates = list(labels), list(templates)
    key = _cache_key(encoder, labels, templates)
    path = Path(cache_dir) if cache_dir is not None else cache_root() / "labels"
    path = path / f"{key[:40]}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                emb, stored_key, digest = f["emb"], str(f["key"]), str(f["sha256"])
            if stored_key != key:
                raise ValueError("it was written for other labels, templates or model")
            if digest != hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest():
                raise ValueError("its rows do not match their recorded sha256 (changed on disk)")
            if emb.dtype != np.float32 or emb.shape[:1] != (len(labels),) or emb.ndim != 2:
                raise ValueError(f"its rows have shape {emb.shape} {emb.dtype}, not ({len(labels)}, E) float32")
            log.info("label embeddings from cache %s", path)
            return emb, True
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # BadZipFile: a member's CRC fails
            log.warning("recomputing label cache %s: it does not verify (%s)", path, e)
    prompts = format_prompts(labels, templates)
    emb = encoder.encode_texts(prompts, truncate=truncate)  # (L*T, E), unit rows
    emb = emb.reshape(len(labels), len(templates), -1).mean(axis=1)  # (L, E)
    emb = (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    if use_cache:
        buf = io.BytesIO()
        np.savez(buf, emb=emb, key=np.array(key), sha256=np.array(hashlib.sha256(emb.tobytes()).hexdigest()))
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError as e:  # a read-only cache must not stop classification
            log.warning("could not write label cache %s (%s)", path, e)
    return emb, False


class ZeroShotClassifier:
    """Classifies images into a fixed set of labels with one encoder.

    ``templates``: ``None``/"default", "single", "ensemble", "short", a file path, or a
    list of templates (see ``vqclip.jobs.templates``). The label embeddings are computed (or
    read from the cache) once, here. ``text_from_cache`` tells which happened. ``truncate``
    cuts prompts longer than the model's context instead of raising ``TextTooLongError``.
    """

    def __init__(self, encoder: Encoder, labels: Sequence[str], templates: str | Sequence[str] | None = None,
                 cache_dir: str | Path | None = None, use_cache: bool = True, truncate: bool = False):
        self.encoder = encoder
        self.labels = check_labels(labels)
        self.templates = resolve_templates(templates, encoder.default_template)
        self.text_embeddings, self.text_from_cache = label_embeddings(
            encoder, self.labels, self.templates, cache_dir, use_cache, truncate)

    def logits(self, image_embeddings: np.ndarray) -> np.ndarray:
        """float32 (B, E) unit rows -> float32 (B, L) logits, ``logit_scale * cosine``."""
        return (self.encoder.logit_scale * (image_embeddings @ self.text_embeddings.T)).astype(np.float32)

    def probabilities(self, image_embeddings: np.ndarray) -> np.ndarray:
        """float32 (B, E) unit rows -> float32 (B, L) probabilities (rows sum to 1)."""
        return _softmax(self.logits(image_embeddings))

    def rank(self, probs: np.ndarray, top_k: int, threshold: float = 0.0,
             logits: np.ndarray | None = None) -> list[list[Prediction]]:
        """(B, L) probabilities -> per row the ``top_k`` labels with probability >= ``threshold``,
        best first (ties: the earlier label); a row may keep none. ``logits`` (B, L), if given,
        fill each ``Prediction.logit``."""
        k = min(top_k, len(self.labels))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the earlier label first
        return [[Prediction(self.labels[j], float(probs[i, j]), None if logits is None else float(logits[i, j]))
                 for j in idx if probs[i, j] >= threshold] for i, idx in enumerate(order)]

    def classify_pixels(self, pixels: np.ndarray, top_k: int = 5, threshold: float = 0.0) -> list[list[Prediction]]:
        """float32 (B, 3, S, S) preprocessed images -> per image the top-k labels, best first,
        with probability and logit.

        ``top_k`` larger than the number of labels gives all labels; ``top_k < 1`` raises.
        ``threshold`` (a probability in [0, 1]) drops the labels below it, possibly all of them.
        """
        check_k(top_k, "top-k")
        check_threshold(threshold)
        logits = self.logits(self.encoder.encode_image(pixels))  # (B, L)
        return self.rank(_softmax(logits), top_k, threshold, logits)

    def classify_paths(self, paths: Sequence[str], top_k: int = 5, batch_size: int = 32,
                       workers: int | None = None, timings: Timings | None = None,
                       threshold: float = 0.0) -> list[ImageResult]:
        """Classify image files, in order. A file that cannot be read or decoded gets an
        ``ImageResult`` with ``error`` set and no labels; the others are still classified.
        ``top_k`` and ``threshold`` as for ``classify_pixels``."""
        check_k(top_k, "top-k")
        check_threshold(threshold)
        results: dict[int, ImageResult] = {}
        timings = timings if timings is not None else Timings()
        for idx, _, px, bad in decode_batches(list(enumerate(paths)), lambda it: read_and_decode(it[1]),
                                              self.encoder.preprocess, batch_size, workers, timings):
            for (i, p), reason in bad:
                results[i] = ImageResult(str(p), error=reason)
            if px is not None:
                for (i, p), preds in zip(idx, self.classify_pixels(px, top_k, threshold)):
                    results[i] = ImageResult(str(p), preds)
        return [results[i] for i in range(len(paths))]


def _softmax(logits: np.ndarray) -> np.ndarray:
    """float32 (B, L) logits -> float32 (B, L) probabilities, rows summing to 1."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))  # shifted: exp never overflows
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
