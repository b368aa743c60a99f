"""A job's life on the server as the plug-in sees it: submit, poll (long polls where the server
offers them) to the end, fetch the result; progress as text for the artist.

:class:`JobTracker` is one accepted job, polled one status request at a time (the window's
controller steps it between other work); :func:`run_job` drives one to its end (the PDB
procedure, scripts, benchmarks).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .client import NstClient
from .errors import (
    JobCancelled,
    JobLost,
    NstError,
    ServerError,
    ServerUnreachable,
    how_to_start,
)
from .png import png_size

#: Poll period against a server without long polls, and the retry period when the server does
#: not answer. The server cancels a job nobody polled for 30 s, so anything well below that.
POLL_INTERVAL_S = 0.5

#: Long poll: the server holds each status request up to this long and answers when the job
#: changes (at once when it ends, at most 5 times a second for progress), so the end of a job is
#: seen at once rather than up to a poll period late.
LONG_POLL_S = 5.0

#: How often a poll that finds nothing listening is retried before the job counts as lost:
#: rides over a momentary hiccup, and stays well below the server's abandonment time.
LOST_RETRIES = 3

FINAL_STATES = ("done", "failed", "cancelled")

ProgressCallback = Callable[[float | None, str], None]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(math.ceil(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def plan_text(plan: Mapping[str, Any]) -> str:
    """What the artist reads before Run, from ``NstClient.plan`` asked with ``upscale:
    detail``: the processing size, the enlargement to the layer, and what "Restore detail"
    costs against "Plain"."""
    side = max(plan["processing_size"])
    enlargement = float(plan["enlargement"])
    if enlargement < 1.05:
        return f"Processed at the layer's own size, {side} px."
    return (
        f"Processed at {side} px, then enlarged ×{enlargement:.1f} to the layer. Up-scale "
        f'"Restore detail" paints the layer\'s own scale and takes about '
        f'{float(plan["work_vs_plain"]):.1f}× as long as "Plain".'
    )


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def progress_fraction(status: Mapping[str, Any]) -> float | None:
    """How much of the job is done, 0..1, or None while that is unknown."""
    progress = status.get("progress") or {}
    step, total = _number(progress.get("step")), _number(progress.get("total"))
    if status.get("state") == "done":
        return 1.0
    if step is None or total is None or total <= 0:
        return None
    return min(1.0, max(0.0, step / total))


def progress_text(status: Mapping[str, Any]) -> tuple[float | None, str]:
    """(fraction done or None when unknown, text for GIMP's progress bar) of a job status."""
    state = status.get("state", "?")
    progress = status.get("progress") or {}
    if state == "queued":
        ahead = progress.get("queue_position") or progress.get("position")
        return None, (
            f"Neural style: waiting for the server ({ahead} ahead)"
            if ahead
            else "Neural style: waiting for the server"
        )
    step, total = _number(progress.get("step")), _number(progress.get("total"))
    phase = progress.get("phase") or state
    scale, scales = _number(progress.get("scale")), _number(progress.get("scales"))
    # Coarse to fine: "pass 2/3" tells the user why the picture sharpens in jumps.
    passes = f"pass {int(scale)}/{int(scales)}, " if scale and scales and scales > 1 else ""
    note = progress.get("note")
    suffix = f" ({note})" if isinstance(note, str) and note else ""
    fraction = progress_fraction(status)
    if fraction is not None and step is not None and total is not None:
        text = f"Neural style: {passes}step {int(step)}/{int(total)}"
        eta = _number(progress.get("eta_s"))
        if eta is not None and eta >= 0 and step > 0:
            text += f", about {format_duration(eta)} left"
        return fraction, text + suffix
    return None, f"Neural style: {passes}{phase}{suffix}"


def processing_size(status: Mapping[str, Any]) -> int | None:
    """The longer side, in pixels, the job is (or was last) processed at."""
    size = (status.get("progress") or {}).get("size")
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return max(size)
    return None


def job_lost_message(client: NstClient, why: str) -> str:
    return (
        f"The neural style server stopped or restarted while working on this job ({why}), so "
        f"the job was lost: start it again (the plug-in starts it by itself on the next run if "
        f"the installer recorded how; otherwise: {how_to_start(client.base_url)}) and retry."
    )


class JobTracker:
    """One job the server accepted, polled one status request at a time.

    :meth:`poll` answers the job's next snapshot; it raises ServerError with the job's own
    message when it failed, JobCancelled when it was cancelled on the server, JobLost when the
    server stopped or restarted (nothing answers, or it no longer knows the id).
    """

    def __init__(
        self,
        client: NstClient,
        job_id: str,
        *,
        poll_interval: float = POLL_INTERVAL_S,
        long_poll: float = LONG_POLL_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.poll_interval = poll_interval
        self.long_poll = long_poll
        self.sleep = sleep
        self.last: dict[str, Any] | None = None
        self.notes: list[str] = []
        self._version: int | None = None
        self._plain_polls = False
        self._preview_mark: Any = None

    def _call(self, call: Callable[[str], Any]) -> Any:
        """One call about the accepted job; lost-job symptoms become JobLost."""
        for attempt in range(LOST_RETRIES + 1):
            try:
                return call(self.job_id)
            except ServerUnreachable as exc:
                if attempt == LOST_RETRIES:
                    raise JobLost(job_lost_message(self.client, f"{exc}")) from None
                self.sleep(self.poll_interval)
            except ServerError as exc:
                # The server answered but forgot the id it gave us: a new process.
                if exc.status == 404:
                    raise JobLost(
                        job_lost_message(self.client, "it no longer knows the job")
                    ) from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def poll(self) -> dict[str, Any]:
        if self._plain_polls:
            self.sleep(self.poll_interval)
        status = self._call(
            functools.partial(self.client.status, since=self._version, wait=self.long_poll)
        )
        self.last = status
        state = status.get("state")
        note = (status.get("progress") or {}).get("note")
        if isinstance(note, str) and note and note not in self.notes:
            self.notes.append(note)
        if state == "failed":
            raise ServerError(
                f"The neural style job failed: {status.get('error') or 'no reason given'}"
            )
        if state == "cancelled":
            raise JobCancelled(
                "The neural style job was cancelled on the server"
                + (f": {status['error']}" if status.get("error") else "")
            )
        if state not in ("queued", "running", "done"):
            raise ServerError(f"The server reported an unknown job state {state!r:.60}")
        version = status.get("version") if self.long_poll > 0 else None
        self._version = version if isinstance(version, int) else None
        # A server without long polls answers at once: pace the next poll ourselves.
        self._plain_polls = self._version is None
        return status

    def has_new_preview(self) -> bool:
        """Whether the last snapshot announces a preview not seen yet (``preview_step`` where
        the server sends it, else the step of a job that has a preview)."""
        status = self.last or {}
        mark = status.get("preview_step")
        if mark is None and status.get("preview"):
            mark = (status.get("progress") or {}).get("step")
        if mark is None or mark == self._preview_mark:
            return False
        self._preview_mark = mark
        return True

    def result(self, size: tuple[int, int] | None = None) -> bytes:
        return self._call(functools.partial(self.client.result, size=size))

    def cancel_quietly(self) -> None:
        """Free the server at once (our own error, a timeout, Ctrl-C); best effort."""
        if self.last is not None and self.last.get("state") in FINAL_STATES:
            return
        with contextlib.suppress(NstError):
            self.client.cancel(self.job_id)


def run_job(
    client: NstClient,
    content_png: bytes,
    style_pngs: Sequence[bytes],
    params: Mapping[str, Any] | None,
    progress: ProgressCallback | None = None,
    poll_interval: float = POLL_INTERVAL_S,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    *,
    long_poll: float = LONG_POLL_S,
    mask_png: bytes | None = None,
    init_png: bytes | None = None,
    on_note: Callable[[str], None] | None = None,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> bytes:
    """Submit a job, poll it to the end feeding ``progress``, and return the result PNG.

    Raises as :meth:`JobTracker.poll` does. ``on_note`` is called once with each distinct
    ``note`` the server attaches to the progress (e.g. "processed at a smaller size: memory"),
    so the caller can tell the user rather than bury it in a progress bar. ``on_status`` sees
    every status answer as it arrives (the last one carries e.g. ``progress.size``, the
    processing size, and ``progress.engine_s``, the server's optimisation time). If this process
    is killed (GIMP's Cancel), polling stops and the server cancels the job itself.
    """
    report = progress or (lambda fraction, text: None)
    try:
        size: tuple[int, int] | None = png_size(content_png)  # the result's: bounds its reading
    except ValueError:
        size = None  # the server will say what is wrong with the photo
    report(None, "Neural style: sending the images")
    job_id = client.submit(content_png, style_pngs, params, mask_png=mask_png, init_png=init_png)
    tracker = JobTracker(
        client, job_id, poll_interval=poll_interval, long_poll=long_poll, sleep=sleep
    )
    started = time.monotonic()
    told = 0  # notes passed on so far
    try:
        while True:
            status = tracker.poll()
            if on_status:
                on_status(status)
            for note in tracker.notes[told:]:
                if on_note:
                    on_note(note)
            told = len(tracker.notes)
            if status["state"] == "done":
                report(1.0, "Neural style: fetching the result")
                return tracker.result(size=size)
            report(*progress_text(status))
            if timeout is not None and time.monotonic() - started > timeout:
                raise NstError(
                    f"The neural style job took longer than "
                    f"{format_duration(timeout)}; it was cancelled"
                )
    except JobLost:
        raise  # nothing to cancel: the server has no such job any more
    except BaseException:
        tracker.cancel_quietly()
        raise
