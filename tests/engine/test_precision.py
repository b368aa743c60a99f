"""Mixed precision and XLA on the CPU, so the GPU's fast paths cannot rot where no GPU is.

Each path runs the real VGG19: the network really computes in bfloat16/float16 (checked on
the extractor's outputs), the step really is XLA-compiled, and each must land on the picture
float32 lands on (same loss within a few percent, pixels close).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from nst_server.engine import EngineError, Progress
from nst_server.engine.device import native_bfloat16, resolve_precision
from nst_server.engine.objective import (
    FLOAT16_LOSS_SCALE,
    IMAGE_SPEC,
    Targets,
    build_scaled_loss,
    with_loss_scaling,
)
from nst_server.params import ParamsError, StyleParams
from tests.conftest import synthetic_painting, synthetic_photo


def params(**overrides) -> StyleParams:
    return StyleParams.from_mapping(
        {"iterations": 8, "max_size": 64, "precision": "float32", **overrides}, "cpu"
    )


def test_auto_means_bfloat16_only_with_bfloat16_units():
    amx = "flags\t\t: fpu sse avx512f amx_bf16 amx_tile"
    avx = "flags\t\t: fpu avx512f avx512_bf16"
    plain = "flags\t\t: fpu sse avx2 avx512f"
    assert native_bfloat16("cpu", amx) and native_bfloat16("cpu", avx)
    assert not native_bfloat16("cpu", plain)
    assert resolve_precision("auto", "cpu", amx) == "mixed_bfloat16"
    assert resolve_precision("auto", "cpu", plain) == "float32"
    # An explicit choice is never second-guessed.
    assert resolve_precision("mixed_float16", "cpu", plain) == "mixed_float16"
    assert resolve_precision("float32", "cpu", amx) == "float32"


def test_precision_is_validated():
    with pytest.raises(ParamsError, match="precision must be one of"):
        params(precision="float64")
    with pytest.raises(ParamsError, match="jit must be true or false"):
        StyleParams.from_mapping({"jit": "yes"}, "cpu")


def run(engine, **overrides) -> tuple[np.ndarray, list[float]]:
    events: list[Progress] = []
    result = engine.stylize(
        synthetic_photo(48, 64), [synthetic_painting()], params(**overrides), events.append
    )
    return result, [e.losses["total"] for e in events if e.phase == "optimising"]


@pytest.mark.parametrize(
    ("precision", "dtype"), [("mixed_bfloat16", tf.bfloat16), ("mixed_float16", tf.float16)]
)
def test_mixed_precision_computes_in_half_and_lands_where_float32_does(engine, precision, dtype):
    reference, ref_losses = run(engine, iterations=16)
    result, losses = run(engine, precision=precision, iterations=16)
    plan, model = engine._plan(params(precision=precision))  # noqa: SLF001 - what really ran
    assert plan.policy == precision
    assert all(output.dtype == dtype for output in model.outputs)
    assert losses[-1] < 0.7 * losses[0]  # it optimised
    assert losses[-1] == pytest.approx(ref_losses[-1], rel=0.1)
    # Optimisation paths drift apart with any rounding; what matters is that the two pictures
    # differ far less from each other than from the photo they were both painted from.
    change = np.abs(reference - synthetic_photo(48, 64)).mean()
    assert np.abs(result - reference).mean() < 0.5 * change, change


def test_xla_step_equals_the_graph_step_and_handles_masks_and_new_sizes(engine):
    mask = np.zeros((48, 64), np.float32)
    mask[:, 32:] = 1.0
    photo, painting = synthetic_photo(48, 64), [synthetic_painting()]
    plain = engine.stylize(photo, painting, params(), mask=mask)
    compiled = engine.stylize(photo, painting, params(jit=True), mask=mask)
    plan, model = engine._plan(params(jit=True))  # noqa: SLF001
    step = engine._objective(plan, model)  # noqa: SLF001
    assert plan.jit and step.function_spec.jit_compile
    assert np.abs(compiled - plain).mean() < 0.02
    # Outside the mask both keep the photo.
    np.testing.assert_allclose(compiled[:, :24], photo[:, :24], atol=0.02)
    # A new size compiles anew with XLA and still works.
    other = engine.stylize(synthetic_photo(40, 56), painting, params(jit=True, iterations=2))
    assert other.shape == (40, 56, 3)


def test_float16_needs_and_gets_loss_scaling(engine):
    """At 384 px a third of float16's gradient flushes to zero unscaled; the engine's starting
    loss scale brings it back in line with float32's."""
    h, w = 288, 384
    image = tf.constant(synthetic_photo(h, w)[np.newaxis])
    grads = {}
    for precision, scale in (
        ("float32", 1.0),
        ("mixed_float16", 1.0),
        ("mixed_float16", FLOAT16_LOSS_SCALE),
    ):
        job = params(precision=precision)
        plan, model = engine._plan(job)  # noqa: SLF001
        feats = engine._feature_fn(plan, model)(image * 0.5 + 0.25)  # noqa: SLF001
        style = engine._style_targets(  # noqa: SLF001
            plan, model, [synthetic_painting()], [(64, 64)], [1.0], job.seed
        )
        targets = Targets(
            content=tuple(feats[i] for i in plan.content),
            style=style,
            weights=tf.constant([1.0, 20.0, 1.0, 0.0]),
            mask=tf.ones((1, h, w, 1)),
            photo=image,
        )
        _, _, grad = build_scaled_loss(plan, model)(image, targets, tf.constant(scale))
        grads[precision, scale] = grad.numpy().ravel()
    exact = grads.pop(("float32", 1.0))

    def cosine(g: np.ndarray) -> float:
        return float(exact @ g / (np.linalg.norm(exact) * np.linalg.norm(g)))

    unscaled, scaled = grads.values()
    assert cosine(scaled) > 0.9 and cosine(scaled) > cosine(unscaled) + 0.1
    assert (scaled == 0).mean() < 0.01 < 0.1 < (unscaled == 0).mean()


def test_loss_scale_halves_on_overflow_and_gives_up_with_advice(engine, monkeypatch):
    """In the compiled objective: a gradient that overflows above a scale of 2^10 lowers the
    scale to 2^10 and comes back finite; one that always overflows fails with advice, which the
    engine passes on as an engine error."""
    signature = [IMAGE_SPEC, tf.TensorSpec((), tf.float32)]

    @tf.function
    def overflows_above_1024(image, limit, loss_scale):
        grad = tf.where(loss_scale > limit, np.inf, 1.0) * tf.ones_like(image)
        return tf.reduce_sum(image), tf.zeros(4), grad

    objective = with_loss_scaling(overflows_above_1024, signature)
    image = tf.ones((1, 4, 4, 3))
    _, _, grad = objective(image, tf.constant(1024.0))
    assert objective.loss_scale.numpy() == 1024.0 and np.isfinite(grad.numpy()).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match="use precision 'mixed_bfloat16'"):
        objective(image, tf.constant(0.5))
    assert objective.loss_scale.numpy() == 1.0

    class Overflowing:
        x = tf.zeros((1, 4, 4, 3))

        def release(self) -> None:
            pass

        def start(self, *args):
            objective(image, tf.constant(0.5))

    monkeypatch.setattr(engine, "_optimiser", lambda *args: Overflowing())
    with pytest.raises(EngineError, match="overflowed in float16; use precision"):
        engine.stylize(synthetic_photo(), [synthetic_painting()], params())


def test_an_xla_compile_failure_is_an_engine_error_that_says_to_turn_jit_off(engine, monkeypatch):
    """The compiled step itself is replaced (one layer): XLA refusing an op on some device."""

    class Refuses:
        x = tf.zeros((1, 4, 4, 3))

        def release(self) -> None:
            pass

        def start(self, *args):
            raise tf.errors.InvalidArgumentError(
                None, None, "Detected unsupported operations\nmore"
            )

    monkeypatch.setattr(engine, "_optimiser", lambda *args: Refuses())
    with pytest.raises(
        EngineError, match=r"XLA could not compile.*unsupported operations.*jit off"
    ):
        engine.stylize(synthetic_photo(), [synthetic_painting()], params(jit=True))
    # Without jit the same error is not XLA's: it is not dressed up as advice.
    with pytest.raises(tf.errors.InvalidArgumentError):
        engine.stylize(synthetic_photo(), [synthetic_painting()], params())
