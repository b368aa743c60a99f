"""What both job queues share: job states and error codes, a job's inputs, the queue's
interface, and the memory a job needs.

Two queues implement :class:`JobQueue`: the in-process one (nst_server/jobs.py: one worker
thread in the server) and a studio's (nst_server/studio.py: jobs in Redis, run by worker
processes). The API layer (nst_server/api.py) talks to either through this interface and turns
its answers and exceptions into HTTP. No HTTP, Flask or TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import numpy as np

from nst_server.images import DecodedImage, ImageError, ImageInfo, decode_image, mask_from_image
from nst_server.params import StyleParams


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


def abandoned_message(abandon_after_s: float) -> str:
    """The error of a job cancelled because no client asked about it for ``abandon_after_s``."""
    return f"cancelled: no client asked about this job for {abandon_after_s:g} s (abandoned)"


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


class ArtistQueueFull(QueueFull):
    """This artist already has ``capacity`` jobs waiting (a studio's per-artist cap)."""

    def __init__(self, capacity: int) -> None:
        Exception.__init__(
            self,
            f"you already have {capacity} job(s) waiting, this server's limit per artist "
            "(artist_queue_cap); wait for one to start, or cancel one",
        )
        self.capacity = capacity


class BrokerUnavailable(Exception):  # noqa: N818 - an outcome, like QueueFull
    """The studio's Redis cannot be reached; the message says where and what to do."""


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


@dataclass(frozen=True)
class JobView:
    """What the API needs to know of a job to decide who may see it and what its result
    request gets (the full view is :meth:`JobQueue.snapshot`)."""

    id: str
    owner: str
    state: JobState
    progress: dict[str, Any]
    error: str | None
    error_code: ErrorCode | None


@dataclass(frozen=True)
class JobSnapshot:
    """A job at one moment, as both queues report it; the API layer writes it as JSON
    (``api.job_json``: the wire format). ``position``: jobs ahead while queued;
    ``elapsed_s``: since it started."""

    view: JobView
    created: float
    size: tuple[int, int]
    styles: int
    bit_depth: int
    params: dict[str, Any]
    preview_step: int | None
    version: int
    position: int | None
    elapsed_s: float | None
    finished_early: bool


class JobQueue(Protocol):
    """A queue of style jobs, as the API uses it. Every method may raise
    :class:`BrokerUnavailable` when the queue lives elsewhere and cannot be reached."""

    capacity: int

    @property
    def device(self) -> str:
        """What the defaults of a job's params are chosen for ("cpu" or "gpu")."""
        ...

    @property
    def status(self) -> str:
        """ "ok" when jobs can run, "loading" before, "error" when they cannot."""
        ...

    @property
    def status_error(self) -> str | None: ...

    def start(self) -> None: ...

    def close(self, timeout: float = 10.0) -> None: ...

    def submit(
        self,
        inputs: JobInputs,
        params: StyleParams,
        *,
        needs: JobNeeds | None = None,
        owner: str = "",
        replacing: object | None = None,
    ) -> JobView:
        """Queue a job (QueueFull, ArtistQueueFull, the budget's refusals)."""
        ...

    def get(self, job_id: str, *, touch: bool = True) -> JobView | None: ...

    def touch(self, job_id: str) -> None: ...

    def snapshot(self, job_id: str, *, touch: bool = True) -> JobSnapshot | None: ...

    def wait_snapshot(self, job_id: str, since: int, timeout: float) -> JobSnapshot | None: ...

    def wait_done(self, job_id: str, timeout: float) -> JobView | None:
        """Wait up to ``timeout`` s for the job to end; its view (None: unknown)."""
        ...

    def result_png(self, job_id: str) -> bytes | None: ...

    def preview_png(self, job_id: str, longest: int = PREVIEW_SIZE) -> bytes | None: ...

    def cancel(
        self, job_id: str, reason: str = "cancelled by the client"
    ) -> JobSnapshot | None: ...

    def finish(self, job_id: str) -> JobSnapshot | None: ...

    def list_jobs(self, owner: str | None) -> list[JobSnapshot]:
        """Snapshots of ``owner``'s jobs, oldest first (None: everyone's)."""
        ...

    def stats(self) -> dict[str, Any]: ...

    def health(self) -> dict[str, Any]:
        """What ``/v1/health`` adds for a caller with a token: where jobs run."""
        ...


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
