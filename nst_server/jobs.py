"""The job queue: one worker thread owns the engine; clients submit, poll, fetch and cancel.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import numpy as np

from nst_server.budget import MemoryBudget
from nst_server.engine import ENGINE_VERSION, Cancelled, EngineError, FinishEarly, Progress
from nst_server.images import (
    DecodedImage,
    ImageError,
    ImageInfo,
    decode_image,
    encode_png,
    mask_from_image,
    thumbnail_png,
)
from nst_server.params import StyleParams
from nst_server.settings import ServerSettings

log = logging.getLogger(__name__)


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


class ErrorCode(str, Enum):
    """Why a job did not end ``done`` (the API maps each to an HTTP status)."""

    BAD_IMAGE = "bad_image"  # an upload could not be decoded
    BAD_INPUT = "bad_input"  # the inputs do not go together (the engine said ValueError)
    ENGINE_ERROR = "engine_error"  # the engine cannot do it as asked (too small, ...)
    OUT_OF_MEMORY = "out_of_memory"
    INTERNAL = "internal"  # our bug: see the log
    CANCELLED = "cancelled"


#: A long poll answers a mere progress change no sooner than this after it began.
LONG_POLL_GAP_S = 0.2

#: Longer side of preview PNGs when the client names none, in pixels.
PREVIEW_SIZE = 256

#: The budget of a queue built without one (tests): effectively none.
UNLIMITED = 2**50

#: The settings' defaults (one declaration: nst_server/settings.py).
_DEFAULTS = ServerSettings()


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


class NotRunning(Exception):  # noqa: N818 - an outcome, like QueueFull
    """Finish was asked of a job that is not running; ``state`` is its state."""

    def __init__(self, state: JobState) -> None:
        super().__init__(state.value)
        self.state = state


@dataclass(frozen=True)
class Upload:
    """One uploaded file, as it came (``data``), with what its header said."""

    data: bytes
    info: ImageInfo
    what: str  # "content", "style", "mask" or "init": named in error messages


@dataclass(frozen=True)
class JobInputs:
    """A job's uploads, checked but not decoded."""

    content: Upload
    styles: tuple[Upload, ...]
    mask: Upload | None = None
    init: Upload | None = None

    @property
    def uploads(self) -> tuple[Upload, ...]:
        extra = tuple(u for u in (self.mask, self.init) if u is not None)
        return (self.content, *self.styles, *extra)

    @property
    def nbytes(self) -> int:
        return sum(len(u.data) for u in self.uploads)


@dataclass(frozen=True)
class Decoded:
    """A job's inputs decoded by the worker, as the engine takes them."""

    content: np.ndarray
    styles: list[np.ndarray]
    mask: np.ndarray | None
    init_image: np.ndarray | None


def decode_inputs(inputs: JobInputs, max_pixels: int) -> Decoded:
    """Decode every upload (ImageError naming the upload if one cannot be used)."""

    def decode(upload: Upload) -> DecodedImage:
        return decode_image(upload.data, what=upload.what, max_pixels=max_pixels)

    content = decode(inputs.content)
    mask = None
    if inputs.mask is not None:
        decoded_mask = decode(inputs.mask)
        if decoded_mask.size != content.size:  # e.g. only one of them had an EXIF rotation
            raise ImageError(
                f"mask: {decoded_mask.size[0]}x{decoded_mask.size[1]} px once decoded, but the "
                f"content is {content.size[0]}x{content.size[1]} px"
            )
        mask = mask_from_image(decoded_mask)
    return Decoded(
        content=content.pixels,
        styles=[decode(s).pixels for s in inputs.styles],
        mask=mask,
        init_image=decode(inputs.init).pixels if inputs.init is not None else None,
    )


@dataclass(frozen=True)
class JobNeeds:
    """Bytes of the memory budget a job reserves: ``held`` while it exists (uploads, room for
    the result and previews), ``run`` while it waits to run and runs (see budget.py)."""

    held: int
    run: int


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


class JobQueue:
    """Bounded FIFO of jobs run one at a time by a worker thread that owns the engine.

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
    ) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.engine = engine
        self.capacity = capacity
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

    def finish(self, job_id: str) -> dict[str, Any] | None:
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
        if job.state == JobState.QUEUED:
            progress["position"] = next(
                (i for i, waiting in enumerate(self._waiting) if waiting is job), 0
            )
        if job.finished_early:
            progress["finished_early"] = True
        return {
            "id": job.id,
            "state": job.state.value,
            "progress": progress,
            "error": job.error,
            "error_code": job.error_code.value if job.error_code else None,
            "created": job.created,
            "size": list(job.size),
            "styles": job.n_styles,
            "bit_depth": job.bit_depth,
            "params": job.params.to_dict(),
            "engine_version": ENGINE_VERSION,
            "preview": job._preview is not None,
            "preview_step": job._preview_step if job._preview is not None else None,
            "version": job.version,
        }

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
                            job, JobState.FAILED, self._internal_error(), ErrorCode.INTERNAL
                        )
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
                        job,
                        JobState.FAILED,
                        f"the network could not be loaded: {message}",
                        ErrorCode.ENGINE_ERROR,
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
            if job.finish_event.is_set() and event.phase == "optimising":
                job.finished_early = True
                raise FinishEarly

        try:
            if job.cancel_event.is_set():
                raise Cancelled
            assert job.inputs is not None
            self._set_progress(job, {"phase": "preparing"})  # decoding the uploads
            decoded = decode_inputs(job.inputs, self.max_pixels)
            with self._lock:
                job.inputs = None  # decoded now: the compressed uploads can go
                self.budget.shrink(job.id, held=self._held_after_decode(job))
            engine_started = time.monotonic()
            result = self.engine.stylize(
                decoded.content,
                decoded.styles,
                job.params,
                on_progress,
                mask=decoded.mask,
                init_image=decoded.init_image,
            )
            del decoded
            # The engine's own time, so clients can tell it from transfer and encoding.
            engine_s = round(time.monotonic() - engine_started, 3)
            self._set_progress(job, {"phase": "encoding", "eta_s": None, "engine_s": engine_s})
            png = encode_png(result, bit_depth=job.bit_depth)
            del result
            if job.cancel_event.is_set():
                raise Cancelled
        except Cancelled:
            with self._lock:
                self._finish(job, JobState.CANCELLED, job.error or "cancelled", ErrorCode.CANCELLED)
            log.info("job %s cancelled", job.id)
            return
        except ImageError as exc:
            self._fail(job, str(exc), ErrorCode.BAD_IMAGE)
            return
        except EngineError as exc:
            self._fail(job, str(exc), ErrorCode.ENGINE_ERROR)
            return
        except ValueError as exc:
            self._fail(job, str(exc), ErrorCode.BAD_INPUT)
            return
        except Exception as exc:  # noqa: BLE001 - sorted below; the worker must survive
            if is_out_of_memory(exc):
                # The real engine turns TF's ResourceExhaustedError into an EngineError itself;
                # this catches a raw one (or a MemoryError from numpy/scipy) from anywhere else.
                log.warning("job %s ran out of memory: %s", job.id, type(exc).__name__)
                self._fail(job, self._out_of_memory_message(job), ErrorCode.OUT_OF_MEMORY)
                return
            # anything else is our bug: log it, tell the client where to look
            log.exception("job %s failed with an internal error", job.id)
            self._fail(job, self._internal_error(), ErrorCode.INTERNAL)
            return
        with self._lock:
            job.result = png
            self._finish(job, JobState.DONE, None, None)
        early = " (finished early)" if job.finished_early else ""
        log.info("job %s done in %.1f s%s", job.id, job.finished - job.started, early)

    def _held_after_decode(self, job: Job) -> int:
        """What the job still holds once its uploads are decoded: room for its result and
        previews (the decoded arrays are part of its run reservation)."""
        width, height = job.size
        return result_png_bound(width, height, job.bit_depth) + preview_bound(job.params, job.size)

    def _fail(self, job: Job, message: str, code: ErrorCode) -> None:
        log.warning("job %s failed: %s", job.id, message)
        with self._lock:
            self._finish(job, JobState.FAILED, message, code)

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
                            job.state in (JobState.QUEUED, JobState.RUNNING)
                            and now - job.last_seen > self.abandon_after_s
                        ):
                            self._cancel_locked(
                                job,
                                f"cancelled: no client asked about this job for "
                                f"{self.abandon_after_s:g} s (abandoned)",
                            )
                for job in list(self._jobs.values()):
                    if job.finished is not None and now - job.finished > self.ttl_s:
                        self._forget(job)
                self._wake.wait(self._tick_s)


# --- memory estimates (no TensorFlow: the engine's part comes from its plan) -------------------


def result_png_bound(width: int, height: int, bit_depth: int) -> int:
    """Bytes a result PNG can take at most: its raw rows (RGBA) plus zlib's worst case."""
    raw = height * (1 + width * 4 * bit_depth // 8)
    return raw + raw // 1000 + 64 * 1024


def preview_bound(params: StyleParams, size: tuple[int, int]) -> int:
    """Bytes the cached preview PNG can take (at most the processing size, 8-bit RGB)."""
    longest = params.max_size or max(size)
    scale = min(1.0, longest / max(size))
    return result_png_bound(int(size[0] * scale) + 1, int(size[1] * scale) + 1, 8)


def job_needs(inputs: JobInputs, params: StyleParams, engine_peak_bytes: int) -> JobNeeds:
    """The job's reservation: ``engine_peak_bytes`` is its plan's (the engine's work, its
    float32 inputs included); to it come decoding (the largest image's transient), the
    starting image, and encoding the result (a float copy, the samples, the PNG)."""
    content = inputs.content.info
    init = inputs.init.info.decoded_bytes if inputs.init is not None else 0
    decoding = max(u.info.decode_peak_bytes for u in inputs.uploads)
    encoding = content.pixels * (4 * 4 * 2 + 8) + result_png_bound(
        content.width, content.height, content.bit_depth
    )
    run = engine_peak_bytes + init + decoding + encoding
    held = inputs.nbytes + result_png_bound(content.width, content.height, content.bit_depth)
    held += preview_bound(params, content.size)
    return JobNeeds(held=held, run=run)
