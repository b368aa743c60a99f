"""The engine's own L-BFGS on TensorFlow tensors (the default, on GPU and CPU), against scipy's
L-BFGS-B (the alternative, still selectable)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from nst_server.engine import Progress, lbfgs
from nst_server.params import StyleParams
from tests.conftest import synthetic_painting, synthetic_photo


def test_finds_the_box_constrained_minimum_of_an_ill_conditioned_quadratic():
    rng = np.random.default_rng(0)
    n = 3000
    curvature = tf.constant(np.geomspace(0.1, 100.0, n), tf.float32)  # condition number 1000
    centre = tf.constant(rng.uniform(-0.5, 1.5, n), tf.float32)  # a third outside [0, 1]
    losses: list[float] = []

    def objective(x: tf.Tensor) -> tuple[float, tf.Tensor, float]:
        diff = x - centre
        loss = float(0.5 * tf.reduce_sum(curvature * diff * diff))
        return loss, curvature * diff, loss

    x = lbfgs.minimize(
        objective,
        tf.fill((n,), 0.5),
        150,
        callback=lambda i, x, loss: losses.append(loss),
    )
    expected = np.clip(centre.numpy(), 0.0, 1.0)
    best, start = objective(tf.constant(expected))[0], objective(tf.fill((n,), 0.5))[0]
    # Down to float32's resolution of the loss (scipy, in float64 on the host, goes further).
    assert (losses[-1] - best) / (start - best) < 1e-6
    assert np.abs(x.numpy() - expected).max() < 0.05
    assert x.numpy().min() >= 0.0 and x.numpy().max() <= 1.0
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:], strict=False))  # Armijo


def test_steepest_descent_without_history_and_newton_on_a_quadratic_with_it():
    g = tf.constant([1.0, -2.0])
    assert np.allclose(lbfgs.direction(g, lbfgs.collections.deque()).numpy(), [-1.0, 2.0])
    # f = x0^2 + 4 x1^2: two curvature pairs pin down the Hessian diag(2, 8) exactly.
    history = lbfgs.collections.deque(
        lbfgs._Pair(
            s,
            2 * s * tf.constant([1.0, 4.0]),
            1.0 / float(tf.reduce_sum(s * s * tf.constant([2.0, 8.0]))),
        )  # noqa: SLF001
        for s in (tf.constant([1.0, 0.0]), tf.constant([0.0, 1.0]))
    )
    newton = -g.numpy() / np.array([2.0, 8.0])
    assert np.allclose(lbfgs.direction(g, history).numpy(), newton, atol=1e-6)


@pytest.fixture
def device_lbfgs(engine):
    default = engine.lbfgs
    engine.lbfgs = "tensorflow"
    yield engine
    engine.lbfgs = default


def totals(engine, **overrides) -> tuple[np.ndarray, list[float]]:
    events: list[Progress] = []
    params = StyleParams.from_mapping({"iterations": 16, "max_size": 64, **overrides}, "cpu")
    result = engine.stylize(synthetic_photo(48, 64), [synthetic_painting()], params, events.append)
    return result, [e.losses["total"] for e in events if e.phase == "optimising"]


def test_the_engine_on_device_lbfgs_optimises_as_well_as_scipy(engine, device_lbfgs):
    device_lbfgs.lbfgs = "scipy"
    _, reference = totals(device_lbfgs)
    device_lbfgs.lbfgs = "tensorflow"
    result, losses = totals(device_lbfgs)
    assert len(losses) == 16 and losses[-1] < 0.7 * losses[0]
    assert losses[-1] < 1.15 * reference[-1], (losses[-1], reference[-1])
    assert result.min() >= 0.0 and result.max() <= 1.0


def test_the_on_device_lbfgs_runs_coarse_to_fine_with_a_mask_as_scipy_does(device_lbfgs):
    mask = np.zeros((240, 320), np.float32)
    mask[:, 160:] = 1.0
    photo = synthetic_photo(240, 320)
    params = StyleParams.from_mapping(
        {"iterations": 6, "max_size": 320, "coarse_to_fine": True}, "cpu"
    )
    runs = {}
    for backend in ("scipy", "tensorflow"):
        device_lbfgs.lbfgs = backend
        events: list[Progress] = []
        result = device_lbfgs.stylize(
            photo, [synthetic_painting()], params, events.append, mask=mask
        )
        runs[backend] = result, [e for e in events if e.phase == "optimising"]
    result, steps = runs["tensorflow"]
    assert [e.step for e in steps] == list(range(1, 7))
    assert {e.scales for e in steps} == {2} and steps[-1].size == (320, 240)
    assert steps[-1].losses["total"] < 0.95 * steps[0].losses["total"]
    reference = runs["scipy"][1][-1].losses["total"]
    assert steps[-1].losses["total"] == pytest.approx(reference, rel=0.05)
    assert np.abs(result[:, :120] - photo[:, :120]).max() < 0.02  # outside the mask: the photo
    assert np.abs(result[:, 200:] - photo[:, 200:]).mean() > 0.002  # inside: changed
