"""The engine's L-BFGS before it was compiled (eager TensorFlow, ~170 op launches and several
host reads per iteration), kept only so the benchmark can measure the compiled one against it
(``nst_server.engine.optimisers.LBFGS``, the same algorithm in one ``tf.function`` per
iteration).

Pure TensorFlow and numpy, no engine state: ``minimize`` takes a function returning the loss
and its gradient as tensors.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

#: f(x) -> (loss, gradient, anything the caller wants back at each step, e.g. named losses)
Objective = Callable[[tf.Tensor], tuple[float, tf.Tensor, object]]
#: called after each iteration with (iteration, x, what the objective returned with the loss)
StepCallback = Callable[[int, tf.Tensor, object], None]

#: Armijo's sufficient-decrease constant (the usual 1e-4).
_ARMIJO = 1e-4
#: Halvings of the step before an iteration gives up and restarts from the gradient.
_MAX_BACKTRACKS = 10
#: Fourfold growths of the first step of a run (4^8: from a unit step to 65536).
_MAX_EXPANSIONS = 8


def _dot(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """a . b as a scalar tensor: on a GPU it stays there until a decision needs its value."""
    return tf.reduce_sum(a * b)


@dataclass
class _Pair:
    s: tf.Tensor  # x_{k+1} - x_k
    y: tf.Tensor  # g_{k+1} - g_k
    rho: tf.Tensor  # 1 / (y . s)


def direction(gradient: tf.Tensor, history: collections.deque[_Pair]) -> tf.Tensor:
    """-H g by the two-loop recursion, H0 = (s.y / y.y) I from the newest pair (Nocedal & Wright
    Algorithm 7.4); the plain negative gradient without history."""
    if not history:
        return -gradient
    q = gradient
    alphas = []
    for pair in reversed(history):
        alpha = pair.rho * _dot(pair.s, q)
        q = q - alpha * pair.y
        alphas.append(alpha)
    newest = history[-1]
    r = q * (_dot(newest.s, newest.y) / _dot(newest.y, newest.y))
    for pair, alpha in zip(history, reversed(alphas), strict=True):
        beta = pair.rho * _dot(pair.y, r)
        r = r + (alpha - beta) * pair.s
    return -r


def minimize(
    objective: Objective,
    x0: tf.Tensor,
    iterations: int,
    *,
    memory: int = 20,
    lower: float = 0.0,
    upper: float = 1.0,
    callback: StepCallback | None = None,
) -> tf.Tensor:
    """Run ``iterations`` L-BFGS iterations from ``x0`` within [lower, upper]; return the last x.

    Each iteration evaluates the objective once, more only when it must backtrack (or, without
    curvature history, search for the step length). An iteration that finds no decrease even
    along the gradient leaves x where it is and ends the run (a standstill at this precision).
    """
    x = tf.clip_by_value(tf.convert_to_tensor(x0, tf.float32), lower, upper)
    loss, grad, extra = objective(x)
    history: collections.deque[_Pair] = collections.deque(maxlen=memory)

    def trial(step: float, d: tf.Tensor) -> tuple[tf.Tensor, float, tf.Tensor, object, bool]:
        x_new = tf.clip_by_value(x + step * d, lower, upper)
        loss_new, grad_new, extra_new = objective(x_new)
        decrease = loss_new <= loss + _ARMIJO * float(_dot(grad, x_new - x))
        return x_new, loss_new, grad_new, extra_new, decrease

    for iteration in range(1, iterations + 1):
        d = direction(grad, history)
        if not float(_dot(grad, d)) < 0:  # not a descent direction: start afresh
            history.clear()
            d = -grad
        if history:  # the curvature pairs scale d: the unit step is the natural one
            step = 1.0
            found = trial(step, d)
        else:
            # No scale yet (the run's or a new pass's start): from a step of unit length,
            # grow 4x while the loss keeps falling, as a line search would extrapolate.
            step = 1.0 / max(float(tf.norm(grad)), 1e-12)
            found = trial(step, d)
            for _ in range(_MAX_EXPANSIONS if found[4] else 0):
                bigger = trial(step * 4.0, d)
                if not (bigger[4] and bigger[1] < found[1]):
                    break
                step, found = step * 4.0, bigger
        for _ in range(_MAX_BACKTRACKS):
            if found[4]:
                break
            step *= 0.5
            found = trial(step, d)
        x_new, loss_new, grad_new, extra_new, decrease = found
        if not decrease:
            if not history:
                break  # no decrease along the gradient itself: a standstill
            history.clear()  # the curvature memory misled: next time, the gradient
            if callback is not None:
                callback(iteration, x, extra)
            continue
        s, y = x_new - x, grad_new - grad
        sy = _dot(s, y)
        if float(sy) > 1e-10 * float(_dot(y, y)):  # only pairs that keep H positive definite
            history.append(_Pair(s, y, 1.0 / sy))
        x, loss, grad, extra = x_new, loss_new, grad_new, extra_new
        if callback is not None:
            callback(iteration, x, extra)
    return x
