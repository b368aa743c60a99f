"""The job queue: one worker thread owns the engine; clients submit, poll, fetch and cancel.

Why one worker: the network and its compiled TF functions are built once and kept warm, and
two optimisations at once would only fight over the same cores or GPU memory. Jobs wait in a
bounded queue (full -> :class:`QueueFull`, which the API answers with 429).

A second, housekeeping thread cancels abandoned jobs (GIMP kills a plug-in whose user presses
Cancel, so no DELETE may ever arrive: a job nobody has polled for ``abandon_after_s`` is
cancelled) and forgets finished jobs after ``ttl_s`` so memory stays bounded.

No HTTP here: the API layer turns these objects and exceptions into JSON.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from nst_server.engine import ENGINE_VERSION, Cancelled, EngineError, Progress
from nst_server.images import encode_png, thumbnail_png
from nst_server.params import StyleParams

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)

#: A long poll answers a mere progress change no sooner than this after it began.
LONG_POLL_GAP_S = 0.2

#: Longer side of preview PNGs, in pixels.
PREVIEW_SIZE = 256


class Engine(Protocol):
    """What the queue needs from ``nst_server.engine.StyleEngine`` (tests pass a fake)."""

    @property
    def device(self) -> str: ...

    @property
    def precision(self) -> str: ...

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def stylize(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        params: StyleParams,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        mask: np.ndarray | None = None,
        init_image: np.ndarray | None = None,
    ) -> np.ndarray: ...


def is_out_of_memory(exc: BaseException) -> bool:
    """A MemoryError or TensorFlow's ResourceExhaustedError (told by name: no TF import here)."""
    if isinstance(exc, MemoryError):
        return True
    return any(cls.__name__ == "ResourceExhaustedError" for cls in type(exc).__mro__)


class QueueFull(Exception):  # noqa: N818 - reads better at the call site than QueueFullError
    """The queue already holds ``capacity`` waiting jobs."""

    def __init__(self, capacity: int) -> None:
        super().__init__(
            f"the server is busy: {capacity} job(s) are already waiting; try again shortly"
        )
        self.capacity = capacity


@dataclass(eq=False)
class Job:
    """One job. Mutable fields are guarded by the queue's lock; read them via ``snapshot``."""

    id: str
    content: np.ndarray | None  # inputs are dropped once the job finishes
    styles: list[np.ndarray] | None
    params: StyleParams
    mask: np.ndarray | None = None  # H x W float32 in [0, 1], the content's size (API checks)
    init_image: np.ndarray | None = None  # starting point instead of params.init (any size)
    size: tuple[int, int] = (0, 0)  # content (width, height)
    n_styles: int = 0
    bit_depth: int = 8
    created: float = field(default_factory=time.time)  # wall clock, for clients
    state: str = QUEUED
    progress: dict[str, Any] = field(default_factory=lambda: {"phase": "queued"})
    error: str | None = None
    # "engine_error" | "out_of_memory" | "bad_input" | "internal" | "cancelled"
    error_code: str | None = None
    result: bytes | None = None
    started: float | None = None  # monotonic
    finished: float | None = None  # monotonic
    last_seen: float = 0.0  # monotonic, refreshed by every client GET
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    done_event: threading.Event = field(default_factory=threading.Event, repr=False)
    _preview: np.ndarray | None = field(default=None, repr=False)
    _preview_step: int = -1
    _preview_png: tuple[int, bytes] | None = field(default=None, repr=False)
    #: Bumped on every change a client can see (state, progress): long polls wait for it.
    version: int = 0


class JobQueue:
    """Bounded FIFO of jobs run one at a time by a worker thread that owns the engine.

    ``start()`` starts the worker (which loads the network straight away) and the housekeeper;
    ``close()`` stops both. All public methods are thread-safe.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        capacity: int = 8,
        abandon_after_s: float = 30.0,
        ttl_s: float = 900.0,
        idle_unload_s: float = 0.0,
        log_path: str | None = None,
        tick_s: float = 0.25,
    ) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.engine = engine
        self.capacity = capacity
        self.abandon_after_s = abandon_after_s
        self.ttl_s = ttl_s
        self.idle_unload_s = idle_unload_s
        self.log_path = log_path
        self._tick_s = tick_s
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._changed = threading.Condition(self._lock)  # some job's version went up
        self._jobs: dict[str, Job] = {}
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._status = "loading"  # "loading" | "ok" | "error"
        self._status_error: str | None = None
        self._idle_since = time.monotonic()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (loads the network now, not at the first job) and the housekeeper."""
        with self._lock:
            if self._threads:
                return
            self._threads = [
                threading.Thread(target=self._worker, name="nst-worker", daemon=True),
                threading.Thread(target=self._housekeeper, name="nst-housekeeper", daemon=True),
            ]
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the threads (a running step finishes first)."""
        with self._lock:
            self._stopping = True
            for job in list(self._waiting):
                self._finish(job, CANCELLED, "cancelled: the server is shutting down", "cancelled")
            self._waiting.clear()
            if self._running is not None:
                self._running.cancel_event.set()
            self._wake.notify_all()
            self._changed.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    # --- client operations ----------------------------------------------------------------------

    def submit(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        params: StyleParams,
        *,
        mask: np.ndarray | None = None,
        init_image: np.ndarray | None = None,
        bit_depth: int = 8,
    ) -> Job:
        """Queue a job; raise :class:`QueueFull` when ``capacity`` jobs are already waiting."""
        if not styles:
            raise ValueError("at least one style image is needed")
        job = Job(
            id=secrets.token_hex(16),
            content=content,
            styles=list(styles),
            params=params,
            mask=mask,
            init_image=init_image,
            bit_depth=bit_depth,
            size=(int(content.shape[1]), int(content.shape[0])),
            n_styles=len(styles),
        )
        with self._lock:
            if self._stopping:
                raise RuntimeError("the job queue is shut down")
            if len(self._waiting) >= self.capacity:
                raise QueueFull(self.capacity)
            job.last_seen = time.monotonic()
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._wake.notify_all()
        log.info(
            "job %s queued: %dx%d, %d style(s), %s",
            job.id,
            *job.size,
            job.n_styles,
            params.to_dict(),
        )
        return job

    def get(self, job_id: str, *, touch: bool = True) -> Job | None:
        """The job, or None if unknown or forgotten; ``touch`` counts as the client polling."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and touch:
                job.last_seen = time.monotonic()
            return job

    def snapshot(self, job_id: str, *, touch: bool = True) -> dict[str, Any] | None:
        """A JSON-ready view of the job (see the OpenAPI file), or None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if touch:
                job.last_seen = time.monotonic()
            return self._snapshot(job)

    def wait_snapshot(self, job_id: str, since: int, timeout: float) -> dict[str, Any] | None:
        """Like ``snapshot``, but first wait up to ``timeout`` s for the job's version to pass
        ``since`` (a long poll). A change of state (started, finished) is answered at once, so
        the client hears of the end without delay; progress alone at most every
        ``LONG_POLL_GAP_S``, since small jobs take 10+ steps a second. Returns None if the job
        is unknown or forgotten."""
        began = time.monotonic()
        deadline = began + timeout
        state: str | None = None  # the job's state when the poll began
        with self._lock:
            while True:
                job = self._jobs.get(job_id)
                if job is None:
                    return None
                state = state or job.state
                now = time.monotonic()
                job.last_seen = now  # a client waiting is a client polling
                changed = job.version != since
                if (
                    now >= deadline
                    or self._stopping
                    or (changed and (job.state != state or job.done_event.is_set()))
                    or (changed and now - began >= LONG_POLL_GAP_S)
                ):
                    return self._snapshot(job)
                until = min(deadline, began + LONG_POLL_GAP_S) if changed else deadline
                self._changed.wait(until - now)

    def cancel(self, job_id: str, reason: str = "cancelled by the client") -> dict[str, Any] | None:
        """Cancel a job: a queued one is dropped now, a running one stops within one step.

        Finished jobs are left as they are. Returns the snapshot, or None if unknown.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            self._cancel_locked(job, reason)
            return self._snapshot(job)

    def preview_png(self, job_id: str) -> bytes | None:
        """A small PNG of the latest iterate, or None if there is none yet (job must exist)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job._preview is None:
                return None
            job.last_seen = time.monotonic()
            if job._preview_png is not None and job._preview_png[0] == job._preview_step:
                return job._preview_png[1]
            pixels, step = job._preview, job._preview_step
        png = thumbnail_png(pixels, longest=PREVIEW_SIZE)  # outside the lock: it takes a while
        with self._lock:
            job._preview_png = (step, png)
        return png

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "queued": len(self._waiting),
                "running": int(self._running is not None),
                "capacity": self.capacity,
            }

    @property
    def status(self) -> str:
        """ "loading" until the network is built, then "ok"; "error" if building it failed."""
        return self._status

    @property
    def status_error(self) -> str | None:
        return self._status_error

    # --- internals ------------------------------------------------------------------------------

    def _snapshot(self, job: Job) -> dict[str, Any]:
        progress = dict(job.progress)
        if job.started is not None:
            progress["elapsed_s"] = round((job.finished or time.monotonic()) - job.started, 3)
        if job.state == QUEUED:
            progress["position"] = next(
                (i for i, waiting in enumerate(self._waiting) if waiting is job), 0
            )
        return {
            "id": job.id,
            "state": job.state,
            "progress": progress,
            "error": job.error,
            "error_code": job.error_code,
            "created": job.created,
            "size": list(job.size),
            "styles": job.n_styles,
            "bit_depth": job.bit_depth,
            "params": job.params.to_dict(),
            "engine_version": ENGINE_VERSION,
            "preview": job._preview is not None,
            "version": job.version,
        }

    def _cancel_locked(self, job: Job, reason: str) -> None:
        if job.state == QUEUED:
            self._waiting.remove(job)  # a queued job is always in the deque (lock held)
            self._finish(job, CANCELLED, reason, "cancelled")
            log.info("job %s %s (while queued)", job.id, reason)
        elif job.state == RUNNING and not job.cancel_event.is_set():
            job.error = reason  # kept if the cancellation takes effect
            job.cancel_event.set()
            log.info("job %s %s (while running)", job.id, reason)

    def _finish(self, job: Job, state: str, error: str | None, code: str | None) -> None:
        """Move a job to a final state (lock held). Inputs are dropped: memory stays bounded."""
        job.state = state
        job.error = error
        job.error_code = code
        job.finished = time.monotonic()
        job.progress["phase"] = state
        job.progress.pop("eta_s", None)
        job.content = job.styles = job.mask = job.init_image = None
        job.done_event.set()
        self._bump(job)

    def _worker(self) -> None:
        self._load_engine(None)
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    if self._should_unload():
                        break
                    self._wake.wait(self._tick_s)
                if self._stopping:
                    return
                job = self._waiting.popleft() if self._waiting else None
                if job is not None:
                    job.state = RUNNING
                    self._bump(job)
                    for behind in self._waiting:  # their queue positions moved up
                        self._bump(behind)
                    job.started = time.monotonic()
                    self._running = job
            if job is None:  # idle long enough: give the memory back
                self._unload_engine()
                continue
            try:
                self._run(job)
            except BaseException:  # noqa: BLE001 - the worker must outlive any job
                log.exception("job %s: unexpected error escaped the job runner", job.id)
            finally:
                with self._lock:
                    if job.state not in FINISHED:
                        self._finish(job, FAILED, self._internal_error(), "internal")
                    self._running = None
                    self._idle_since = time.monotonic()

    def _should_unload(self) -> bool:
        return (
            self.idle_unload_s > 0
            and self._status == "ok"
            and self.engine.loaded
            and time.monotonic() - self._idle_since >= self.idle_unload_s
        )

    def _unload_engine(self) -> None:
        log.info("no jobs for %g s: unloading the network", self.idle_unload_s)
        try:
            self.engine.unload()
        except Exception:
            log.exception("unloading the network failed")
        self._idle_since = time.monotonic()

    def _load_engine(self, job: Job | None) -> bool:
        """Build the network if needed; on failure record it (and fail ``job``)."""
        if self.engine.loaded:
            self._status, self._status_error = "ok", None
            return True
        self._status = "loading"
        if job is not None:
            self._set_progress(job, {"phase": "loading"})
        started = time.monotonic()
        try:
            self.engine.load()
        except Exception as exc:  # noqa: BLE001 - reported in health and the job, server stays up
            message = (
                str(exc)
                if isinstance(exc, (EngineError, ValueError, OSError))
                else self._internal_error()
            )
            log.exception("building the network failed")
            self._status, self._status_error = "error", message
            if job is not None:
                with self._lock:
                    self._finish(
                        job, FAILED, f"the network could not be loaded: {message}", "engine_error"
                    )
            return False
        log.info("network ready on %s in %.1f s", self.engine.device, time.monotonic() - started)
        self._status, self._status_error = "ok", None
        return True

    def _run(self, job: Job) -> None:
        log.info("job %s running", job.id)
        if not self._load_engine(job):
            return

        def on_progress(event: Progress) -> None:
            if job.cancel_event.is_set():
                raise Cancelled
            update: dict[str, Any] = {
                "phase": event.phase,
                "step": event.step,
                "total": event.total,
                "eta_s": event.eta_s,
                "losses": {k: float(v) for k, v in event.losses.items()},
            }
            if event.size is not None:
                update["size"] = list(event.size)
            if getattr(event, "result_size", None) is not None:  # with size: the enlargement
                update["result_size"] = list(event.result_size)
            if getattr(event, "scales", 1) > 1:  # coarse-to-fine: which pass this is
                update["scale"], update["scales"] = event.scale, event.scales
            if getattr(event, "note", None):
                update["note"] = event.note
            self._set_progress(job, update, preview=event.preview, step=event.step)

        try:
            if job.cancel_event.is_set():
                raise Cancelled
            assert job.content is not None and job.styles is not None
            engine_started = time.monotonic()
            result = self.engine.stylize(
                job.content,
                job.styles,
                job.params,
                on_progress,
                mask=job.mask,
                init_image=job.init_image,
            )
            # The engine's own time, so clients can tell it from transfer and encoding.
            engine_s = round(time.monotonic() - engine_started, 3)
            self._set_progress(job, {"phase": "encoding", "eta_s": None, "engine_s": engine_s})
            png = encode_png(result, bit_depth=job.bit_depth)
            if job.cancel_event.is_set():
                raise Cancelled
        except Cancelled:
            with self._lock:
                self._finish(job, CANCELLED, job.error or "cancelled", "cancelled")
            log.info("job %s cancelled", job.id)
            return
        except EngineError as exc:
            self._fail(job, str(exc), "engine_error")
            return
        except ValueError as exc:
            self._fail(job, str(exc), "bad_input")
            return
        except Exception as exc:  # noqa: BLE001 - sorted below; the worker must survive
            if is_out_of_memory(exc):
                # The real engine turns TF's ResourceExhaustedError into an EngineError itself;
                # this catches a raw one (or a MemoryError from numpy/scipy) from anywhere else.
                log.warning("job %s ran out of memory: %s", job.id, type(exc).__name__)
                self._fail(job, self._out_of_memory_message(job), "out_of_memory")
                return
            # anything else is our bug: log it, tell the client where to look
            log.exception("job %s failed with an internal error", job.id)
            self._fail(job, self._internal_error(), "internal")
            return
        with self._lock:
            job.result = png
            self._finish(job, DONE, None, None)
        log.info("job %s done in %.1f s", job.id, job.finished - job.started)

    def _fail(self, job: Job, message: str, code: str) -> None:
        log.warning("job %s failed: %s", job.id, message)
        with self._lock:
            self._finish(job, FAILED, message, code)

    def _set_progress(
        self,
        job: Job,
        update: dict[str, Any],
        *,
        preview: np.ndarray | None = None,
        step: int | None = None,
    ) -> None:
        with self._lock:
            job.progress.update(update)
            self._bump(job)
            if preview is not None:
                job._preview = preview
                job._preview_step = step if step is not None else job._preview_step + 1

    def _bump(self, job: Job) -> None:
        """Record a visible change to ``job`` and wake its long polls (lock held)."""
        job.version += 1
        self._changed.notify_all()

    def _out_of_memory_message(self, job: Job) -> str:
        width, height = job.size
        size = job.progress.get("size")
        at = f"{size[0]}x{size[1]} px" if size else f"max_size {job.params.max_size}"
        smaller = max(64, (max(size) if size else job.params.max_size or max(width, height)) // 2)
        return (
            f"out of memory while stylising a {width}x{height} picture at {at}: try a smaller "
            f"max_size (e.g. {smaller}), fewer style images, or close other programs using "
            "the memory; the server is still running"
        )

    def _internal_error(self) -> str:
        where = self.log_path or "the server's standard error"
        return f"internal error (see the server log at {where})"

    def _housekeeper(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                now = time.monotonic()
                if self.abandon_after_s > 0:
                    for job in list(self._jobs.values()):
                        if (
                            job.state in (QUEUED, RUNNING)
                            and now - job.last_seen > self.abandon_after_s
                        ):
                            self._cancel_locked(
                                job,
                                f"cancelled: no client asked about this job for "
                                f"{self.abandon_after_s:g} s (abandoned)",
                            )
                for job in list(self._jobs.values()):
                    if job.finished is not None and now - job.finished > self.ttl_s:
                        del self._jobs[job.id]
                self._wake.wait(self._tick_s)
