"""The in-process job queue: one worker thread owns the engine; clients submit, poll, cancel.

Why one worker: the network and its compiled TF functions are built once and kept warm, and
two optimisations at once would only fight over the same cores or GPU memory. Jobs wait in a
bounded queue (full -> :class:`QueueFull`, which the API answers with 429).

A waiting job holds its uploads as the compressed files they came in (a 10-megapixel PNG of
one colour is a few hundred KB on the wire and 160 MB decoded): the worker decodes them when the
job starts. Every job's memory is reserved in the :class:`~nst_server.budget.MemoryBudget`
before it is accepted (see that module): its uploads and the room for its result while it
exists, what it needs to run while it waits or runs.

A second, housekeeping thread cancels abandoned jobs (GIMP kills a plug-in whose user presses
Cancel, so no DELETE may ever arrive: a job nobody has asked about for ``abandon_after_s`` is
cancelled) and forgets finished jobs after ``ttl_s`` or beyond ``max_finished`` of them, so
memory stays bounded.

No HTTP here: the API layer turns these objects and exceptions into JSON and statuses.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nst_server.budget import MemoryBudget
from nst_server.images import thumbnail_png
from nst_server.jobmodel import (  # noqa: F401 - re-exported: the names clients of jobs use
    FINISHED,
    LONG_POLL_GAP_S,
    PREVIEW_SIZE,
    ArtistQueueFull,
    BrokerUnavailable,
    Decoded,
    ErrorCode,
    JobInputs,
    JobNeeds,
    JobQueue,
    JobSnapshot,
    JobState,
    JobView,
    NotRunning,
    QueueFull,
    Upload,
    abandoned_message,
    decode_inputs,
    job_needs,
    preview_bound,
    result_png_bound,
)
from nst_server.params import StyleParams
from nst_server.runner import Engine, EngineHost, Outcome, internal_error, run_job
from nst_server.settings import ServerSettings

log = logging.getLogger(__name__)

#: The budget of a queue built without one (tests): effectively none.
UNLIMITED = 2**50

#: The settings' defaults (one declaration: nst_server/settings.py).
_DEFAULTS = ServerSettings()


@dataclass(eq=False)
class Job:
    """One job. Mutable fields are guarded by the queue's lock; read them via ``snapshot``."""

    id: str
    inputs: JobInputs | None  # dropped once decoded
    params: StyleParams
    owner: str = ""  # the principal's name that created it
    size: tuple[int, int] = (0, 0)  # content (width, height)
    n_styles: int = 0
    bit_depth: int = 8
    created: float = field(default_factory=time.time)  # wall clock, for clients
    state: JobState = JobState.QUEUED
    progress: dict[str, Any] = field(default_factory=lambda: {"phase": "queued"})
    error: str | None = None
    error_code: ErrorCode | None = None
    result: bytes | None = None
    started: float | None = None  # monotonic
    finished: float | None = None  # monotonic
    last_seen: float = 0.0  # monotonic, refreshed by every client request about it
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    finish_event: threading.Event = field(default_factory=threading.Event, repr=False)
    done_event: threading.Event = field(default_factory=threading.Event, repr=False)
    finished_early: bool = False
    _preview: np.ndarray | None = field(default=None, repr=False)
    _preview_step: int | None = None
    # ((step, longer side), PNG) of the last preview asked for
    _preview_png: tuple[tuple[int, int], bytes] | None = field(default=None, repr=False)
    #: Bumped on every change a client can see (state, progress): long polls wait for it.
    version: int = 0


class LocalQueue:
    """The in-process :class:`~nst_server.jobmodel.JobQueue`: a bounded FIFO of jobs run one
    at a time by a worker thread that owns the engine.

    ``start()`` starts the worker (which loads the network straight away) and the housekeeper;
    ``close()`` stops both. All public methods are thread-safe.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        capacity: int = _DEFAULTS.queue_size,
        abandon_after_s: float = _DEFAULTS.abandon_after_s,
        ttl_s: float = _DEFAULTS.job_ttl_s,
        max_finished: int = _DEFAULTS.max_finished_jobs,
        idle_unload_s: float = _DEFAULTS.idle_unload_s,
        max_pixels: int = _DEFAULTS.max_pixels,
        budget: MemoryBudget | None = None,
        log_path: str | None = None,
        tick_s: float = 0.25,
        artist_cap: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.engine = engine
        self.host = EngineHost(engine, log_path=log_path)
        self.capacity = capacity
        self.artist_cap = artist_cap  # jobs one owner may have waiting (None: no cap)
        self.abandon_after_s = abandon_after_s
        self.ttl_s = ttl_s
        self.max_finished = max_finished
        self.idle_unload_s = idle_unload_s
        self.max_pixels = max_pixels
        self.budget = budget or MemoryBudget(UNLIMITED)
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
                self._finish(
                    job,
                    JobState.CANCELLED,
                    "cancelled: the server is shutting down",
                    ErrorCode.CANCELLED,
                )
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
        inputs: JobInputs,
        params: StyleParams,
        *,
        needs: JobNeeds | None = None,
        owner: str = "",
        replacing: object | None = None,
    ) -> Job:
        """Queue a job. Raises :class:`QueueFull` when ``capacity`` jobs are already waiting,
        and the budget's NeverFits/NotNow when ``needs`` does not fit (``replacing``: the
        budget key of the upload this job takes over)."""
        if not inputs.styles:
            raise ValueError("at least one style image is needed")
        content = inputs.content.info
        job = Job(
            id=secrets.token_hex(16),
            inputs=inputs,
            params=params,
            owner=owner,
            bit_depth=content.bit_depth,
            size=content.size,
            n_styles=len(inputs.styles),
        )
        needs = needs or JobNeeds(held=inputs.nbytes, run=0)
        with self._lock:
            if self._stopping:
                raise RuntimeError("the job queue is shut down")
            if len(self._waiting) >= self.capacity:
                raise QueueFull(self.capacity)
            mine = sum(j.owner == owner for j in self._waiting)
            if self.artist_cap is not None and mine >= self.artist_cap:
                raise ArtistQueueFull(self.artist_cap)
            self.budget.reserve(
                job.id,
                held=needs.held,
                run=needs.run,
                what=f"this job ({job.size[0]}x{job.size[1]} px, max_size {params.max_size})",
                replacing=replacing,
            )
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

    def touch(self, job_id: str) -> None:
        """A client asked about the job (e.g. its request is waiting for a thread)."""
        self.get(job_id)

    def snapshot(self, job_id: str, *, touch: bool = True) -> JobSnapshot | None:
        """A JSON-ready view of the job (see the OpenAPI file), or None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if touch:
                job.last_seen = time.monotonic()
            return self._snapshot(job)

    def wait_snapshot(self, job_id: str, since: int, timeout: float) -> JobSnapshot | None:
        """Like ``snapshot``, but first wait up to ``timeout`` s for the job's version to pass
        ``since`` (a long poll). A change of state (started, finished) is answered at once, so
        the client hears of the end without delay; progress alone at most every
        ``LONG_POLL_GAP_S``, since small jobs take 10+ steps a second. Returns None if the job
        is unknown or forgotten."""
        began = time.monotonic()
        deadline = began + timeout
        state: JobState | None = None  # the job's state when the poll began
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

    def cancel(self, job_id: str, reason: str = "cancelled by the client") -> JobSnapshot | None:
        """Cancel a job: a queued one is dropped now, a running one stops within one step.

        Finished jobs are left as they are. Returns the snapshot, or None if unknown.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            self._cancel_locked(job, reason)
            return self._snapshot(job)

    def finish(self, job_id: str) -> JobSnapshot | None:
        """Ask a running job to stop after its current step, its picture so far the result.

        Raises :class:`NotRunning` for a queued or finished job; None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job.last_seen = time.monotonic()
            if job.state != JobState.RUNNING:
                raise NotRunning(job.state)
            if not job.finish_event.is_set():
                job.finish_event.set()
                log.info("job %s: finish asked", job.id)
            return self._snapshot(job)

    def preview_png(self, job_id: str, longest: int = PREVIEW_SIZE) -> bytes | None:
        """A PNG of the latest iterate, longer side at most ``longest`` and at most the
        processing size; None if there is none yet (the job must exist)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job._preview is None or job._preview_step is None:
                return None
            job.last_seen = time.monotonic()
            pixels, step = job._preview, job._preview_step
            longest = max(1, min(longest, max(pixels.shape[:2])))
            if job._preview_png is not None and job._preview_png[0] == (step, longest):
                return job._preview_png[1]
        png = thumbnail_png(pixels, longest=longest)  # outside the lock: it takes a while
        with self._lock:
            job._preview_png = ((step, longest), png)
        return png

    @property
    def device(self) -> str:
        return self.engine.device

    def wait_done(self, job_id: str, timeout: float) -> Job | None:
        job = self.get(job_id)
        if job is not None:
            job.done_event.wait(timeout)
        return job

    def result_png(self, job_id: str) -> bytes | None:
        job = self.get(job_id)
        return job.result if job is not None and job.state == JobState.DONE else None

    def list_jobs(self, owner: str | None) -> list[JobSnapshot]:
        with self._lock:
            jobs = [j for j in self._jobs.values() if owner is None or j.owner == owner]
            jobs.sort(key=lambda j: j.created)
            return [self._snapshot(j) for j in jobs]

    def health(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "weights": engine.weights_description,
            "device": engine.device,
            "precision": engine.precision,
            "loaded": engine.loaded,
        }

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
        return self.host.status

    @property
    def status_error(self) -> str | None:
        return self.host.status_error

    # --- internals ------------------------------------------------------------------------------

    def _snapshot(self, job: Job) -> JobSnapshot:
        position = None
        if job.state == JobState.QUEUED:
            position = next((i for i, waiting in enumerate(self._waiting) if waiting is job), 0)
        elapsed = None
        if job.started is not None:
            elapsed = (job.finished or time.monotonic()) - job.started
        has_preview = job._preview is not None
        return JobSnapshot(
            JobView(job.id, job.owner, job.state, job.progress, job.error, job.error_code),
            created=job.created,
            size=tuple(job.size),
            styles=job.n_styles,
            bit_depth=job.bit_depth,
            params=job.params.to_dict(),
            preview_step=job._preview_step if has_preview else None,
            version=job.version,
            position=position,
            elapsed_s=elapsed,
            finished_early=job.finished_early,
        )

    def _cancel_abandoned_locked(self, jobs: list[Job]) -> None:
        """Cancel those of ``jobs`` nobody asked about for ``abandon_after_s`` (lock held)."""
        if self.abandon_after_s <= 0:
            return
        now = time.monotonic()
        for job in jobs:
            if (
                job.state in (JobState.QUEUED, JobState.RUNNING)
                and now - job.last_seen > self.abandon_after_s
            ):
                self._cancel_locked(job, abandoned_message(self.abandon_after_s))

    def _cancel_locked(self, job: Job, reason: str) -> None:
        if job.state == JobState.QUEUED:
            self._waiting.remove(job)  # a queued job is always in the deque (lock held)
            self._finish(job, JobState.CANCELLED, reason, ErrorCode.CANCELLED)
            log.info("job %s %s (while queued)", job.id, reason)
        elif job.state == JobState.RUNNING and not job.cancel_event.is_set():
            job.error = reason  # kept if the cancellation takes effect
            job.cancel_event.set()
            log.info("job %s %s (while running)", job.id, reason)

    def _finish(self, job: Job, state: JobState, error: str | None, code: ErrorCode | None) -> None:
        """Move a job to a final state (lock held). Inputs and previews are dropped, and its
        reservation shrinks to its result: memory stays bounded."""
        job.state = state
        job.error = error
        job.error_code = code
        job.finished = time.monotonic()
        job.progress["phase"] = state.value
        job.progress.pop("eta_s", None)
        job.inputs = None
        job._preview = job._preview_png = None
        self.budget.shrink(job.id, held=len(job.result or b""), run=0)
        job.done_event.set()
        self._bump(job)
        self._forget_beyond_limit()

    def _forget(self, job: Job) -> None:
        del self._jobs[job.id]
        self.budget.release(job.id)

    def _forget_beyond_limit(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished is not None]
        if len(finished) > self.max_finished:
            finished.sort(key=lambda j: j.finished or 0.0)
            for job in finished[: len(finished) - self.max_finished]:
                self._forget(job)

    def _worker(self) -> None:
        self.host.ensure_loaded()
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    if self._should_unload():
                        break
                    self._wake.wait(self._tick_s)
                if self._stopping:
                    return
                # Between the housekeeper's ticks a job may have been abandoned: never start it.
                self._cancel_abandoned_locked(list(self._waiting))
                job = self._waiting.popleft() if self._waiting else None
                if job is not None:
                    job.state = JobState.RUNNING
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
                        self._finish(
                            job, JobState.FAILED, internal_error(self.log_path), ErrorCode.INTERNAL
                        )
                    self._running = None
                    self._idle_since = time.monotonic()

    def _should_unload(self) -> bool:
        return (
            self.idle_unload_s > 0
            and self.host.status == "ok"
            and self.engine.loaded
            and time.monotonic() - self._idle_since >= self.idle_unload_s
        )

    def _unload_engine(self) -> None:
        log.info("no jobs for %g s: unloading the network", self.idle_unload_s)
        self.host.unload()
        self._idle_since = time.monotonic()

    def _run(self, job: Job) -> None:
        log.info("job %s running", job.id)
        assert job.inputs is not None
        outcome = run_job(
            self.host,
            job.inputs,
            job.params,
            _LocalControl(self, job),
            bit_depth=job.bit_depth,
            max_pixels=self.max_pixels,
        )
        self._end(job, outcome)

    def _end(self, job: Job, outcome: Outcome) -> None:
        """Record how ``job`` ended (its worker is done with it)."""
        if outcome.state == JobState.CANCELLED:
            with self._lock:
                self._finish(job, JobState.CANCELLED, job.error or "cancelled", ErrorCode.CANCELLED)
            log.info("job %s cancelled", job.id)
        elif outcome.state == JobState.FAILED:
            log.warning("job %s failed: %s", job.id, outcome.error)
            with self._lock:
                self._finish(job, JobState.FAILED, outcome.error, outcome.code)
        else:
            with self._lock:
                job.result = outcome.png
                job.finished_early = outcome.finished_early
                self._finish(job, JobState.DONE, None, None)
            early = " (finished early)" if job.finished_early else ""
            log.info("job %s done in %.1f s%s", job.id, job.finished - job.started, early)

    def _held_after_decode(self, job: Job) -> int:
        """What the job still holds once its uploads are decoded: room for its result and
        previews (the decoded arrays are part of its run reservation)."""
        width, height = job.size
        return result_png_bound(width, height, job.bit_depth) + preview_bound(job.params, job.size)

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
            if preview is not None:
                job._preview = preview
                previous = job._preview_step if job._preview_step is not None else 0
                job._preview_step = step if step is not None else previous + 1
            self._bump(job)

    def _bump(self, job: Job) -> None:
        """Record a visible change to ``job`` and wake its long polls (lock held)."""
        job.version += 1
        self._changed.notify_all()

    def _housekeeper(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                now = time.monotonic()
                self._cancel_abandoned_locked(list(self._jobs.values()))
                for job in list(self._jobs.values()):
                    if job.finished is not None and now - job.finished > self.ttl_s:
                        self._forget(job)
                self._wake.wait(self._tick_s)


class _LocalControl:
    """A running job's link to its clients in this process (see runner.JobControl)."""

    def __init__(self, queue: LocalQueue, job: Job) -> None:
        self.queue, self.job = queue, job

    def cancelled(self) -> bool:
        return self.job.cancel_event.is_set()

    def finish_asked(self) -> bool:
        return self.job.finish_event.is_set()

    def report(self, update: dict[str, Any], preview: np.ndarray | None, step: int | None) -> None:
        self.queue._set_progress(self.job, update, preview=preview, step=step)

    def decoded(self) -> None:
        with self.queue._lock:
            self.job.inputs = None  # decoded now: the compressed uploads can go
            self.queue.budget.shrink(self.job.id, held=self.queue._held_after_decode(self.job))
