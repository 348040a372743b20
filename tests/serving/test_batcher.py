"""The dynamic batcher on its own: batch forming (Triton's max_queue_delay semantics), each
caller's own rows, dropping of abandoned requests, the queue bound, and priorities."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from vqclip.serving.batcher import Batcher, Overloaded, Priority, WorkGate, run_concatenated


class Recorder:
    """A batch function that records each batch's payloads and can be held closed."""

    def __init__(self, hold: bool = False):
        self.batches: list[list] = []
        self.started: list[float] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, payloads: list) -> list:
        self.entered.set()
        self.started.append(time.monotonic())
        assert self.release.wait(10)
        self.batches.append(list(payloads))
        return [p * 10 for p in payloads]


def deadline(s: float = 10.0) -> float:
    return time.monotonic() + s


def test_concurrent_requests_become_one_call_and_each_gets_its_own_result():
    rec = Recorder()
    b = Batcher("t", rec, max_batch=8, max_wait_s=5.0)

    async def main():
        coming = [b.announce() for _ in range(8)]  # eight handlers reading their requests
        return await asyncio.gather(*(b.submit(p, 1, deadline(), a) for p, a in zip(range(8), coming)))

    t = time.monotonic()
    try:
        out = asyncio.run(main())
    finally:
        b.close()
    assert out == [p * 10 for p in range(8)]
    assert [len(x) for x in rec.batches] == [8]
    assert time.monotonic() - t < 2.0  # full at 8: no wait for the timer


def test_max_batch_bounds_a_batch_and_the_rest_runs_next():
    rec = Recorder(hold=True)
    b = Batcher("t", rec, max_batch=4, max_wait_s=0.0)

    async def main():
        first = asyncio.ensure_future(b.submit(-1, 1, deadline()))
        await asyncio.to_thread(rec.entered.wait, 5)  # the worker is busy with the first request
        rest = [asyncio.ensure_future(b.submit(i, 1, deadline())) for i in range(10)]
        await asyncio.sleep(0.05)
        rec.release.set()
        return await first, await asyncio.gather(*rest)

    try:
        first, rest = asyncio.run(main())
    finally:
        b.close()
    assert first == -10 and rest == [i * 10 for i in range(10)]
    # While the worker was busy the queue filled; freed, it takes what is queued at once, 4 at a time.
    assert [len(x) for x in rec.batches] == [1, 4, 4, 2]


def test_the_wait_timer_starts_at_the_first_request():
    rec = Recorder()
    wait = 0.6
    b = Batcher("t", rec, max_batch=100, max_wait_s=wait)

    async def main():
        t0 = time.monotonic()
        first, second, never = b.announce(), b.announce(), b.announce()
        a = asyncio.ensure_future(b.submit(1, 1, deadline(), first))
        await asyncio.sleep(wait * 0.8)
        c = asyncio.ensure_future(b.submit(2, 1, deadline(), second))
        await asyncio.gather(a, c)  # the third never comes: the timer, not it, ends the wait
        never.withdraw()
        return t0

    try:
        t0 = asyncio.run(main())
    finally:
        b.close()
    assert [len(x) for x in rec.batches] == [2]  # the second joined the first's batch
    started = rec.started[0] - t0
    assert wait * 0.9 <= started < wait * 1.5  # at the first request's wait, not the second's (1.8 x wait)


def test_a_lone_request_does_not_wait_for_company_that_is_not_coming():
    rec = Recorder()
    b = Batcher("t", rec, max_batch=100, max_wait_s=5.0)

    async def main():
        with b.announce() as me:
            return await b.submit(3, 1, deadline(), me)

    t = time.monotonic()
    try:
        assert asyncio.run(main()) == 30
    finally:
        b.close()
    assert time.monotonic() - t < 1.0  # nothing else was announced: no 5 s wait


def test_a_request_larger_than_max_batch_runs_alone():
    rec = Recorder()
    b = Batcher("t", rec, max_batch=4, max_wait_s=0.01)
    try:
        out = asyncio.run(b.submit(7, 9, deadline()))
    finally:
        b.close()
    assert out == 70 and len(rec.batches) == 1


def _held(max_queue: int = 100, **kw) -> tuple[Batcher, Recorder]:
    rec = Recorder(hold=True)
    return Batcher("t", rec, max_batch=1, max_wait_s=0.0, max_queue=max_queue, **kw), rec


def test_a_full_queue_refuses_at_once_with_a_retry_hint():
    b, rec = _held(max_queue=3)
    drops: list[str] = []
    b._on_drop = drops.append

    async def main():
        busy = asyncio.ensure_future(b.submit(0, 1, deadline()))
        await asyncio.to_thread(rec.entered.wait, 5)
        queued = [asyncio.ensure_future(b.submit(i, 1, deadline())) for i in (1, 2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as e:
            await b.submit(4, 1, deadline())
        rec.release.set()
        await asyncio.gather(busy, *queued)
        return e.value

    try:
        err = asyncio.run(main())
    finally:
        b.close()
    assert err.reason == "queue_full" and err.retry_after_s >= 1 and "queue is full" in str(err)
    assert drops == ["queue_full"]


def test_a_request_past_its_deadline_is_dropped_before_it_is_computed():
    b, rec = _held()

    async def main():
        busy = asyncio.ensure_future(b.submit(0, 1, deadline()))
        await asyncio.to_thread(rec.entered.wait, 5)
        with pytest.raises(Overloaded) as e:
            await b.submit(1, 1, time.monotonic() + 0.05)
        assert b.queued == 0  # taken out of the queue at once
        rec.release.set()
        await busy
        return e.value

    try:
        err = asyncio.run(main())
    finally:
        b.close()
    assert err.reason == "deadline"
    assert rec.batches == [[0]]  # 1 was never computed


def test_a_cancelled_request_is_dropped_before_it_is_computed():
    b, rec = _held()
    drops: list[str] = []
    b._on_drop = drops.append

    async def main():
        busy = asyncio.ensure_future(b.submit(0, 1, deadline()))
        await asyncio.to_thread(rec.entered.wait, 5)
        gone = asyncio.ensure_future(b.submit(1, 1, deadline()))
        kept = asyncio.ensure_future(b.submit(2, 1, deadline()))
        await asyncio.sleep(0.01)
        gone.cancel()  # what a client disconnect does to its handler's wait
        await asyncio.sleep(0.01)
        rec.release.set()
        return await busy, await kept

    try:
        assert asyncio.run(main()) == (0, 20)
    finally:
        b.close()
    assert rec.batches == [[0], [2]]
    assert drops == ["disconnected"]


def test_a_failing_batch_fails_its_callers_and_the_worker_lives_on():
    calls = []

    def run(payloads):
        calls.append(payloads)
        if len(calls) == 1:
            raise ValueError("backend broke")
        return payloads

    b = Batcher("t", run, max_batch=8, max_wait_s=0.0)
    try:
        with pytest.raises(ValueError, match="backend broke"):
            asyncio.run(b.submit(1, 1, deadline()))
        assert asyncio.run(b.submit(2, 1, deadline())) == 2
    finally:
        b.close()


def test_close_finishes_queued_work_then_refuses():
    b, rec = _held()

    async def main():
        futs = [asyncio.ensure_future(b.submit(i, 1, deadline())) for i in range(3)]
        await asyncio.to_thread(rec.entered.wait, 5)
        closing = asyncio.ensure_future(asyncio.to_thread(b.close))
        await asyncio.sleep(0.02)
        rec.release.set()
        out = await asyncio.gather(*futs)
        await closing
        with pytest.raises(Overloaded, match="shutting down"):
            await b.submit(9, 1, deadline())
        return out

    assert asyncio.run(main()) == [0, 10, 20]


def test_background_work_waits_for_interactive_work():
    gate = WorkGate()
    order: list[str] = []
    hold = threading.Event()

    def interactive(payloads):
        hold.wait(5)
        order.append("interactive")
        return payloads

    def background(payloads):
        order.append("background")
        return payloads

    fg = Batcher("fg", interactive, max_wait_s=0.0, gate=gate)
    bg = Batcher("bg", background, max_wait_s=0.0, gate=gate, priority=Priority.BACKGROUND)

    async def main():
        a = asyncio.ensure_future(fg.submit(1, 1, deadline()))
        await asyncio.sleep(0.02)
        assert gate.interactive == 1 and not gate.wait_idle(0.01)
        b = asyncio.ensure_future(bg.submit(2, 1, deadline()))
        await asyncio.sleep(0.1)
        assert order == []  # the background batch waits although its worker is free
        hold.set()
        await asyncio.gather(a, b)

    try:
        asyncio.run(main())
    finally:
        fg.close()
        bg.close()
    assert order == ["interactive", "background"]
    assert gate.interactive == 0 and gate.wait_idle(0)


def test_run_concatenated_chunks_by_max_batch_and_splits_rows_back():
    seen = []

    def fn(x):
        seen.append(len(x))
        return x * 2

    run = run_concatenated(fn, max_batch=4)
    a, b, c = np.arange(3)[:, None], np.arange(3, 8)[:, None], np.arange(8, 9)[:, None]
    out = run([a, b, c])
    assert seen == [4, 4, 1]
    for got, want in zip(out, (a, b, c)):
        np.testing.assert_array_equal(got, want * 2)
