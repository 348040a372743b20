"""Dynamic batching: concurrent requests to one model component become one backend call.

Each ``Batcher`` owns a queue and one worker thread (the backend call runs off the event
loop). The worker forms a batch as soon as it is free, with Triton's
``max_queue_delay`` semantics: it takes what is queued, and waits for more only until the
*first* queued request has waited ``max_wait_s`` or ``max_batch`` items are there (the
timer starts at the first request, not when the worker wakes). One refinement: it waits
only while more requests are on their way, i.e. announced by handlers still reading or
decoding them (``announce``); with none on the way a wait could only add latency (a lone
client would pay ``max_wait_s`` on every call). A request whose caller went away (client
disconnected, deadline passed) is dropped before it is computed, and each caller gets
exactly its own result back.

Priorities: a ``WorkGate`` counts the interactive work queued or running; background work
(generation steps, or a batcher made with ``Priority.BACKGROUND``) waits for it to reach
zero before each step, so an encode request never queues behind a generation step that
has not started yet.

Example::

    gate = WorkGate()
    texts = Batcher("text", lambda payloads: [enc.encode_text(p) for p in payloads], gate=gate)
    with texts.announce() as coming:            # at the start of the request's handler
        ids = tokenize(await read_texts(request))
        rows = await texts.submit(ids, len(ids), time.monotonic() + 30, coming)
"""
from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Priority", "WorkGate", "Batcher", "Announcement", "Overloaded", "run_concatenated"]


class Priority(enum.Enum):
    INTERACTIVE = "interactive"  # a person or a client is waiting on it: encode, classify, search
    BACKGROUND = "background"  # long jobs stepped in the gaps: generation


class Overloaded(Exception):
    """The server cannot take or finish this request now (queue full, deadline passed,
    shutting down); the HTTP layer answers 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after_s: float = 1.0, reason: str = "overloaded"):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason  # for the metrics: queue_full, deadline, shutdown


class WorkGate:
    """Counts interactive requests queued or running, so background work can yield to them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._interactive = 0

    @property
    def interactive(self) -> int:
        return self._interactive

    def add(self, n: int = 1) -> None:
        with self._cond:
            self._interactive += n

    def done(self, n: int = 1) -> None:
        with self._cond:
            self._interactive -= n
            if self._interactive <= 0:
                self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Mark interactive work done outside a batcher (e.g. a classifier's label encode)."""
        self.add()
        try:
            yield
        finally:
            self.done()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no interactive work is queued or running; False if ``timeout`` ran out.

        A background worker calls this before each step; a step already running is not
        interrupted, so interactive latency grows by at most one step.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._interactive <= 0, timeout)


@dataclass(eq=False)
class _Pending:
    payload: Any
    size: int
    deadline: float  # time.monotonic() after which nobody waits for the result
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    dropped: str | None = None  # why the caller went away (disconnected, deadline): skip it


class Announcement:
    """A request on its way to a batcher: counted as coming until it is queued or withdrawn."""

    def __init__(self, batcher: "Batcher"):
        self._batcher = batcher
        self.live = True
        batcher._arrivals(+1)

    def withdraw(self) -> None:
        """No longer coming (queued, refused, or failed before it was queued); idempotent."""
        if self.live:
            self.live = False
            self._batcher._arrivals(-1)

    def __enter__(self) -> "Announcement":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.withdraw()


def _deliver(fut: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


class Batcher:
    """One queue and one worker thread running ``run(payloads) -> results`` on batches.

    ``run`` gets the payloads of the requests in one batch, in queue order, and returns
    one result per payload (``run_concatenated`` does this for arrays of rows). A request
    of more than ``max_batch`` items forms a batch of its own. ``max_queue`` bounds the
    items waiting; past it ``submit`` raises ``Overloaded`` at once.
    """

    def __init__(self, name: str, run: Callable[[list[Any]], Sequence[Any]], *, max_batch: int = 32,
                 max_wait_s: float = 0.002, max_queue: int = 512, gate: WorkGate | None = None,
                 priority: Priority = Priority.INTERACTIVE,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_drop: Callable[[str], None] | None = None):
        self.name = name
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.priority = priority
        self._run = run
        self._gate = gate if gate is not None else WorkGate()
        self._on_batch = on_batch or (lambda n, s: None)
        self._on_drop = on_drop or (lambda reason: None)
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._queued = 0  # items in the queue
        self._coming = 0  # announced requests not yet queued
        self._closing = False
        self._seconds_per_item = 0.01  # running estimate, for Retry-After
        self._thread = threading.Thread(target=self._work, name=f"vqclip-batch-{name}", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Items waiting (not yet taken into a batch)."""
        return self._queued

    def announce(self) -> Announcement:
        """Say a request is on its way (use as a context manager around reading and decoding
        it, and pass it to ``submit``): while any is, the worker waits for it, up to ``max_wait_s``."""
        return Announcement(self)

    def _arrivals(self, n: int) -> None:
        with self._cond:
            self._coming += n
            if n < 0:
                self._cond.notify()

    def retry_after_s(self) -> float:
        """A client's fair wait before retrying: the time to work off the queue, at least 1 s."""
        return max(1.0, math.ceil(self._queued * self._seconds_per_item))

    async def submit(self, payload: Any, size: int, deadline: float, announced: Announcement | None = None) -> Any:
        """Queue ``payload`` (``size`` items) and wait for its result; ``announced`` is the
        request's ``announce()``, withdrawn here as it joins the queue.

        Raises ``Overloaded`` when the queue is full, the deadline passes (the request is
        then dropped if not yet computed) or the batcher is closing; re-raises what ``run``
        raised for its batch. Cancelling the awaiting task (a client disconnect) drops it.
        """
        loop = asyncio.get_running_loop()
        req = _Pending(payload, size, deadline, loop.create_future(), loop)
        with self._cond:
            if announced is not None and announced.live:  # under the lock: never seen as neither coming nor queued
                announced.live = False
                self._coming -= 1
            if self._closing:
                raise Overloaded("the server is shutting down; retry on another replica", 1.0, "shutdown")
            if self._queued and self._queued + size > self.max_queue:
                self._on_drop("queue_full")
                raise Overloaded(f"the {self.name} queue is full ({self._queued} items waiting, limit "
                                 f"{self.max_queue}); retry later", self.retry_after_s(), "queue_full")
            self._queue.append(req)
            self._queued += size
            if self.priority is Priority.INTERACTIVE:
                self._gate.add()
            self._cond.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(req.future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            self._drop(req, "deadline")
            raise Overloaded(f"the request was not served within its deadline ({self.name} queue: "
                             f"{self._queued} items waiting); retry later", self.retry_after_s(), "deadline") from None
        except asyncio.CancelledError:
            self._drop(req, "disconnected")
            raise

    def _drop(self, req: _Pending, reason: str) -> None:
        """Mark ``req`` as unwanted; if still queued, take it out now (freeing its room)."""
        with self._cond:
            if req.dropped or req.future.done():
                return
            req.dropped = reason
            try:
                self._queue.remove(req)
            except ValueError:
                return  # already in a batch: the worker skips and counts it (or is computing it)
            self._queued -= req.size
            self._release(req)
        self._on_drop(reason)

    def _release(self, req: _Pending) -> None:
        if self.priority is Priority.INTERACTIVE:
            self._gate.done()

    def _take_batch(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            start_by = self._queue[0].enqueued + self.max_wait_s  # the timer runs from the first request
            while self._queued < self.max_batch and self._coming > 0 and not self._closing:
                left = start_by - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Pending] = []
            n = 0
            while self._queue and (not batch or n + self._queue[0].size <= self.max_batch):
                req = self._queue.popleft()
                batch.append(req)
                n += req.size
            self._queued -= n
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            now = time.monotonic()
            live = []
            for req in batch:
                if req.dropped:
                    self._on_drop(req.dropped)
                    self._release(req)
                elif now >= req.deadline:
                    self._on_drop("deadline")
                    self._finish(req, None, Overloaded("the request's deadline passed while it was queued; "
                                                       "retry later", self.retry_after_s(), "deadline"))
                else:
                    live.append(req)
            if live:
                self._run_batch(live)

    def _run_batch(self, live: list[_Pending]) -> None:
        if self.priority is Priority.BACKGROUND:
            self._gate.wait_idle()
        items = sum(r.size for r in live)
        t = time.perf_counter()
        try:
            results = self._run([r.payload for r in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function of {self.name} returned {len(results)} results "
                                   f"for {len(live)} requests")
        except Exception as e:  # every caller of the batch hears of it; the worker lives on
            log.exception("%s batch of %d items failed", self.name, items)
            for req in live:
                self._finish(req, None, e)
            return
        seconds = time.perf_counter() - t
        self._seconds_per_item = 0.8 * self._seconds_per_item + 0.2 * seconds / items
        self._on_batch(items, seconds)
        for req, res in zip(live, results):
            self._finish(req, res, None)

    def _finish(self, req: _Pending, value: Any, error: BaseException | None) -> None:
        self._release(req)
        try:
            req.loop.call_soon_threadsafe(_deliver, req.future, value, error)
        except RuntimeError:  # the event loop has closed: nobody is waiting
            pass

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)


def run_concatenated(fn: Callable[[np.ndarray], np.ndarray], max_batch: int) -> Callable[[list[np.ndarray]], list]:
    """A batch function for row arrays: concatenate the requests' rows, call ``fn`` on chunks
    of at most ``max_batch`` rows, and hand each request its own rows back."""

    def run(payloads: list[np.ndarray]) -> list[np.ndarray]:
        x = payloads[0] if len(payloads) == 1 else np.concatenate(payloads, axis=0)
        out = np.concatenate([fn(x[i:i + max_batch]) for i in range(0, len(x), max_batch)], axis=0)
        bounds = np.cumsum([0] + [len(p) for p in payloads])
        return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    return run
