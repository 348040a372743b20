"""Checks of the numbers a user passes to every job (``k``, thread counts), written once."""
from __future__ import annotations

import numbers
from typing import Any

from vqclip.errors import InvalidInputError

__all__ = ["check_k", "check_count"]


def check_count(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """``value`` as an int >= 1 (None passes when ``allow_none``); else ``InvalidInputError``.

    Example: ``check_count(4, "threads")`` -> 4; ``check_count(0, "--batch-size")`` raises.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(f"{name} must be a whole number >= 1, got {value!r}")
    if value < 1:
        raise InvalidInputError(f"{name} must be at least 1, got {value}")
    return int(value)


def check_k(k: Any, name: str = "k") -> int:
    """``k`` (results per query) as an int >= 1; ``InvalidInputError`` otherwise."""
    return check_count(k, name)  # type: ignore[return-value]
