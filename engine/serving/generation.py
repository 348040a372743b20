"""Generation jobs over HTTP: ``POST /v1/generate``, ``/v1/jobs/{id}`` (+ ``/events``,
``/preview``, ``/result``) and ``DELETE /v1/jobs/{id}``.

One worker thread owns the ``Generator`` (it is not thread-safe) and steps every running
job as one batch (iteration-level batching: a new job joins at the next step, a finished
or cancelled one leaves). Before each step it waits for the interactive queues to empty
(``WorkGate.wait_idle``), so an encode, classify or search request never waits behind
more than one generation step. At most ``generation_jobs`` run at once; up to
``generation_queue`` more wait (their position is reported); past that a request gets 503
with ``Retry-After``. Progress goes to each job's subscribers as Server-Sent Events; the
latest preview and the result are PNGs (the result carries its settings and seed in its
metadata, as ``vqclip generate`` writes them, and is also saved under ``generation_out``).

Example::

    POST /v1/generate {"prompt": "a red star", "seed": 1, "steps": 100}  -> 202 {"id": ..., "queue_position": 0}
    GET  /v1/jobs/ID/events    -> event: progress / data: {"step": 10, "loss": 0.81, ...} ... event: done
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from vqclip.errors import VqclipError
from vqclip.serving.batcher import Overloaded
from vqclip.serving.inputs import check_text_length
from vqclip.serving.responses import ApiError
from vqclip.serving.routes_encode import ERRORS_DOC

if TYPE_CHECKING:
    from vqclip.serving.app import ServerState

__all__ = ["GenerateRequest", "JobStatus", "GenerationService", "router", "setup", "start", "stop"]

_PROPOSED_ID = re.compile(r"[0-9a-f]{16,64}")  # nginx's $request_id is 32 hex digits

log = logging.getLogger(__name__)

_FINISHED = ("done", "stopped", "cancelled", "interrupted", "failed")


class GenerateRequest(BaseModel):
    """A generation job: the prompt in ``vqclip generate``'s syntax and the settings a client may set."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(description="'text:weight:stop|...' with '^' between the sets of a story")
    seed: int | None = Field(None, description="random seed (default: drawn and reported)")
    steps: int | None = Field(None, description="optimisation steps (default: the model pair's preset)")
    size: list[int] | None = Field(None, description="[width, height] in pixels (default: the VQGAN's native size)")
    cutn: int | None = Field(None, description="cutouts per step")
    lr: float | None = Field(None, description="learning rate")
    smoothness: float | None = None
    symmetry: float | None = None
    saturation: float | None = None
    palette: list[str] | None = None
    palette_weight: float | None = None
    truncate: bool = Field(False, description="cut prompts longer than CLIP's context instead of refusing them")


class JobStatus(BaseModel):
    id: str
    status: str = Field(description="queued, running, done, stopped, cancelled, interrupted or failed")
    prompt: str
    seed: int | None
    step: int
    steps: int
    loss: float | None
    losses: dict[str, float]
    queue_position: int | None = Field(description="jobs ahead of this one while it is queued, else null")
    preview: str | None = Field(description="URL of the latest preview PNG, once there is one")
    result: str | None = Field(description="URL of the result PNG, once the job has finished")
    error: str | None = None


@dataclass
class _Record:
    """What the server knows of one job, shared by the worker thread and the handlers."""

    id: str
    request: GenerateRequest
    settings: Any  # GenerateSettings, checked at submission
    status: str = "queued"
    seed: int | None = None
    step: int = 0
    steps: int = 0
    loss: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    preview: bytes | None = None  # PNG of the latest preview
    result: bytes | None = None  # PNG of the final image, with its settings
    error: str | None = None
    job: Any = None  # the Generator's Job while it runs
    listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = field(default_factory=list)

    def event(self) -> dict:
        return {"id": self.id, "status": self.status, "step": self.step, "steps": self.steps, "loss": self.loss,
                "losses": self.losses}


class GenerationService:
    """The job registry and the stepping worker (``state.extras["generate"]``)."""

    def __init__(self, state: "ServerState"):
        self.state = state
        self.cfg = state.config
        self.records: OrderedDict[str, _Record] = OrderedDict()
        self.queued: deque[_Record] = deque()
        self._lock = threading.Condition()
        self._cancel: set[str] = set()
        self._stopping = False
        self.generator: Any = None
        self._thread: threading.Thread | None = None
        m = state.metrics
        from prometheus_client import Gauge

        self._jobs_gauge = Gauge("vqclip_generation_jobs", "Generation jobs by state", ["state"], registry=m.registry)
        self.out = Path(self.cfg.generation_out).expanduser() if self.cfg.generation_out else None

    # -- lifecycle
    def load(self) -> None:
        """Load the models (at app creation, so a bad path stops the server before it listens)."""
        from vqclip.jobs.generate import Generator

        self.generator = Generator(self.cfg.generation_clip or self.cfg.model, self.cfg.generation_vqgan,
                                   backend=self.cfg.generation_backend, step_graph=self.cfg.generation_step_graph)
        if self.generator.stepper is not None:  # export the default job's step graph now, not at the first job
            gen = self.generator
            gen.stepper.warm(gen.default_settings().with_(save_every=0), (gen.native, gen.native))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vqclip-generate", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Cancel queued jobs, finish running ones as "interrupted" (their latest images saved)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)

    # -- what the handlers call
    def submit(self, req: GenerateRequest, proposed_id: str | None = None) -> _Record:
        """Queue ``req``. ``proposed_id``: a load balancer's request id (hex) to use as the job id,
        so that it can route the job's later requests by the same key; ignored if taken or malformed."""
        settings = self._settings(req)
        with self._lock:
            if self._stopping:
                raise Overloaded("the server is shutting down", reason="shutdown")
            if len(self.queued) >= self.cfg.generation_queue:
                raise Overloaded(f"{len(self.queued)} generation jobs are already waiting (the limit); retry later",
                                 retry_after_s=10.0, reason="queue_full")
            ok = proposed_id is not None and _PROPOSED_ID.fullmatch(proposed_id) and proposed_id not in self.records
            rec = _Record(proposed_id if ok else uuid.uuid4().hex[:16], req, settings, steps=settings.steps,
                          seed=settings.seed)
            self.records[rec.id] = rec
            self.queued.append(rec)
            while len(self.records) > self.cfg.generation_history:  # forget the oldest finished jobs
                old = next((k for k, r in self.records.items() if r.status in _FINISHED), None)
                if old is None:
                    break
                del self.records[old]
            self._lock.notify_all()
        self._gauges()
        return rec

    def cancel(self, rec: _Record) -> None:
        with self._lock:
            if rec in self.queued:
                self.queued.remove(rec)
                self._set(rec, "cancelled")
            elif rec.status == "running":
                self._cancel.add(rec.id)
                self._lock.notify_all()

    def get(self, job_id: str) -> _Record:
        with self._lock:
            rec = self.records.get(job_id)
        if rec is None:
            raise ApiError(404, f"no generation job {job_id!r} (finished jobs are kept for the last "
                                f"{self.cfg.generation_history})", "not_found")
        return rec

    def status(self, rec: _Record) -> JobStatus:
        with self._lock:
            pos = list(self.queued).index(rec) if rec in self.queued else None
        return JobStatus(id=rec.id, status=rec.status, prompt=rec.request.prompt, seed=rec.seed, step=rec.step,
                         steps=rec.steps, loss=rec.loss, losses=rec.losses, queue_position=pos,
                         preview=f"/v1/jobs/{rec.id}/preview" if rec.preview is not None else None,
                         result=f"/v1/jobs/{rec.id}/result" if rec.result is not None else None, error=rec.error)

    def subscribe(self, rec: _Record) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            rec.listeners.append((asyncio.get_running_loop(), q))
            q.put_nowait(rec.event())  # where it stands now; a finished job's stream ends after this
        return q

    def unsubscribe(self, rec: _Record, q: asyncio.Queue) -> None:
        with self._lock:
            rec.listeners = [(lp, lq) for lp, lq in rec.listeners if lq is not q]

    # -- the worker thread
    def _settings(self, req: GenerateRequest) -> Any:
        from vqclip.jobs.generate.prompts import parse_prompts

        cfg = self.cfg
        check_text_length(req.prompt, cfg.max_text_chars, "the prompt")
        sets = parse_prompts(req.prompt)  # a bad prompt is a 400 now, not a failed job later
        base = self.generator.default_settings()
        changes = {k: v for k, v in req.model_dump().items()
                   if v is not None and k in ("seed", "steps", "lr", "smoothness", "symmetry", "saturation",
                                              "palette_weight")}
        if req.size is not None:
            if len(req.size) != 2:
                raise ApiError(400, f"size is [width, height], got {req.size}")
            changes["size"] = tuple(req.size)
        if req.palette is not None:
            changes["palette"] = tuple(req.palette)
        if req.cutn is not None:
            from dataclasses import replace

            changes["cutouts"] = replace(base.cutouts, cutn=req.cutn)
        settings = base.with_(truncate=req.truncate, save_every=0, **changes)
        settings = settings.checked(self.generator.factor)
        if settings.steps > cfg.max_generation_steps:
            raise ApiError(400, f"steps={settings.steps} is more than the limit of {cfg.max_generation_steps}")
        side = max(settings.size or (self.generator.native, self.generator.native))
        if side > cfg.max_generation_side:
            raise ApiError(400, f"size {settings.size} is larger than the limit of {cfg.max_generation_side} px a side")
        if settings.cutouts.cutn > cfg.max_generation_cutn:
            raise ApiError(400, f"cutn={settings.cutouts.cutn} is more than the limit of {cfg.max_generation_cutn}")
        if self.generator.stepper is not None:
            try:
                self.generator.stepper.check(settings, settings.size or (self.generator.native,) * 2,
                                             prompt_sets=sets)
            except VqclipError as e:  # a size or cutn the served step graph was not exported for
                raise ApiError(400, str(e)) from None
        return settings

    def _run(self) -> None:
        gen = self.generator
        while True:
            with self._lock:
                while not self._stopping and not self.queued and not gen.running():
                    self._lock.wait()
                if self._stopping:
                    break
                self._admit(gen)
                cancel = [r for r in self.records.values() if r.id in self._cancel and r.job is not None]
                self._cancel.clear()
            for rec in cancel:
                gen.cancel(rec.job)
                self._finished(rec, "cancelled")
            if not gen.running():
                continue
            while not self.state.runtime.gate.wait_idle(timeout=0.5):  # interactive requests first
                if self._stopping:
                    break
            try:
                events = gen.step()
            except Exception as e:  # a bug or an OOM: fail the jobs of this batch, keep serving
                log.exception("a generation step failed")
                error = f"{type(e).__name__}: {e}"
                del e  # its traceback holds the failed step's tensors
                for rec in [r for r in self.records.values() if r.status == "running"]:
                    try:
                        gen.cancel(rec.job)
                    except Exception:  # its final decode may fail the same way; the job still ends
                        log.exception("could not finish generation job %s", rec.id)
                        gen.jobs = [j for j in gen.jobs if j is not rec.job]
                    self._finished(rec, "failed", error=error)
                continue
            for ev in events:
                self._progress(ev)
        saved = gen.interrupt()  # the latest image of every running job, written
        for rec in [r for r in self.records.values() if r.status == "running"]:
            self._finished(rec, "interrupted")
        for rec in list(self.queued):
            self._set(rec, "cancelled")
        self.queued.clear()
        if saved:
            log.info("generation stopped; latest images written: %s", ", ".join(saved))

    def _admit(self, gen: Any) -> None:
        """Move queued jobs into the running batch while there is room (lock held)."""
        while self.queued and len(gen.running()) < self.cfg.generation_jobs:
            rec = self.queued.popleft()
            try:
                rec.job = gen.add_job(rec.request.prompt, rec.settings, out_dir=self.out, job_id=rec.id,
                                      preview_every=self.cfg.generation_preview_every)
            except VqclipError as e:  # e.g. an image prompt that cannot be read
                rec.error = str(e)
                self._set(rec, "failed")
                continue
            rec.seed, rec.steps = rec.job.seed, rec.job.settings.steps
            self._set(rec, "running")

    def _progress(self, ev: Any) -> None:
        rec = self.records.get(ev.job_id)
        if rec is None:
            return
        rec.step, rec.loss, rec.losses = ev.step, ev.loss, ev.losses
        if ev.image is not None:
            from vqclip.jobs.generate.outputs import png_bytes

            rec.preview = png_bytes(ev.image)
        if ev.status != "running":
            self._finished(rec, ev.status)
        else:
            self._notify(rec, "progress")

    def _finished(self, rec: _Record, status: str, error: str | None = None) -> None:
        job = rec.job
        if job is not None and job.result is not None:
            from vqclip.jobs.generate.outputs import png_bytes

            rec.result = png_bytes(job.result, self.generator.record(job))  # as `vqclip generate` writes it
            rec.preview = rec.preview or rec.result
        rec.error = error or rec.error
        self._set(rec, status)

    def _set(self, rec: _Record, status: str) -> None:
        rec.status = status
        self._notify(rec, "done" if status in _FINISHED else status)
        self._gauges()

    def _notify(self, rec: _Record, kind: str) -> None:
        data = rec.event() | {"event": kind}
        for loop, q in list(rec.listeners):
            loop.call_soon_threadsafe(q.put_nowait, data)

    def _gauges(self) -> None:
        counts: dict[str, int] = {}
        for r in list(self.records.values()):
            counts[r.status] = counts.get(r.status, 0) + 1
        for s in ("queued", "running", *_FINISHED):
            self._jobs_gauge.labels(s).set(counts.get(s, 0))


def setup(state: "ServerState") -> None:
    service = GenerationService(state)
    service.load()
    state.extras["generate"] = service


def start(state: "ServerState") -> None:
    state.extras["generate"].start()


def stop(state: "ServerState") -> None:
    service = state.extras.get("generate")
    if service is not None:
        service.stop()


def router(state: "ServerState") -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["generation"], dependencies=[Depends(state.access)])
    not_found = {**ERRORS_DOC, 404: ERRORS_DOC[400] | {"description": "no such job"}}

    def service() -> GenerationService:
        return state.extras["generate"]

    @r.post("/generate", status_code=202, response_model=JobStatus, responses=ERRORS_DOC)
    async def generate(req: GenerateRequest, request: Request) -> JobStatus:
        """Queue a generation job; it joins the running batch at the next step when there is room.
        With ``--trust-request-id``, a hex ``X-Request-Id`` (a load balancer's) becomes the job id."""
        svc = service()
        proposed = request.headers.get("x-request-id") if state.config.trust_request_id else None
        return svc.status(svc.submit(req, proposed))

    @r.get("/jobs/{job_id}", response_model=JobStatus, responses=not_found)
    async def job(job_id: str) -> JobStatus:
        """Where a job stands: status, step, losses, and the URLs of its preview and result."""
        svc = service()
        return svc.status(svc.get(job_id))

    @r.delete("/jobs/{job_id}", response_model=JobStatus, responses=not_found)
    async def cancel(job_id: str) -> JobStatus:
        """Cancel a queued or running job (a running one keeps its latest image as its result)."""
        svc = service()
        rec = svc.get(job_id)
        svc.cancel(rec)
        for _ in range(200):  # a running job leaves the batch at the end of the step under way
            if rec.status != "running":
                break
            await asyncio.sleep(0.05)
        return svc.status(rec)

    @r.get("/jobs/{job_id}/events", responses=not_found,
           response_class=StreamingResponse, response_description="text/event-stream of progress")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        """Progress as Server-Sent Events: ``progress`` after each step, ``done`` at the end."""
        svc = service()
        rec = svc.get(job_id)
        q = svc.subscribe(rec)

        async def stream() -> AsyncIterator[bytes]:
            try:
                while True:
                    try:
                        data = await asyncio.wait_for(q.get(), timeout=15)
                    except asyncio.TimeoutError:
                        yield b": keep-alive\n\n"  # proxies drop silent connections
                        continue
                    kind = data.pop("event", "progress")
                    if rec.preview is not None:
                        data["preview"] = f"/v1/jobs/{rec.id}/preview?step={data['step']}"
                    yield f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
                    if kind == "done" or data["status"] in _FINISHED:
                        return
            finally:
                svc.unsubscribe(rec, q)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @r.get("/jobs/{job_id}/preview", responses=not_found, response_class=Response)
    async def preview(job_id: str) -> Response:
        """The latest preview PNG of a job (404 until its first preview step)."""
        rec = service().get(job_id)
        if rec.preview is None:
            raise ApiError(404, f"job {job_id} has no preview yet (step {rec.step})", "not_found")
        return Response(rec.preview, media_type="image/png", headers={"Cache-Control": "no-store"})

    @r.get("/jobs/{job_id}/result", responses={**not_found, 409: ERRORS_DOC[400] | {"description": "not finished"}},
           response_class=Response)
    async def result(job_id: str) -> Response:
        """The final PNG, its settings and seed in the ``vqclip`` text chunk (409 while it runs)."""
        rec = service().get(job_id)
        if rec.result is None:
            raise ApiError(409, f"job {job_id} is {rec.status} (step {rec.step} of {rec.steps}); the result comes "
                                "when it finishes", "not_finished")
        return Response(rec.result, media_type="image/png")

    return r
