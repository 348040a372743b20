"""Who may call the API and how much: API keys, a per-key rate limit, the body-size limit.

- Keys come from a file, one per line (``name:key`` or just ``key``; blank lines and ``#``
  comments ignored), and are checked against ``Authorization: Bearer <key>`` by comparing
  SHA-256 digests with ``hmac.compare_digest`` against every key, so the time taken says
  nothing about how much of a guess was right or which key it was near.
- The rate limit is a token bucket per key (per client address when there are no keys).
- The body limit is ASGI middleware: a declared ``Content-Length`` over the limit is
  refused before anything is read, and a chunked body is counted as it streams in.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import stat
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from vqclip._files import read_regular
from vqclip.serving.config import ServerSetupError
from vqclip.serving.responses import ApiError, error_response, retry_after

log = logging.getLogger(__name__)

__all__ = ["ApiKeys", "RateLimiter", "BodyLimitMiddleware"]

_MIN_KEY_CHARS = 16  # shorter keys can be guessed; the message says how to make a good one


class ApiKeys:
    """The accepted keys, kept only as SHA-256 digests, each with a name for logs and limits."""

    def __init__(self, keys: dict[str, str]):
        self._digests = [(name, hashlib.sha256(key.encode("utf-8")).digest()) for name, key in keys.items()]

    def __len__(self) -> int:
        return len(self._digests)

    @classmethod
    def load(cls, path: str | Path) -> "ApiKeys":
        """Read a key file; ``ServerSetupError`` for an unreadable, empty or weak one."""
        path = Path(path).expanduser()
        try:
            text = read_regular(path, 1 << 20).decode("utf-8")
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as e:
            raise ServerSetupError(f"cannot read the API key file {str(path)!r} ({e}); give a UTF-8 text file") from e
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("API key file %s is readable by other users; chmod 600 it", path)
        keys: dict[str, str] = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, key = line.rpartition(":") if ":" in line else (f"key{n}", "", line)
            name, key = name.strip() or f"key{n}", key.strip()
            if len(key) < _MIN_KEY_CHARS:
                raise ServerSetupError(f"API key on line {n} of {str(path)!r} has {len(key)} characters, fewer than "
                                       f"{_MIN_KEY_CHARS}; make one with: python -c 'import secrets; "
                                       f"print(secrets.token_urlsafe(32))'")
            if name in keys:
                raise ServerSetupError(f"API key name {name!r} appears twice in {str(path)!r}; give each key its own name")
            keys[name] = key
        if not keys:
            raise ServerSetupError(f"API key file {str(path)!r} holds no keys; write one per line")
        return cls(keys)

    def identify(self, authorization: str | None) -> str:
        """The name of the key in an ``Authorization`` header; ``ApiError`` 401 otherwise."""
        challenge = {"WWW-Authenticate": 'Bearer realm="vqclip"'}
        if not authorization:
            raise ApiError(401, "an API key is required: send 'Authorization: Bearer <key>'", "unauthorized", challenge)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "the Authorization header must be 'Bearer <key>'", "unauthorized", challenge)
        digest = hashlib.sha256(token.strip().encode("utf-8")).digest()
        found = None
        for name, d in self._digests:  # no early exit: every key is compared
            if hmac.compare_digest(d, digest):
                found = name
        if found is None:
            raise ApiError(401, "the API key is not valid", "unauthorized", challenge)
        return found


class RateLimiter:
    """A token bucket per caller: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, max_callers: int = 10_000):
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, time)
        self._max_callers = max_callers  # oldest callers forgotten first: memory stays bounded
        self._lock = threading.Lock()

    def take(self, caller: str, now: float | None = None) -> None:
        """Spend one token of ``caller``; ``ApiError`` 429 with ``Retry-After`` when none is left."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise ApiError(429, f"rate limit of {self.rate:g} requests/s exceeded; retry in {wait:.1f} s",
                               "rate_limited", retry_after(wait))
            self._buckets[caller] = (tokens - 1.0, now)
            while len(self._buckets) > self._max_callers:
                self._buckets.popitem(last=False)


class BodyLimitMiddleware:
    """ASGI middleware answering 413 to request bodies over ``max_bytes``.

    A streamed body that crosses the limit raises ``ApiError`` 413 from ``receive``, so the
    app's error handlers answer it whichever parser (JSON, multipart) was reading.
    """

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is larger than the limit of {self.max_bytes:,} bytes; "
                        f"send fewer or smaller items", "body_too_large", {"Connection": "close"})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = None
            if too_big is not False:
                e = self._too_large() if too_big else ApiError(400, "the Content-Length header is not a number")
                await error_response(e.status, e.kind, str(e), e.headers)(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)
