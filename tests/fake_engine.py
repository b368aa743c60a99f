"""A fast fake of the engine for tests that run the job queue or the app in-process, and
``wait_for`` to poll what they do.

The fake is for one-layer tests only; tests/api/test_server_live.py and tests/reliability/
test_live.py prove the whole server on the real engine (tests/live_server.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from nst_server.engine import EngineError, Progress
from nst_server.params import StyleParams

MODES = ("ok", "engine_error", "value_error", "crash", "oom", "memory_error")
PHASES = ("loading", "preparing", "optimising")


class FakeEngine:
    """Same interface as StyleEngine; returns the content with its red channel inverted.

    Progress is reported the way the real engine does: preparing, then one event per step; a
    cancelled job's ``on_progress`` raises ``Cancelled`` at the next event.

    - ``step_s``: seconds each step sleeps (for cancellation tests); ``load_s`` for load().
    - ``mode`` (may be changed between jobs): "ok"; or the job fails after "preparing" with
      "engine_error" (EngineError), "value_error", "crash" (a bug: RuntimeError), "oom"
      (TF's ResourceExhaustedError), "memory_error". ``fail_with``, when set, is raised there
      instead, whatever the mode.
    - ``hold(phase)`` (one of PHASES) makes the next job wait in that phase until
      ``release()``; ``reached`` is set once it waits there ("optimising": after step 1).
    - ``calls`` records what stylize received (``mask`` and ``init_image`` included) unless
      ``record_calls`` is False (long fuzzing runs); ``started`` is set when a stylize call
      begins; ``steps_done``, ``loads`` and ``unloads`` count.
    """

    device = "cpu"
    precision = "float32"
    weights_description = "fake weights (tests)"

    def __init__(
        self,
        *,
        mode: str = "ok",
        step_s: float = 0.0,
        load_s: float = 0.0,
        record_calls: bool = True,
    ) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.step_s = step_s
        self.load_s = load_s
        self.record_calls = record_calls
        self.fail_with: BaseException | None = None
        self.loaded = False
        self.loads = 0
        self.unloads = 0
        self.calls: list[dict] = []
        self.started = threading.Event()  # set when a stylize call begins
        self.steps_done = 0
        self.held: str | None = None
        self.reached = threading.Event()
        self._gate = threading.Event()

    # gates

    def hold(self, phase: str) -> None:
        assert phase in PHASES, phase
        self.held, self.reached = phase, threading.Event()
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def _maybe_wait(self, phase: str) -> None:
        if self.held == phase:
            self.reached.set()
            assert self._gate.wait(10), f"test never released the {phase} gate"
            self.held = None

    # the engine interface

    def load(self) -> None:
        if not self.loaded:
            self._maybe_wait("loading")
            time.sleep(self.load_s)
            self.loads += 1
            self.loaded = True

    def unload(self) -> None:
        self.unloads += 1
        self.loaded = False

    def stylize(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        params: StyleParams,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        mask: np.ndarray | None = None,
        init_image: np.ndarray | None = None,
    ) -> np.ndarray:
        assert self.loaded, "the queue must load the engine before a job"
        if self.record_calls:
            self.calls.append(
                {
                    "content": content,
                    "styles": list(styles),
                    "params": params,
                    "mask": mask,
                    "init_image": init_image,
                }
            )
        self.started.set()
        notify = on_progress or (lambda event: None)
        h, w = content.shape[:2]
        notify(
            Progress(phase="preparing", step=0, total=params.iterations, elapsed_s=0.0, size=(w, h))
        )
        self._maybe_wait("preparing")
        self._fail()
        steps = params.iterations
        for step in range(1, steps + 1):
            if self.step_s:
                time.sleep(self.step_s)
            self.steps_done += 1
            preview = np.full((h, w, 3), step / steps, dtype=np.float32)
            notify(
                Progress(
                    phase="optimising",
                    step=step,
                    total=steps,
                    elapsed_s=0.01 * step,
                    eta_s=0.01 * (steps - step),
                    losses={"total": 1.0 / step, "content": 0.5, "style": 0.5, "tv": 0.0},
                    size=(w, h),
                    preview=preview,
                )
            )
            if step == 1:
                self._maybe_wait("optimising")
        out = content.copy()
        out[..., 0] = 1.0 - out[..., 0]
        return out

    def _fail(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if self.mode == "engine_error":
            raise EngineError("out of memory at 64x64 px: try a smaller max_size")
        if self.mode == "value_error":
            raise ValueError("content: image must be H x W x 3")
        if self.mode == "oom":  # what TensorFlow raises when an allocation fails
            import tensorflow as tf

            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        if self.mode == "memory_error":
            raise MemoryError
        if self.mode == "crash":
            raise RuntimeError("secret internal detail /home/user/.ssh")


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 5.0,
    what: str = "",
    *,
    interval: float = 0.01,
) -> object:
    """Poll ``predicate`` until it is truthy and return its value; fail the test after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
