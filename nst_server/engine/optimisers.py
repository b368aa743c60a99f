"""L-BFGS and Adam behind one interface; each iteration is one compiled TensorFlow call.

An optimiser keeps its state (the image, the gradient, L-BFGS's curvature pairs, Adam's moments)
in device variables and runs a whole iteration, line search included, inside one
``tf.function``: on a GPU nothing waits for the host, and the host reads back one small vector
per iteration (the loss terms, for progress). The image itself is read only when the caller asks
for it (``x``), e.g. for a preview.

The objective is a compiled function ``objective(x, args) -> (total, report, gradient)``: ``x``
is the 1 x H x W x 3 image, ``args`` whatever tensors it needs (targets, weights), passed anew at
every call so one trace serves every pass and job; ``report`` is a vector of numbers to show
(the loss terms). Pixels stay in [0, 1] by projection.

L-BFGS keeps the last ``memory`` curvature pairs in a ring buffer and computes its direction in
the compact form (matrix products, the same direction as the two-loop recursion of Nocedal &
Wright, Algorithm 7.4), with unit steps once it has curvature, a backtracking
(Armijo) line search, and, without history (a run's or a pass's start), a first step grown from
unit length 4x at a time while the loss falls: torch.optim.LBFGS's fixed first step 1/|g|_1
barely moves a normalised image loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from nst_server.engine.device import import_tensorflow

tf = import_tensorflow()

#: objective(x, args) -> (total loss, report vector, gradient), compiled.
Objective = Callable[[tf.Tensor, tuple], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]

#: What ``Optimiser.step`` reports after the objective's numbers: the run goes on ...
RUNNING = 0.0
#: ... or L-BFGS found no decrease even along the gradient (a standstill at this precision).
STANDSTILL = 1.0

#: L-BFGS history length.
LBFGS_MEMORY = 20
#: Armijo's sufficient-decrease constant (the usual 1e-4).
_ARMIJO = 1e-4
#: Halvings of the step before an iteration gives up and restarts from the gradient.
_MAX_BACKTRACKS = 10
#: Fourfold growths of the first step of a pass (4^8: from a unit step to 65536).
_MAX_EXPANSIONS = 8
#: Adam's constants (Kingma & Ba's defaults).
_BETA1, _BETA2, _EPSILON = 0.9, 0.999, 1e-8

_IMAGE = tf.TensorShape([1, None, None, 3])


def _empty(shape: tf.TensorShape, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Zeros of ``shape`` with every unknown dimension 0: no memory."""
    return tf.zeros([0 if d is None else d for d in shape.as_list()], dtype)


def _state(shape: tf.TensorShape) -> tf.Variable:
    """A variable whose size changes from pass to pass (each pass assigns its own)."""
    return tf.Variable(_empty(shape), shape=shape, trainable=False)


def _assign_both(a: tf.Variable, a_value: tf.Tensor, b: tf.Variable, b_value: tf.Tensor):
    a.assign(a_value)
    b.assign(b_value)
    return tf.constant(True)


def _dot(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(a * b)


class Optimiser(ABC):
    """Iterates an image on an objective: ``start`` a pass, ``step`` per iteration, ``x``."""

    def __init__(self, objective: Objective, args_signature: object) -> None:
        self._objective = objective
        self._x = _state(_IMAGE)
        self._report_size = 0
        self._step_fn = tf.function(self._iteration, input_signature=[args_signature])

    @property
    def x(self) -> tf.Tensor:
        """The current image (1 x H x W x 3, on the device)."""
        return tf.identity(self._x)

    def start(self, x0: tf.Tensor, args: tuple) -> None:
        """Begin a pass from ``x0`` (1 x H x W x 3, any size) with the objective's ``args``;
        no copy to the host."""
        self._x.assign(tf.clip_by_value(x0, 0.0, 1.0))
        self._reset(int(np.prod(x0.shape)), args)  # a static shape: no device read

    def step(self, args: tuple) -> np.ndarray:
        """One iteration; returns [total, *report, status] copied to the host (the only copy)."""
        return self._step_fn(args).numpy()

    @property
    def traces(self) -> int:
        """How often the iteration was traced (a new image size must not retrace it)."""
        return self._step_fn.experimental_get_tracing_count()

    def release(self) -> None:
        """Free the state's memory (between passes and jobs)."""
        for variable in self._variables():
            variable.assign(_empty(variable.shape, variable.dtype))

    @abstractmethod
    def _reset(self, size: int, args: tuple) -> None:
        """Set the state up for a pass over an image of ``size`` values."""

    @abstractmethod
    def _iteration(self, args: tuple) -> tf.Tensor: ...

    def _variables(self) -> list[tf.Variable]:
        return [self._x]


class LBFGS(Optimiser):
    """L-BFGS with projection onto [0, 1] (see the module docstring)."""

    def __init__(
        self, objective: Objective, args_signature: object, *, memory: int = LBFGS_MEMORY
    ) -> None:
        self.memory = memory
        self._g = _state(_IMAGE)
        self._f = tf.Variable(0.0, trainable=False)
        self._report = _state(tf.TensorShape([None]))
        # The pairs, one variable per slot of the ring buffer (newest at head - 1): s = x_{k+1} -
        # x_k, y = g_{k+1} - g_k. Not one m x n variable: writing a row of it takes a sparse
        # op, after which TensorFlow copies the whole variable on every read (measured: 0.3 s
        # and a copy of S per iteration at 1024 px), and a sliced assign copies it too.
        flat = tf.TensorShape([None])
        self._s = [_state(flat) for _ in range(memory)]
        self._y = [_state(flat) for _ in range(memory)]
        # Their inner products by slot: sy[i, j] = s_i . y_j, yy[i, j] = y_i . y_j.
        self._sy = tf.Variable(tf.zeros([memory, memory]), trainable=False)
        self._yy = tf.Variable(tf.zeros([memory, memory]), trainable=False)
        self._count = tf.Variable(0, trainable=False)  # pairs held (<= memory)
        self._head = tf.Variable(0, trainable=False)  # where the next pair goes
        super().__init__(objective, args_signature)
        self._reset_fn = tf.function(self._evaluate_start, input_signature=[args_signature])

    def _variables(self) -> list[tf.Variable]:
        return [self._x, self._g, *self._s, *self._y]

    def _reset(self, size: int, args: tuple) -> None:
        for slot in (*self._s, *self._y):  # every slot sized for this pass (products need it)
            slot.assign(tf.zeros([size]))
        self._count.assign(0)
        self._head.assign(0)
        self._reset_fn(args)

    def _evaluate_start(self, args: tuple) -> None:
        f, report, g = self._objective(self._x, args)
        self._f.assign(f)
        self._report.assign(report)
        self._g.assign(g)

    def _direction(self, g: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
        """-H g over the ``count`` (> 0) newest pairs, H0 = (s.y / y.y) I from the newest, in
        the compact form of Byrd, Nocedal and Schnabel (1994; Nocedal & Wright eq. 7.24):

            H g = gamma g + S p - gamma Y u,  R u = S'g,  R' p = (D + gamma Y'Y) u - gamma Y'g

        with R the upper triangle of S'Y (chronological order) and D its diagonal. The same
        direction as the two-loop recursion, but as a few matrix products over all pairs at
        once: S and Y are each read twice per iteration (once for their products with g and
        with the newest pair, once to combine), as ~4 m fixed operations in the graph; no
        host round trip. Flat vectors."""
        m = self.memory
        newest = (self._head - 1) % m
        s_new = tf.switch_case(newest, [slot.read_value for slot in self._s])
        y_new = tf.switch_case(newest, [slot.read_value for slot in self._y])
        rows = tf.stack([g, s_new, y_new])  # 3 x n
        with_s = tf.stack([tf.linalg.matvec(rows, slot) for slot in self._s])  # S g, S s_new, ..
        with_y = tf.stack([tf.linalg.matvec(rows, slot) for slot in self._y])  # Y g, Y s_new, ..
        # The newest pair's row and column of S'Y and Y'Y (the rest were set before).
        at = tf.one_hot(newest, m)
        col, row = at[tf.newaxis, :], at[:, tf.newaxis]
        sy = self._sy * (1.0 - col) + with_s[:, 2:3] * col  # s_i . y_new
        sy = sy * (1.0 - row) + tf.transpose(with_y[:, 1:2]) * row  # s_new . y_j
        yy = self._yy * (1.0 - col) + with_y[:, 2:3] * col
        yy = yy * (1.0 - row) + tf.transpose(with_y[:, 2:3]) * row
        self._sy.assign(sy)
        self._yy.assign(yy)
        order = (self._head - count + tf.range(count)) % m  # oldest to newest
        sy_k = tf.gather(tf.gather(sy, order), order, axis=1)
        yy_k = tf.gather(tf.gather(yy, order), order, axis=1)
        s_g = tf.gather(with_s[:, 0], order)[:, tf.newaxis]
        y_g = tf.gather(with_y[:, 0], order)[:, tf.newaxis]
        upper = tf.linalg.band_part(sy_k, 0, -1)
        diagonal = tf.linalg.diag_part(sy_k)[:, tf.newaxis]
        gamma = sy_k[-1, -1] / yy_k[-1, -1]
        u = tf.linalg.triangular_solve(upper, s_g, lower=False)
        rhs = diagonal * u + gamma * tf.matmul(yy_k, u) - gamma * y_g
        p = tf.linalg.triangular_solve(upper, rhs, lower=False, adjoint=True)
        slots = order[:, tf.newaxis]
        p_slots = tf.scatter_nd(slots, p[:, 0], [m])
        u_slots = tf.scatter_nd(slots, u[:, 0], [m])
        # Summed one slot at a time: each term is freed before the next (an add_n of all
        # would hold m image-sized terms at once).
        direction = gamma * g
        for i in range(m):
            direction = direction + p_slots[i] * self._s[i] - (gamma * u_slots[i]) * self._y[i]
        return -direction

    def _iteration(self, args: tuple) -> tf.Tensor:
        x, g = self._x.read_value(), self._g.read_value()
        f, report = self._f.read_value(), self._report.read_value()
        shape = tf.shape(x)
        g_flat = tf.reshape(g, [-1])
        count = self._count.read_value()
        d_flat = tf.cond(
            count > 0, lambda: self._direction(g_flat, count), lambda: tf.negative(g_flat)
        )
        # Not a descent direction (the curvature memory misled): start afresh from -g.
        restart = tf.logical_not(_dot(g_flat, d_flat) < 0.0)
        d = tf.reshape(tf.where(restart, -g_flat, d_flat), shape)
        count = tf.where(restart, 0, count)
        # With curvature pairs the unit step is the natural one; without, a unit-length step.
        step0 = tf.where(count > 0, 1.0, 1.0 / tf.maximum(tf.norm(g_flat), 1e-12))

        def search(step, expanding, tries, done, found, bx, bf, br, bg):
            xc = tf.clip_by_value(x + step * d, 0.0, 1.0)
            fc, rc, gc = self._objective(xc, args)
            # Armijo's sufficient decrease, and a decrease at all: where the step moves nothing
            # (a zero gradient, or every pixel pushed against its bound) that is a standstill.
            ok = tf.logical_and(fc <= f + _ARMIJO * _dot(g, xc - x), fc < f)
            better = tf.logical_and(ok, tf.logical_or(tf.logical_not(found), fc < bf))
            # Growing (no history yet): keep the best while the loss falls; a first failure
            # turns into backtracking. Backtracking: halve until Armijo holds.
            take = tf.where(expanding, better, ok)
            bx, bf, br, bg = tf.cond(take, lambda: (xc, fc, rc, gc), lambda: (bx, bf, br, bg))
            found = tf.logical_or(found, take)
            grow_on = tf.logical_and(expanding, take)
            failed = tf.logical_not(take)
            switch = tf.logical_and(expanding, tf.logical_and(failed, tf.logical_not(found)))
            done = tf.where(
                expanding,
                tf.logical_or(tf.logical_and(failed, found), tries + 1 > _MAX_EXPANSIONS),
                tf.logical_or(ok, tries + 1 > _MAX_BACKTRACKS),
            )
            done = tf.logical_and(done, tf.logical_not(switch))
            step = tf.where(grow_on, step * 4.0, step * 0.5)
            tries = tf.where(switch, 1, tries + 1)
            expanding = tf.logical_and(expanding, tf.logical_not(switch))
            return step, expanding, tries, done, found, bx, bf, br, bg

        _, _, _, _, found, x_new, f_new, report_new, g_new = tf.while_loop(
            lambda step, expanding, tries, done, *rest: tf.logical_not(done),
            search,
            (step0, count == 0, 0, False, False, x, f, report, g),
            maximum_iterations=2 + _MAX_EXPANSIONS + _MAX_BACKTRACKS,
        )
        # No decrease: without history a standstill; with it, forget the misleading curvature.
        status = tf.where(tf.logical_or(found, count > 0), RUNNING, STANDSTILL)
        s = tf.reshape(x_new - x, [-1])
        y = tf.reshape(g_new - g, [-1])
        sy = _dot(s, y)
        keep_pair = tf.logical_and(found, sy > 1e-10 * _dot(y, y))  # H stays positive definite

        def store() -> tf.Tensor:
            head = self._head.read_value()
            for i, (s_slot, y_slot) in enumerate(zip(self._s, self._y, strict=True)):
                tf.cond(
                    tf.equal(head, i),
                    lambda s_slot=s_slot, y_slot=y_slot: _assign_both(s_slot, s, y_slot, y),
                    lambda: tf.constant(True),
                )
            self._head.assign((head + 1) % self.memory)
            return tf.minimum(count + 1, self.memory)

        self._count.assign(tf.cond(keep_pair, store, lambda: tf.where(found, count, 0)))
        self._x.assign(x_new)
        self._g.assign(g_new)
        self._f.assign(f_new)
        self._report.assign(report_new)
        return tf.concat([f_new[tf.newaxis], report_new, status[tf.newaxis]], 0)


class Adam(Optimiser):
    """Adam (Kingma & Ba), clipped to [0, 1] after each step; moments reset at each pass."""

    def __init__(self, objective: Objective, args_signature: object, learning_rate: float) -> None:
        self._m = _state(_IMAGE)
        self._v = _state(_IMAGE)
        self._t = tf.Variable(0.0, trainable=False)
        self._rate = tf.Variable(float(learning_rate), trainable=False)
        super().__init__(objective, args_signature)

    def set_learning_rate(self, learning_rate: float) -> None:
        self._rate.assign(float(learning_rate))

    def _variables(self) -> list[tf.Variable]:
        return [self._x, self._m, self._v]

    def _reset(self, size: int, args: tuple) -> None:
        self._m.assign(tf.zeros_like(self._x))
        self._v.assign(tf.zeros_like(self._x))
        self._t.assign(0.0)

    def _iteration(self, args: tuple) -> tf.Tensor:
        f, report, g = self._objective(self._x, args)
        t = self._t.assign_add(1.0)
        m = self._m.assign(_BETA1 * self._m + (1.0 - _BETA1) * g)
        v = self._v.assign(_BETA2 * self._v + (1.0 - _BETA2) * tf.square(g))
        m_hat = m / (1.0 - tf.pow(_BETA1, t))
        v_hat = v / (1.0 - tf.pow(_BETA2, t))
        self._x.assign(
            tf.clip_by_value(self._x - self._rate * m_hat / (tf.sqrt(v_hat) + _EPSILON), 0.0, 1.0)
        )
        return tf.concat([f[tf.newaxis], report, tf.constant([RUNNING])], 0)
