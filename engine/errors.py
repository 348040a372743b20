"""The exceptions a user of vqclip can cause, one type per kind of mistake.

Every message says what was given, what was expected, and what to do. The CLI prints
``str(exc)`` on one line and exits non-zero; the server answers 4xx with it.
"""
from __future__ import annotations

__all__ = [
    "VqclipError",
    "UnknownModelError",
    "CheckpointError",
    "ImageDecodeError",
    "TextTooLongError",
    "InputShapeError",
    "BackendUnavailableError",
    "InvalidInputError",
    "SearchIndexError",
    "IndexMismatchError",
]


class VqclipError(Exception):
    """Base class: every error a user can cause derives from this."""


class UnknownModelError(VqclipError, KeyError):
    """A model name that the zoo does not know."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(VqclipError):
    """A checkpoint that cannot be loaded: wrong kind, truncated, unsafe, missing or extra keys."""


class ImageDecodeError(VqclipError):
    """An image that cannot be decoded: unreadable, truncated, zero-sized or too large."""


class TextTooLongError(VqclipError):
    """A text longer than the model's context length with truncation off."""


class InputShapeError(VqclipError, ValueError):
    """An array or tensor with the wrong shape, dtype or value range for the call."""


class BackendUnavailableError(VqclipError):
    """A backend that cannot load on this machine (no GPU, package missing)."""


class InvalidInputError(VqclipError, ValueError):
    """A value given by the user that is empty or out of range: no labels, k < 1, a blank
    query, a text file (labels, templates) that is not UTF-8 or not in the expected form."""


class SearchIndexError(VqclipError):
    """An index folder that is missing, unreadable, locked by a writer, or not an index."""


class IndexMismatchError(SearchIndexError):
    """An index used with another model than the one that built it (the message names both)."""
