"""scipy's L-BFGS-B as an ``Optimiser``: the reference the engine's compiled L-BFGS is checked
and benchmarked against (float64 on the host, exact bounds [0, 1], More-Thuente line search).

scipy's loop owns the iteration, so it runs in a thread that hands each iteration to ``step``
and waits for the next call; the engine's pass loop, progress and early finish then run the
reference exactly as they run its own optimisers. Not for production: every evaluation copies
the image and its gradient between the device and the host, and setting up the bounds is a
Python loop over every pixel.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import scipy.optimize
import tensorflow as tf
from threadpoolctl import threadpool_limits

from nst_server.engine.optimisers import LBFGS_MEMORY, RUNNING, STANDSTILL, Objective, Optimiser


def lbfgs_options(steps: int) -> dict[str, float]:
    """scipy L-BFGS-B options for ``steps`` iterations; tolerances at zero: run the steps asked
    for, stopping only on a true standstill."""
    return {
        "maxiter": steps,
        "maxfun": steps * 2,
        "maxcor": LBFGS_MEMORY,
        "ftol": 0.0,
        "gtol": 0.0,
    }


class _Stop(Exception):  # noqa: N818 - a signal to the worker thread, not a failure
    pass


class ScipyLBFGSB(Optimiser):
    """L-BFGS-B stepping in the engine's loop (see the module docstring)."""

    def __init__(self, objective: Objective, args_signature: object, steps: int = 10_000) -> None:
        self._objective_fn = objective
        self._steps = steps
        self._x_now: tf.Tensor | None = None
        self._thread: threading.Thread | None = None
        self._go: queue.Queue[bool] = queue.Queue()
        self._out: queue.Queue[np.ndarray | BaseException] = queue.Queue()

    @property
    def x(self) -> tf.Tensor:
        assert self._x_now is not None
        return self._x_now

    @property
    def traces(self) -> int:
        return 0

    def start(self, x0: tf.Tensor, args: tuple) -> None:
        self.release()
        self._x_now = tf.clip_by_value(tf.convert_to_tensor(x0, tf.float32), 0.0, 1.0)
        self._go, self._out = queue.Queue(), queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(args,), daemon=True)
        self._thread.start()

    def step(self, args: tuple) -> np.ndarray:
        self._go.put(True)
        out = self._out.get()
        if isinstance(out, BaseException):
            raise out
        return out

    def release(self) -> None:
        if self._thread is not None:
            self._go.put(False)
            self._thread.join()
            self._thread = None

    def _reset(self, size: int, args: tuple) -> None:  # pragma: no cover - start() overrides
        raise NotImplementedError

    def _iteration(self, args: tuple) -> tf.Tensor:  # pragma: no cover - step() overrides
        raise NotImplementedError

    def _run(self, args: tuple) -> None:
        shape = self.x.shape
        last: list[np.ndarray] = []

        def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
            image = tf.constant(flat.reshape(shape), tf.float32)
            total, report, grad = self._objective_fn(image, args)
            last[:] = [np.concatenate([[float(total)], report.numpy()])]
            return float(total), grad.numpy().astype(np.float64).ravel()

        def callback(intermediate_result: scipy.optimize.OptimizeResult) -> None:
            self._x_now = tf.constant(intermediate_result.x.reshape(shape), tf.float32)
            self._out.put(np.concatenate([last[0], [RUNNING]]).astype(np.float32))
            if not self._go.get():
                raise _Stop

        if not self._go.get():
            return
        try:
            # One BLAS thread: L-BFGS-B's own vector work is small, and two OpenBLAS threads
            # contending with TensorFlow's made it 2x slower (0.26 vs 0.12 s per iteration at
            # 384 px, 2 cores).
            with threadpool_limits(limits=1, user_api="blas"):
                scipy.optimize.minimize(
                    fun,
                    self.x.numpy().astype(np.float64).ravel(),
                    jac=True,
                    method="L-BFGS-B",
                    bounds=scipy.optimize.Bounds(0.0, 1.0),
                    callback=callback,
                    options=lbfgs_options(self._steps),
                )
        except _Stop:
            return
        except Exception as exc:  # noqa: BLE001 - handed to the engine's thread
            self._out.put(exc)
            return
        # scipy stopped on its own (a standstill): say so at the next step.
        values = last[0] if last else np.zeros(5)
        self._out.put(np.concatenate([values, [STANDSTILL]]).astype(np.float32))
        self._go.get()
