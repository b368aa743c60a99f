"""The worker loop's parts shared by both queues: the engine's lifecycle and one job's run.

The in-process queue (nst_server/jobs.py) runs jobs on a thread of the server; a studio's
workers (nst_server/worker.py) each run them in their own process, fed through Redis. Both
hand a job to :func:`run_job` with a :class:`JobControl` of their own (where progress and
previews go, where cancel and finish come from) and get an :class:`Outcome` back: how the job
ended, with the error message and code a client reads. Errors are values here: nothing a job
does escapes ``run_job``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from nst_server.engine import Cancelled, EngineError, FinishEarly, Progress
from nst_server.images import ImageError, encode_png
from nst_server.jobmodel import ErrorCode, JobInputs, JobState, decode_inputs
from nst_server.params import StyleParams

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What a worker needs from ``nst_server.engine.StyleEngine`` (tests pass a fake)."""

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


class JobControl(Protocol):
    """A running job's link to its clients, as its queue keeps it."""

    def cancelled(self) -> bool:
        """A client cancelled the job (or abandoned it): stop within one step."""
        ...

    def finish_asked(self) -> bool:
        """A client asked to keep the picture so far: stop after this step, done."""
        ...

    def report(self, update: dict[str, Any], preview: np.ndarray | None, step: int | None) -> None:
        """Progress for clients; ``preview`` the current picture (None: unchanged)."""
        ...

    def decoded(self) -> None:
        """The uploads are decoded: their compressed bytes are no longer needed."""
        ...


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ``png`` when done; ``error`` and ``code`` otherwise (a cancelled job's
    message is its queue's, which knows why)."""

    state: JobState
    error: str | None = None
    code: ErrorCode | None = None
    png: bytes | None = None
    finished_early: bool = False
    engine_s: float | None = None


def is_out_of_memory(exc: BaseException) -> bool:
    """A MemoryError or TensorFlow's ResourceExhaustedError (told by name: no TF import here)."""
    if isinstance(exc, MemoryError):
        return True
    return any(cls.__name__ == "ResourceExhaustedError" for cls in type(exc).__mro__)


def internal_error(log_path: str | None) -> str:
    where = log_path or "the server's standard error"
    return f"internal error (see the server log at {where})"


class EngineHost:
    """The engine a worker owns: built once and kept warm, its status for ``/v1/health``
    ("loading", "ok", or "error" with why)."""

    def __init__(self, engine: Engine, *, log_path: str | None = None) -> None:
        self.engine = engine
        self.log_path = log_path
        self.status = "loading"
        self.status_error: str | None = None

    def ensure_loaded(self) -> str | None:
        """Build the network if needed; the reason it cannot be, or None when it is ready."""
        if self.engine.loaded:
            self.status, self.status_error = "ok", None
            return None
        self.status = "loading"
        started = time.monotonic()
        try:
            self.engine.load()
        except Exception as exc:  # noqa: BLE001 - reported in health and the job; worker stays
            message = (
                str(exc)
                if isinstance(exc, (EngineError, ValueError, OSError))
                else internal_error(self.log_path)
            )
            log.exception("building the network failed")
            self.status, self.status_error = "error", message
            return message
        log.info("network ready on %s in %.1f s", self.engine.device, time.monotonic() - started)
        self.status, self.status_error = "ok", None
        return None

    def unload(self) -> None:
        try:
            self.engine.unload()
        except Exception:
            log.exception("unloading the network failed")


def run_job(
    host: EngineHost,
    inputs: JobInputs,
    params: StyleParams,
    control: JobControl,
    *,
    bit_depth: int,
    max_pixels: int,
) -> Outcome:
    """Run one job to its end: load the network if need be, decode, stylise, encode."""
    if not host.engine.loaded:
        control.report({"phase": "loading"}, None, None)
    problem = host.ensure_loaded()
    if problem is not None:
        return Outcome(
            JobState.FAILED, f"the network could not be loaded: {problem}", ErrorCode.ENGINE_ERROR
        )
    seen: dict[str, Any] = {}  # the processing size reached, for the out-of-memory message
    early = False

    def on_progress(event: Progress) -> None:
        nonlocal early
        if control.cancelled():
            raise Cancelled
        update: dict[str, Any] = {
            "phase": event.phase,
            "step": event.step,
            "total": event.total,
            "eta_s": event.eta_s,
            "losses": {k: float(v) for k, v in event.losses.items()},
        }
        if event.size is not None:
            update["size"] = seen["size"] = list(event.size)
        if getattr(event, "result_size", None) is not None:  # with size: the enlargement
            update["result_size"] = list(event.result_size)
        if getattr(event, "scales", 1) > 1:  # coarse-to-fine: which pass this is
            update["scale"], update["scales"] = event.scale, event.scales
        if getattr(event, "note", None):
            update["note"] = event.note
        control.report(update, event.preview, event.step)
        if event.phase == "optimising" and control.finish_asked():
            early = True
            raise FinishEarly

    content_size = inputs.content.info.size
    try:
        if control.cancelled():
            raise Cancelled
        control.report({"phase": "preparing"}, None, None)  # decoding the uploads
        decoded = decode_inputs(inputs, max_pixels)
        control.decoded()
        engine_started = time.monotonic()
        result = host.engine.stylize(
            decoded.content,
            decoded.styles,
            params,
            on_progress,
            mask=decoded.mask,
            init_image=decoded.init_image,
        )
        del decoded
        # The engine's own time, so clients can tell it from transfer and encoding.
        engine_s = round(time.monotonic() - engine_started, 3)
        control.report({"phase": "encoding", "eta_s": None, "engine_s": engine_s}, None, None)
        png = encode_png(result, bit_depth=bit_depth)
        del result
        if control.cancelled():
            raise Cancelled
    except Cancelled:
        return Outcome(JobState.CANCELLED, code=ErrorCode.CANCELLED)
    except ImageError as exc:
        return Outcome(JobState.FAILED, str(exc), ErrorCode.BAD_IMAGE)
    except EngineError as exc:
        return Outcome(JobState.FAILED, str(exc), ErrorCode.ENGINE_ERROR)
    except ValueError as exc:
        return Outcome(JobState.FAILED, str(exc), ErrorCode.BAD_INPUT)
    except Exception as exc:  # noqa: BLE001 - sorted below; the worker must survive
        if is_out_of_memory(exc):
            # The real engine turns TF's ResourceExhaustedError into an EngineError itself;
            # this catches a raw one (or a MemoryError from numpy/scipy) from anywhere else.
            log.warning("out of memory: %s", type(exc).__name__)
            message = out_of_memory_message(content_size, seen.get("size"), params)
            return Outcome(JobState.FAILED, message, ErrorCode.OUT_OF_MEMORY)
        log.exception("a job failed with an internal error")  # our bug: tell where to look
        return Outcome(JobState.FAILED, internal_error(host.log_path), ErrorCode.INTERNAL)
    return Outcome(JobState.DONE, png=png, finished_early=early, engine_s=engine_s)


def out_of_memory_message(
    content_size: tuple[int, int], size: list[int] | None, params: StyleParams
) -> str:
    width, height = content_size
    at = f"{size[0]}x{size[1]} px" if size else f"max_size {params.max_size}"
    smaller = max(64, (max(size) if size else params.max_size or max(width, height)) // 2)
    return (
        f"out of memory while stylising a {width}x{height} picture at {at}: try a smaller "
        f"max_size (e.g. {smaller}), fewer style images, or close other programs using "
        "the memory; the server is still running"
    )
