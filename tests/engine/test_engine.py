"""The engine on the real VGG19 weights, at tiny sizes (a step at 64 px is ~0.1 s here)."""

from __future__ import annotations

import numpy as np
import pytest

from nst_server.engine import Cancelled, EngineError, Progress
from nst_server.params import StyleParams
from tests.conftest import load_rgb, synthetic_painting, synthetic_photo


def params(**overrides) -> StyleParams:
    return StyleParams.from_mapping({"iterations": 6, "max_size": 64, **overrides}, "cpu")


def test_result_has_content_size_and_alpha_and_is_stylised(engine):
    content = synthetic_photo(72, 100, alpha=True)
    result = engine.stylize(content, [synthetic_painting()], params())
    assert result.shape == content.shape and result.dtype == np.float32
    np.testing.assert_array_equal(result[..., 3], content[..., 3])  # alpha untouched
    assert result.min() >= 0.0 and result.max() <= 1.0
    assert np.abs(result[..., :3] - content[..., :3]).mean() > 0.01


def test_progress_events_count_steps_and_carry_a_preview(engine):
    events: list[Progress] = []
    engine.stylize(
        synthetic_photo(96, 128), [synthetic_painting()], params(iterations=5), events.append
    )
    steps = [e for e in events if e.phase == "optimising"]
    assert events[0].phase == "preparing"
    assert [e.step for e in steps] == [1, 2, 3, 4, 5]
    assert all(e.total == 5 for e in steps)
    assert steps[-1].eta_s == 0.0 and all(e.eta_s is not None and e.eta_s >= 0 for e in steps)
    assert steps[0].size == (64, 48)  # longer side at max_size
    assert steps[-1].preview.shape == (48, 64, 3)
    assert set(steps[-1].losses) == {"total", "content", "style", "tv"}
    assert [e.elapsed_s for e in steps] == sorted(e.elapsed_s for e in steps)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_optimisers_lower_the_loss(engine, optimizer):
    events: list[Progress] = []
    engine.stylize(
        synthetic_photo(),
        [synthetic_painting()],
        params(iterations=12, optimizer=optimizer, learning_rate=0.05),
        events.append,
    )
    totals = [e.losses["total"] for e in events if e.phase == "optimising"]
    assert totals[-1] < 0.75 * totals[0]


def test_cancelled_within_one_step_and_engine_still_works(engine):
    seen: list[int] = []

    def cancel_at_two(event: Progress) -> None:
        if event.phase == "optimising":
            seen.append(event.step)
            if event.step == 2:
                raise Cancelled()

    with pytest.raises(Cancelled):
        engine.stylize(
            synthetic_photo(), [synthetic_painting()], params(iterations=50), cancel_at_two
        )
    assert seen == [1, 2]
    assert engine.stylize(synthetic_photo(), [synthetic_painting()], params(iterations=1)).size


def test_same_seed_same_picture_other_seed_other_picture(engine):
    content, style = synthetic_photo(), [synthetic_painting()]
    first = engine.stylize(content, style, params(init="noise", seed=3))
    again = engine.stylize(content, style, params(init="noise", seed=3))
    other = engine.stylize(content, style, params(init="noise", seed=4))
    np.testing.assert_allclose(first, again, atol=1e-5)
    assert np.abs(first - other).mean() > 0.01


def test_init_from_style_starts_from_the_painting(engine):
    events: list[Progress] = []
    painting = synthetic_painting(48, 64)
    engine.stylize(synthetic_photo(), [painting], params(init="style", iterations=1), events.append)
    # After one step the iterate is still far closer to the painting than to the photo.
    preview = events[-1].preview
    assert np.abs(preview - painting).mean() < 0.5 * np.abs(preview - synthetic_photo()).mean()


def test_max_size_zero_means_full_size(engine):
    events: list[Progress] = []
    engine.stylize(
        synthetic_photo(40, 56),
        [synthetic_painting()],
        params(max_size=0, iterations=1),
        events.append,
    )
    assert events[-1].size == (56, 40)


def test_too_small_image_is_a_clear_error(engine):
    with pytest.raises(EngineError, match="at least 32 px"):
        engine.stylize(synthetic_photo(20, 64), [synthetic_painting()], params())


def test_style_targets_are_cached_per_painting(engine):
    painting = synthetic_painting(50, 50)
    before = engine.cached_styles
    engine.stylize(synthetic_photo(), [painting], params(iterations=1))
    engine.stylize(synthetic_photo(), [painting], params(iterations=1))
    assert engine.cached_styles == before + 1
    engine.stylize(synthetic_photo(), [painting * 0.5], params(iterations=1))
    assert engine.cached_styles == before + 2


def test_quality_on_the_real_paintings(engine, shared_images):
    """Tübingen + Starry Night at 128 px: the style distance halves, the photo stays legible."""
    photo = load_rgb(shared_images / "content" / "tubingen.jpg", 128)
    painting = load_rgb(shared_images / "style" / "starry_night.jpg", 256)
    p = params(iterations=40, max_size=128)
    result = engine.stylize(photo, [painting], p)
    before = engine.loss_terms(photo, photo, [painting], p)
    after = engine.loss_terms(result, photo, [painting], p)
    painting_itself = engine.loss_terms(
        load_rgb(shared_images / "style" / "starry_night.jpg", 128)[
            : photo.shape[0], : photo.shape[1]
        ],
        photo,
        [painting],
        p,
    )
    assert after["style"] <= 0.5 * before["style"], (before, after)
    # The photo's structure stays: far closer to the photo's features than the painting is.
    assert after["content"] <= 0.6 * painting_itself["content"], (after, painting_itself)


def test_a_new_image_size_reuses_the_compiled_step(engine):
    p = params(iterations=2)
    engine.stylize(synthetic_photo(48, 64), [synthetic_painting()], p)
    plan, model = engine._plan(p)  # noqa: SLF001 - the compiled functions themselves
    step = engine._objective(plan, model)  # noqa: SLF001
    iteration = engine._optimiser(plan, model, p)  # noqa: SLF001
    traced = step.experimental_get_tracing_count(), iteration.traces
    engine.stylize(synthetic_photo(60, 80), [synthetic_painting()], p)
    engine.stylize(synthetic_photo(64, 40), [synthetic_painting()], p)
    assert (step.experimental_get_tracing_count(), iteration.traces) == traced


def test_load_compiles_the_default_step_so_the_first_edit_does_not(engine):
    engine.unload()
    engine.load()
    defaults = StyleParams.for_device(engine.device)
    plan, model = engine._plan(defaults)  # noqa: SLF001
    step = engine._objective(plan, model)  # noqa: SLF001
    iteration = engine._optimiser(plan, model, defaults)  # noqa: SLF001
    assert (step.experimental_get_tracing_count(), iteration.traces) == (1, 1)  # by load()
    engine.stylize(
        synthetic_photo(), [synthetic_painting()], params(iterations=2, precision="auto")
    )
    assert (step.experimental_get_tracing_count(), iteration.traces) == (1, 1)


def test_unload_frees_the_network_and_the_next_job_reloads_it(engine):
    engine.unload()
    assert not engine.loaded and engine.cached_styles == 0
    events: list[Progress] = []
    result = engine.stylize(
        synthetic_photo(), [synthetic_painting()], params(iterations=2), events.append
    )
    assert engine.loaded and events[0].phase == "loading"
    assert result.shape == synthetic_photo().shape


def test_a_photo_too_thin_for_max_size_is_refused_before_any_work(engine):
    events: list[Progress] = []
    with pytest.raises(EngineError, match="too thin to process at max_size 128"):
        engine.stylize(
            synthetic_photo(40, 4000), [synthetic_painting()], params(max_size=128), events.append
        )
    assert not [e for e in events if e.phase == "optimising"]


def test_jobs_run_on_average_pooling_and_a_detail_job_on_max_pooling(engine):
    # Through a max pooling the gradient reaches one pixel per 2 x 2 window, and large results
    # grew isolated light dots on that grid; a detail pass on average pooling grew a mesh
    # (bench/speckle_candidates.py and network.pooling_for).
    import tensorflow as tf

    def pools(model: tf.keras.Model) -> set[type]:
        return {type(layer) for layer in model.layers if "pool" in layer.name}

    for precision in ("float32", engine.precision):
        plain_plan, plain = engine._plan(params(precision=precision))
        detail_plan, detail = engine._plan(params(precision=precision, upscale="detail"))
        assert pools(plain) == {tf.keras.layers.AveragePooling2D}
        assert pools(detail) == {tf.keras.layers.MaxPooling2D}
        assert (plain_plan.pooling, detail_plan.pooling) == ("avg", "max")
