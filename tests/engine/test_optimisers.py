"""The compiled optimisers: L-BFGS's arithmetic, one host copy per iteration, and the engine's
L-BFGS against scipy's L-BFGS-B (the reference, in tests/engine/scipy_reference.py), on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops

from nst_server.engine import Progress
from nst_server.engine.optimisers import LBFGS, STANDSTILL, Adam
from nst_server.params import StyleParams
from tests.conftest import synthetic_painting, synthetic_photo
from tests.engine.scipy_reference import ScipyLBFGSB

IMAGE = tf.TensorSpec((1, None, None, 3), tf.float32)
QUADRATIC_ARGS = (IMAGE, IMAGE)  # curvature and centre, image-shaped


@tf.function(input_signature=[IMAGE, QUADRATIC_ARGS])
def quadratic(x, args):
    """0.5 sum c (x - centre)^2, reporting the loss once more as its one 'term'."""
    curvature, centre = args
    diff = x - centre
    loss = 0.5 * tf.reduce_sum(curvature * diff * diff)
    return loss, loss[tf.newaxis], curvature * diff


def ill_conditioned(n_side: int = 40) -> tuple[tf.Tensor, tf.Tensor]:
    rng = np.random.default_rng(0)
    count = n_side * n_side * 3
    curvature = np.geomspace(0.1, 100.0, count).reshape(1, n_side, n_side, 3)  # condition 1000
    centre = rng.uniform(-0.5, 1.5, (1, n_side, n_side, 3))  # a third outside [0, 1]
    return tf.constant(curvature, tf.float32), tf.constant(centre, tf.float32)


def test_lbfgs_finds_the_box_constrained_minimum_of_an_ill_conditioned_quadratic():
    args = ill_conditioned()
    optimiser = LBFGS(quadratic, QUADRATIC_ARGS)
    optimiser.start(tf.fill((1, 40, 40, 3), 0.5), args)
    losses = [float(optimiser.step(args)[0]) for _ in range(150)]
    expected = np.clip(args[1].numpy(), 0.0, 1.0)
    best = float(quadratic(tf.constant(expected), args)[0])
    start = float(quadratic(tf.fill((1, 40, 40, 3), 0.5), args)[0])
    # Down to float32's resolution of the loss (scipy, in float64 on the host, goes further).
    assert (losses[-1] - best) / (start - best) < 1e-6
    x = optimiser.x.numpy()
    assert np.abs(x - expected).max() < 0.05
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:], strict=False))  # Armijo


def test_lbfgs_takes_a_newton_step_once_its_pairs_know_a_quadratic():
    """f = sum c x^2 / 2 on two values: after a few pairs the direction is -g / c (Newton), so
    a unit step lands on the minimum; before any pair it is steepest descent."""
    curvature = tf.constant([[[[2.0, 8.0, 1.0]]]])
    centre = tf.constant([[[[0.2, 0.7, 0.4]]]])
    args = (curvature, centre)
    optimiser = LBFGS(quadratic, QUADRATIC_ARGS)
    optimiser.start(tf.fill((1, 1, 1, 3), 0.5), args)
    for _ in range(6):
        values = optimiser.step(args)
    np.testing.assert_allclose(optimiser.x.numpy(), centre.numpy(), atol=1e-5)
    assert values[0] < 1e-9


def test_lbfgs_reports_a_standstill_and_leaves_x_where_no_step_lowers_the_loss():
    args = (tf.ones((1, 2, 2, 3)), tf.fill((1, 2, 2, 3), 0.5))
    optimiser = LBFGS(quadratic, QUADRATIC_ARGS)
    optimiser.start(tf.fill((1, 2, 2, 3), 0.5), args)  # already the minimum
    values = optimiser.step(args)
    assert values[-1] == STANDSTILL
    np.testing.assert_array_equal(optimiser.x.numpy(), np.full((1, 2, 2, 3), 0.5, np.float32))


def test_adam_moves_downhill_and_stays_in_the_box():
    args = ill_conditioned(8)
    optimiser = Adam(quadratic, QUADRATIC_ARGS, learning_rate=0.05)
    optimiser.start(tf.fill((1, 8, 8, 3), 0.5), args)
    losses = [float(optimiser.step(args)[0]) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]
    x = optimiser.x.numpy()
    assert x.min() >= 0.0 and x.max() <= 1.0


class HostCopies:
    """Counts copies from TensorFlow to the host: every .numpy(), float(), bool() and
    np.asarray() of an eager tensor goes through _EagerTensorBase._numpy."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = ops._EagerTensorBase._numpy  # noqa: SLF001

        def counted(tensor):
            self.count += 1
            return original(tensor)

        monkeypatch.setattr(ops._EagerTensorBase, "_numpy", counted)  # noqa: SLF001


@pytest.mark.parametrize("kind", ["lbfgs", "adam"])
def test_an_iteration_is_one_compiled_call_with_one_copy_to_the_host(monkeypatch, kind):
    args = ill_conditioned(16)
    optimiser = (
        LBFGS(quadratic, QUADRATIC_ARGS)
        if kind == "lbfgs"
        else Adam(quadratic, QUADRATIC_ARGS, learning_rate=0.05)
    )
    optimiser.start(tf.fill((1, 16, 16, 3), 0.5), args)
    optimiser.step(args)  # traced here
    copies = HostCopies(monkeypatch)
    for _ in range(25):
        optimiser.step(args)
    assert copies.count == 25
    assert optimiser.traces == 1


def test_an_engine_run_copies_the_losses_each_step_and_the_image_only_for_previews(
    engine, monkeypatch
):
    """At most one copy per iteration (the loss terms) plus one per preview: the first event,
    then at most one per interval (here: longer than the run), and the last."""
    params = StyleParams.from_mapping({"iterations": 12, "max_size": 64}, "cpu")
    photo, painting = synthetic_photo(), synthetic_painting()
    engine.stylize(photo, [painting], params)  # every function traced, the targets cached
    events: list[tuple[int, int, bool]] = []
    copies = HostCopies(monkeypatch)

    def on_progress(event: Progress) -> None:
        if event.phase == "optimising":
            events.append((event.step, copies.count, event.preview is not None))

    engine.preview_interval_s = 3600.0
    try:
        engine.stylize(photo, [painting], params, on_progress)
    finally:
        engine.preview_interval_s = 0.5
    assert [step for step, _, _ in events] == list(range(1, 13))
    assert [preview for _, _, preview in events] == [True] + [False] * 10 + [True]
    per_step = np.diff([count for _, count, _ in events])
    previews = [preview for _, _, preview in events][1:]
    assert list(per_step) == [1 + p for p in previews]


def use_scipy(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine with scipy's L-BFGS-B in place of its own L-BFGS (until the test ends)."""
    from nst_server.engine.objective import targets_signature

    def reference(plan, model, params) -> ScipyLBFGSB:
        return ScipyLBFGSB(engine._objective(plan, model), targets_signature(plan))  # noqa: SLF001

    monkeypatch.setattr(engine, "_optimiser", reference)


def run(engine, params: StyleParams, photo: np.ndarray, mask=None):
    events: list[Progress] = []
    result = engine.stylize(photo, [synthetic_painting()], params, events.append, mask=mask)
    return result, [e for e in events if e.phase == "optimising"]


def test_the_engines_lbfgs_optimises_as_well_as_scipys_lbfgsb(engine, monkeypatch):
    params = StyleParams.from_mapping({"iterations": 16, "max_size": 64}, "cpu")
    result, steps = run(engine, params, synthetic_photo(48, 64))
    use_scipy(engine, monkeypatch)
    _, reference = run(engine, params, synthetic_photo(48, 64))
    losses = [e.losses["total"] for e in steps]
    assert len(losses) == 16 and losses[-1] < 0.7 * losses[0]
    assert losses[-1] < 1.15 * reference[-1].losses["total"], (losses[-1], reference[-1])
    assert result.min() >= 0.0 and result.max() <= 1.0


def test_the_engines_lbfgs_runs_coarse_to_fine_with_a_mask_as_scipy_does(engine, monkeypatch):
    mask = np.zeros((240, 320), np.float32)
    mask[:, 160:] = 1.0
    photo = synthetic_photo(240, 320)
    params = StyleParams.from_mapping({"iterations": 6, "max_size": 320}, "cpu")
    result, steps = run(engine, params, photo, mask)
    use_scipy(engine, monkeypatch)
    _, reference = run(engine, params, photo, mask)
    assert [e.step for e in steps] == list(range(1, 7))
    assert {e.scales for e in steps} == {2} and steps[-1].size == (320, 240)
    assert steps[-1].losses["total"] < 0.95 * steps[0].losses["total"]
    assert steps[-1].losses["total"] < 1.05 * reference[-1].losses["total"]  # as low or lower
    assert np.abs(result[:, :120] - photo[:, :120]).max() < 0.02  # outside the mask: the photo
    assert np.abs(result[:, 200:] - photo[:, 200:]).mean() > 0.002  # inside: changed


def test_the_compact_direction_is_the_two_loop_recursions():
    """After some iterations on a random quadratic, the compiled L-BFGS's direction (compact
    form) equals the two-loop recursion's over the same pairs (the eager implementation it
    replaced, kept in bench/ for the benchmark)."""
    import collections

    from bench import eager_lbfgs

    rng = np.random.default_rng(7)
    curvature = tf.constant(rng.uniform(0.5, 20.0, (1, 6, 5, 3)), tf.float32)
    centre = tf.constant(rng.uniform(0.2, 0.8, (1, 6, 5, 3)), tf.float32)
    optimiser = LBFGS(quadratic, QUADRATIC_ARGS, memory=5)
    optimiser.start(tf.fill((1, 6, 5, 3), 0.9), (curvature, centre))
    for _ in range(8):  # more pairs than the memory: the ring buffer has wrapped
        optimiser.step((curvature, centre))
    count, head = int(optimiser._count.numpy()), int(optimiser._head.numpy())  # noqa: SLF001
    assert count == 5
    history = collections.deque()
    for i in range(count):  # oldest to newest
        slot = (head - count + i) % 5
        s, y = optimiser._s[slot], optimiser._y[slot]  # noqa: SLF001
        history.append(eager_lbfgs._Pair(s, y, 1.0 / tf.reduce_sum(s * y)))  # noqa: SLF001
    g = tf.constant(rng.normal(size=90), tf.float32)
    expected = eager_lbfgs.direction(g, history).numpy()
    got = optimiser._direction(g, tf.constant(count)).numpy()  # noqa: SLF001
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-6 * np.abs(expected).max())
