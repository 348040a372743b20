"""The exceptions a user of vqclip can cause, one type per kind of mistake.

Every message says what was given, what was expected, and what to do. The CLI prints
``exc.cli`` (the same message naming its flags, where the raiser gave one) or ``str(exc)``
on one line and exits non-zero; the server answers 4xx with ``str(exc)``.

Example: ``raise TextTooLongError("... or pass truncate=True", cli="... or pass --truncate")``
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
    "UnknownBackendError",
    "UnsupportedOperationError",
    "OutputExistsError",
    "ParityError",
    "ManifestError",
    "InvalidInputError",
    "SearchIndexError",
    "IndexMismatchError",
    "OutputPathError",
    "DeviceMemoryError",
    "ServiceUnreachableError",
]


class VqclipError(Exception):
    """Base class: every error a user can cause derives from this.

    ``cli``: the message worded for the command line, naming flags (``--truncate``) where
    ``str(exc)`` names Python arguments (``truncate=True``); None when one wording fits both.
    """

    def __init__(self, *args: object, cli: str | None = None):
        super().__init__(*args)
        self.cli = cli

    def cli_message(self) -> str:
        """What ``vqclip`` prints for this error: the CLI wording if given, else ``str(self)``."""
        return self.cli if self.cli is not None else str(self)


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


class UnknownBackendError(VqclipError, KeyError):
    """A backend name that vqclip does not know (the message lists the known ones)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnsupportedOperationError(VqclipError, RuntimeError):
    """A call the loaded model was built without (e.g. ``encode`` on a decode-only VQGAN)."""


class OutputExistsError(VqclipError, FileExistsError):
    """An output folder that already exists and would be replaced without ``force``."""


class ParityError(VqclipError):
    """An exported graph whose outputs differ from the PyTorch module's beyond tolerance."""


class ManifestError(VqclipError):
    """An export folder whose manifest is missing, unreadable, or disagrees with its graphs."""


class InvalidInputError(VqclipError, ValueError):
    """A value given by the user that is empty or out of range: no labels, k < 1, a blank
    query, a text file (labels, templates) that is not UTF-8 or not in the expected form."""


class SearchIndexError(VqclipError):
    """An index folder that is missing, unreadable, locked by a writer, or not an index."""


class IndexMismatchError(SearchIndexError):
    """An index used with another model than the one that built it (the message names both)."""


class OutputPathError(VqclipError):
    """An output folder or file that cannot be created or written (permissions, a file in the way)."""


class DeviceMemoryError(VqclipError, MemoryError):
    """A job that does not fit in the device's memory even in the smallest pieces it can run in."""


class ServiceUnreachableError(VqclipError):
    """A cluster or database given by address (a Ray cluster, a Milvus server) that does not answer."""
