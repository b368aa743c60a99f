"""The Neural Style window's logic, without GTK or GIMP: a queue of runs, their progress and
previews, Keep and Cancel, this image's history, presets, and closing with runs pending.

Threads. The window (GTK main loop) calls the methods below; none of them blocks on the
network. HTTP happens on threads the controller owns: ONE worker per window, which
submits runs one at a time and makes every status request (so a window has at most one status
request in flight, whatever the number of queued runs), a short-lived thread per Keep or
Cancel, and at most one asking for an estimate (``estimate``). What happens is reported through
``notify(Event)``, called on those threads (and on the caller's, for what a call changes at
once): the window passes a function that hands every event to its main loop
(``GLib.idle_add``), where GIMP calls (inserting the result layer, updating the preview layer)
are allowed.

    controller = StudioController(client, notify=lambda e: GLib.idle_add(window.on_event, e),
                                  presets=PresetStore(Gimp.directory() + "/neural-style/presets"))
    run_id = controller.submit(RunRequest(...))      # what to send: gathered by the window
    controller.keep(run_id); controller.cancel(run_id)
    if controller.close_needs_asking(): ...          # "Cancel them?"
    controller.close(cancel_pending=answer)

Events carry frozen snapshots (:class:`RunView`), never the live objects the worker changes.
"""

from __future__ import annotations

import collections
import contextlib
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .client import NstClient
from .errors import JobCancelled, JobLost, NstError, ServerError, ServerTooOld
from .jobs import (
    LONG_POLL_S,
    POLL_INTERVAL_S,
    JobTracker,
    format_duration,
    plan_text,
    processing_size,
    progress_fraction,
    progress_text,
)
from .options import BY_NAME, clean_settings, defaults
from .params import build_job_params, styles_to_send
from .png import RawImage, decode_png
from .presets import Preset, PresetStore
from .record import (
    Painting,
    ResultFacts,
    decode_result_record,
    encode_result_record,
    result_layer_name,
)
from .settings import ensure_server

# A run's states. WAITING: in this window's queue, not yet sent; SENDING: uploading; QUEUED:
# on the server, behind other work; RUNNING; KEEPING: Keep was pressed, the server is ending it
# after the current step. Then one of the final three.
WAITING, SENDING, QUEUED, RUNNING, KEEPING = "waiting", "sending", "queued", "running", "keeping"
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
FINAL = (DONE, FAILED, CANCELLED)

#: Previews are fetched at most this often: a step at a small size takes a fraction of a
#: second, and each picture costs the server an encoding and GIMP a layer update. A step that
#: takes longer gets its picture as soon as it is done.
PREVIEW_EVERY_S = 1.0

# Event kinds.
CHANGED = "changed"  # a run's progress, state or place in the queue changed
PREVIEW = "preview"  # a new picture of the active run: Event.preview_png
FINISHED = "finished"  # a run ended: Event.run.state is done (Event.result), failed or cancelled
MESSAGE = "message"  # something to tell the artist that is not a run's end (Event.message)
IDLE = "idle"  # no run is pending any more (after close(): the window may go)
ESTIMATE = "estimate"  # what a run with the window's settings would do (Event.message)


@dataclass(frozen=True)
class RunRequest:
    """What one run sends, gathered by the window on the main loop (GIMP calls), plus what its
    result layer records. ``target`` is the window's own handle (e.g. the photo layer), passed
    back untouched with the result."""

    content_png: bytes
    content_size: tuple[int, int]
    style_pngs: Sequence[bytes]
    paintings: Sequence[Painting]
    settings: Mapping[str, Any]
    source_id: int
    source_name: str
    mask_png: bytes | None = None
    init_png: bytes | None = None
    target: Any = None

    def label(self) -> str:
        names = " + ".join(p.name for p in self.paintings)
        strength = self.settings.get("strength", BY_NAME["strength"].default)
        return f"{names}, strength {strength:g}, seed {self.settings.get('seed', 0)}"


@dataclass(frozen=True)
class Result:
    """A finished run's picture, ready for a layer: decoded on the worker, so the main loop
    only copies pixels."""

    image: RawImage
    layer_name: str
    record: bytes
    facts: ResultFacts
    params: Mapping[str, Any]
    notes: Sequence[str]


@dataclass(frozen=True)
class RunView:
    """A run as the window shows it (a snapshot)."""

    id: int
    label: str
    state: str
    fraction: float | None
    text: str
    eta_s: float | None
    error: str | None
    place: int  # 0: the run being worked on; n: n runs ahead of it in this window
    target: Any

    @property
    def pending(self) -> bool:
        return self.state not in FINAL

    @property
    def can_keep(self) -> bool:
        return self.state == RUNNING

    @property
    def can_cancel(self) -> bool:
        return self.pending


@dataclass(frozen=True)
class Event:
    kind: str
    run: RunView | None = None
    preview_png: bytes | None = None
    result: Result | None = None
    message: str | None = None


@dataclass
class _Run:
    id: int
    request: RunRequest
    state: str = WAITING
    fraction: float | None = None
    text: str = "Waiting for the runs before it"
    eta_s: float | None = None
    error: str | None = None
    job_id: str | None = None
    cancel_requested: bool = False
    started: float | None = None
    ended: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HistoryEntry:
    """One of this image's results, from its layer's record."""

    layer_id: int
    layer_name: str
    record: Mapping[str, Any]
    thumbnail: Any = None  # the window's, e.g. a GdkPixbuf of the layer

    def facts(self) -> list[str]:
        """The facts worth showing, each a short phrase, unknown ones left out."""
        r = self.record
        out = [r.get("style") or "?"]
        if r.get("strength") is not None:
            out.append(f"strength {r['strength']:g}")
        if r.get("processing_size"):
            out.append(f"{r['processing_size']} px")
        if r.get("steps"):
            out.append(f"{r['steps']} steps" + (" (kept early)" if r["finished_early"] else ""))
        if r.get("seed") is not None:
            out.append(f"seed {r['seed']}")
        if r.get("time_s") is not None:
            out.append(format_duration(r["time_s"]))
        if r.get("engine_version") is not None:
            out.append(f"engine {r['engine_version']}")
        return out


def history_from_layers(layers: Iterable[tuple[int, str, Any, Any]]) -> list[HistoryEntry]:
    """This image's results, newest (top-most) first, from (layer id, layer name, parasite
    data or None, thumbnail) of its layers, top to bottom; layers without a record are not
    results and are skipped."""
    entries = []
    for layer_id, name, data, thumbnail in layers:
        record = decode_result_record(data)
        if record is not None:
            entries.append(HistoryEntry(layer_id, name, record, thumbnail))
    return entries


class StudioController:
    """One window's runs, history and presets. See the module's docstring for the threads."""

    def __init__(
        self,
        client: NstClient,
        *,
        notify: Callable[[Event], None],
        presets: PresetStore | None = None,
        start_command: str | Sequence[str] | None = None,
        preview_size: int | None = None,
        preview_every_s: float = PREVIEW_EVERY_S,
        long_poll: float = LONG_POLL_S,
        poll_interval: float = POLL_INTERVAL_S,
        warm_up: bool = False,
    ) -> None:
        self.client = client
        self.presets = presets
        self.preview_size = preview_size
        self._preview_every_s = preview_every_s
        self._last_preview = -math.inf
        self._notify = notify
        self._start_command = start_command
        self._long_poll = long_poll
        self._poll_interval = poll_interval
        self._schema: dict[str, Any] | None = None
        self._runs: dict[int, _Run] = {}
        self._waiting: collections.deque[_Run] = collections.deque()
        self._active: _Run | None = None
        self._durations: list[float] = []  # seconds each finished run took, for queue ETAs
        self._ids = 0
        self._warm_up = warm_up
        self._estimate_wanted: tuple[tuple[int, int], dict[str, Any]] | None = None
        self._estimating = False
        self._closing = False
        self._lock = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="nst-window-worker", daemon=True)
        self._worker.start()

    # -- what the window calls (main loop; never blocks on the network) ------------------------

    @staticmethod
    def styles_to_send(settings: Mapping[str, Any], use_file: bool, has_second: bool) -> list[str]:
        """Which paintings to read for a run (option names), before building its request."""
        share = float(settings.get("style-blend", BY_NAME["style-blend"].default))
        return styles_to_send(share, use_file, has_second)

    def submit(self, request: RunRequest) -> int:
        """Queue a run; returns its id. Runs go to the server one at a time, in order."""
        with self._lock:
            if self._closing:
                raise NstError("This Neural Style window is closing: open it again to run.")
            self._ids += 1
            run = _Run(self._ids, request)
            self._runs[run.id] = run
            self._waiting.append(run)
            self._lock.notify_all()
        self._changed_all()
        return run.id

    def estimate(self, size: tuple[int, int], settings: Mapping[str, Any]) -> None:
        """Ask, off the main loop, what a run with ``settings`` on a photo of ``size`` (width,
        height) would do; the answer comes as an ESTIMATE event (empty text when the server
        cannot say). Only the latest question is answered: settings change faster than the
        server answers."""
        with self._lock:
            self._estimate_wanted = (size, dict(settings))
            if self._estimating:
                return
            self._estimating = True
        threading.Thread(target=self._estimates, name="nst-window-estimate", daemon=True).start()

    def keep(self, run_id: int) -> None:
        """Stop the run after its current step and keep that picture as the result."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.state != RUNNING or run.job_id is None:
                return
            run.state, run.text = KEEPING, "Keeping the picture so far"
            job_id = run.job_id
        self._emit(CHANGED, run)
        self._command(self._finish, run, job_id)

    def cancel(self, run_id: int) -> None:
        """Cancel a run: a waiting one never goes to the server; a sent one is cancelled there
        (the worker then sees it end)."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.state in FINAL or run.cancel_requested:
                return
            run.cancel_requested = True
            if run.state == WAITING:
                self._waiting.remove(run)
                self._end(run, CANCELLED, "Cancelled")
                job_id = None
            else:
                run.text = "Cancelling"
                job_id = run.job_id
        self._emit(FINISHED if run.state == CANCELLED else CHANGED, run)
        if job_id is not None:
            self._command(self.client.cancel, job_id)
        self._changed_all()
        self._maybe_idle()

    def use_client(self, client: NstClient) -> None:
        """Send later runs to another server (the artist changed its URL or token); refused
        while runs are pending, whose Keep and Cancel go to the server they were sent to."""
        if self.pending():
            raise NstError("Wait for the pending runs to end before changing the server.")
        self.client = client
        self._schema = None

    def cancel_all(self) -> None:
        for run in self.runs():
            self.cancel(run.id)

    def runs(self) -> list[RunView]:
        """Every run of this window, in the order they were queued."""
        with self._lock:
            return [self._view(run) for run in self._runs.values()]

    def pending(self) -> list[RunView]:
        return [run for run in self.runs() if run.pending]

    def close_needs_asking(self) -> bool:
        """Whether closing must ask "Cancel them?" (runs are pending)."""
        return bool(self.pending())

    def close(self, cancel_pending: bool) -> None:
        """Stop taking runs. ``cancel_pending``: cancel the pending ones; otherwise they finish
        and their results land as usual. An IDLE event follows when nothing is pending."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if cancel_pending:
            self.cancel_all()
        self._maybe_idle()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no run is pending (tests, and a plug-in process about to end)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(run.state not in FINAL for run in self._runs.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
        return True

    # -- history and presets (pure; main loop) -------------------------------------------------

    @staticmethod
    def restore(entry: HistoryEntry) -> dict[str, Any]:
        """The settings a result was made with (defaults for what its record lacks)."""
        return {**defaults(), **clean_settings(entry.record.get("settings") or {})[0]}

    @staticmethod
    def again(entry: HistoryEntry, rng: random.Random | None = None) -> dict[str, Any]:
        """The settings of ``entry`` with a new seed: "Again"."""
        settings = StudioController.restore(entry)
        seed_option = BY_NAME["seed"]
        old = entry.record.get("seed", settings["seed"])
        rng = rng or random.Random()
        new = old
        while new == old:
            new = rng.randint(int(seed_option.minimum), int(seed_option.maximum))
        return {**settings, "seed": new}

    def presets_list(self) -> tuple[list[Preset], list[str]]:
        """(presets, a message for each file that could not be read)."""
        return self._store().load_all()

    def apply_preset(self, name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """``settings`` with the preset's look applied (layers and server untouched)."""
        return {**settings, **self._store().get(name).settings}

    def save_preset(self, name: str, settings: Mapping[str, Any]) -> None:
        self._store().save(name, dict(settings))

    def delete_preset(self, name: str) -> None:
        self._store().delete(name)

    def _store(self) -> PresetStore:
        if self.presets is None:
            raise NstError("Presets are not available in this window.")
        return self.presets

    # -- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        if self._warm_up:
            self._prepare_quietly()
        while True:
            with self._lock:
                while not self._waiting and not self._closing:
                    self._lock.wait()
                if not self._waiting:
                    return  # closing, and nothing left to do
                run = self._waiting.popleft()
                self._active = run
                run.state, run.text = SENDING, "Sending the images"
                run.started = time.monotonic()
            self._changed_all()
            try:
                self._execute(run)
            finally:
                with self._lock:
                    self._active = None
                    self._lock.notify_all()
                self._changed_all()
                self._maybe_idle()

    def _execute(self, run: _Run) -> None:
        request = run.request
        tracker: JobTracker | None = None
        try:
            if self._schema is None:
                ensure_server(self.client, self._start_command, report=lambda t: self._say(run, t))
            run.params = build_job_params(
                self._server_params(self.client), request.settings, styles=len(request.style_pngs)
            )
            job_id = self.client.submit(
                request.content_png,
                request.style_pngs,
                run.params,
                mask_png=request.mask_png,
                init_png=request.init_png,
            )
            with self._lock:
                run.job_id = job_id
                cancel_now = run.cancel_requested
            if cancel_now:  # Cancel was pressed while the images went up
                self.client.cancel(job_id)
            tracker = JobTracker(
                self.client, job_id, poll_interval=self._poll_interval, long_poll=self._long_poll
            )
            while True:
                status = tracker.poll()
                self._progress(run, status)
                if status["state"] == DONE:
                    break
                if self.preview_size is not None and tracker.has_new_preview():
                    self._preview_when_due(run, job_id)
            result = self._result(run, tracker)
        except JobCancelled:
            self._finish_run(run, CANCELLED, "Cancelled")
        except NstError as exc:
            with self._lock:
                cancelled = run.cancel_requested
            if tracker is not None and not isinstance(exc, JobLost):
                tracker.cancel_quietly()  # our side gave up: free the server (unless it ended)
            if cancelled:
                self._finish_run(run, CANCELLED, "Cancelled")
            else:
                self._finish_run(run, FAILED, str(exc))
                self._schema = None  # a restarted or replaced server: ask again next time
        except Exception as exc:  # noqa: BLE001 - a bug must end the run, not the worker
            self._finish_run(run, FAILED, f"Neural Style failed unexpectedly: {exc!r}")
            if tracker is not None:
                tracker.cancel_quietly()
        else:
            self._finish_run(run, DONE, "Done", result)

    def _estimates(self) -> None:
        while True:
            with self._lock:
                wanted, self._estimate_wanted = self._estimate_wanted, None
                if wanted is None or self._closing:
                    self._estimating = False
                    return
            size, settings = wanted
            client = self.client
            try:
                params = build_job_params(self._server_params(client), settings)
                params["upscale"] = "detail"  # its plan also says what plain would do
                text = plan_text(client.plan(size, params))
            except (NstError, ValueError, TypeError):  # no estimate; a run would say why
                text = ""
            self._notify(Event(ESTIMATE, message=text))

    def _prepare_quietly(self) -> None:
        """While the artist chooses: the server started if needed, its parameters known, so
        the first Run goes straight to work. A failure here is reported by the run itself."""
        client = self.client
        with contextlib.suppress(NstError):
            ensure_server(
                client,
                self._start_command,
                report=lambda text: self._notify(Event(MESSAGE, message=text)),
            )
            self._server_params(client)

    def _server_params(self, client: NstClient) -> dict[str, Any]:
        """The server's parameters (``GET /v1/params``), asked once and kept while ``client``
        is still the window's (new settings, a new client: asked again)."""
        schema = self._schema
        if schema is None:
            schema = client.params()
            if self.client is client:
                self._schema = schema
        return schema

    def _say(self, run: _Run, text: str) -> None:
        with self._lock:
            run.text = text
        self._emit(CHANGED, run)

    def _progress(self, run: _Run, status: Mapping[str, Any]) -> None:
        fraction, text = progress_text(status)
        with self._lock:
            if run.state != KEEPING:
                run.state = QUEUED if status["state"] == "queued" else RUNNING
                run.text = text
            run.fraction = progress_fraction(status) if fraction is None else fraction
            eta = (status.get("progress") or {}).get("eta_s")
            run.eta_s = float(eta) if isinstance(eta, (int, float)) else None
        self._changed_all()

    def _preview_when_due(self, run: _Run, job_id: str) -> None:
        """The newest picture, no sooner than PREVIEW_EVERY_S after the last one."""
        wait = self._last_preview + self._preview_every_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_preview = time.monotonic()
        self._preview(run, job_id)

    def _preview(self, run: _Run, job_id: str) -> None:
        try:
            png = self.client.preview(job_id, size=self.preview_size)
        except NstError:
            return  # no preview this time (not ready, an older server): the run goes on
        self._emit(PREVIEW, run, preview_png=png)

    def _result(self, run: _Run, tracker: JobTracker) -> Result:
        request = run.request
        png = tracker.result(size=request.content_size)
        try:
            image = decode_png(png, expected_size=request.content_size)
        except ValueError as exc:
            raise NstError(f"The server's result could not be read: {exc}") from None
        status = tracker.last or {}
        progress = status.get("progress") or {}
        step = progress.get("step")
        facts = ResultFacts(
            processing_size=processing_size(status),
            steps=step if isinstance(step, int) else run.params.get("iterations"),
            time_s=time.monotonic() - (run.started or time.monotonic()),
            engine_version=status.get("engine_version"),
            finished_early=progress.get("finished_early") is True,
        )
        record = encode_result_record(
            request.source_id,
            request.source_name,
            request.paintings,
            request.settings,
            run.params,
            facts,
        )
        name = result_layer_name(
            [p.name for p in request.paintings], facts.processing_size, request.content_size
        )
        return Result(image, name, record, facts, dict(run.params), list(tracker.notes))

    def _finish_run(self, run: _Run, state: str, text: str, result: Result | None = None) -> None:
        with self._lock:
            self._end(run, state, text)
            if state == DONE and run.started is not None and run.ended is not None:
                self._durations.append(run.ended - run.started)
        self._emit(FINISHED, run, result=result)

    def _end(self, run: _Run, state: str, text: str) -> None:  # lock held
        run.state, run.ended = state, time.monotonic()
        if state == FAILED:
            run.error, run.text = text, "Failed"
        else:
            run.text = text
        run.fraction = 1.0 if state == DONE else run.fraction
        run.eta_s = None
        self._lock.notify_all()

    # -- commands (Keep, Cancel): one short thread each -----------------------------------------

    def _command(self, call: Callable[..., Any], *args: Any) -> None:
        def run_it() -> None:
            with contextlib.suppress(NstError):  # the worker sees the job's real end
                call(*args)

        threading.Thread(target=run_it, name="nst-window-command", daemon=True).start()

    def _finish(self, run: _Run, job_id: str) -> None:
        try:
            self.client.finish(job_id, job_known=True)
        except ServerTooOld as exc:
            with self._lock:
                if run.state == KEEPING:
                    run.state, run.text = RUNNING, "Running (this server cannot keep early)"
            self._emit(MESSAGE, run, message=str(exc))
        except ServerError as exc:
            if exc.status != 409:  # 409: it ended or was never running: the worker sees that
                self._emit(MESSAGE, run, message=str(exc))

    # -- events --------------------------------------------------------------------------------

    def _view(self, run: _Run) -> RunView:  # lock held
        if run.state == WAITING:
            place = 1 + list(self._waiting).index(run) + (self._active is not None)
        else:
            place = 0
        return RunView(
            id=run.id,
            label=run.request.label(),
            state=run.state,
            fraction=run.fraction,
            text=run.text,
            eta_s=run.eta_s if run.state != WAITING else self._queue_eta(run),
            error=run.error,
            place=place,
            target=run.request.target,
        )

    def _queue_eta(self, run: _Run) -> float | None:  # lock held
        """A waiting run's time to its end: what the active run has left plus, for each run
        up to this one, the median of the runs this window finished so far."""
        if not self._durations:
            return None
        typical = sorted(self._durations)[len(self._durations) // 2]
        ahead = list(self._waiting).index(run) + 1
        active_left = 0.0
        if self._active is not None:
            active_left = self._active.eta_s if self._active.eta_s is not None else typical
        return active_left + ahead * typical

    def _emit(self, kind: str, run: _Run | None, **extra: Any) -> None:
        with self._lock:
            view = self._view(run) if run is not None else None
        self._notify(Event(kind, view, **extra))

    def _changed_all(self) -> None:
        """Places and queue ETAs move together: report every pending run."""
        with self._lock:
            views = [self._view(run) for run in self._runs.values() if run.state not in FINAL]
        for view in views:
            self._notify(Event(CHANGED, view))

    def _maybe_idle(self) -> None:
        with self._lock:
            idle = self._closing and all(run.state in FINAL for run in self._runs.values())
        if idle:
            self._notify(Event(IDLE))


__all__ = [
    "CANCELLED",
    "CHANGED",
    "DONE",
    "FAILED",
    "FINISHED",
    "IDLE",
    "KEEPING",
    "MESSAGE",
    "PREVIEW",
    "QUEUED",
    "RUNNING",
    "SENDING",
    "WAITING",
    "Event",
    "HistoryEntry",
    "Result",
    "RunRequest",
    "RunView",
    "StudioController",
    "history_from_layers",
]
