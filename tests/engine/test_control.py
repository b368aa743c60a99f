"""Issue 4's controls on the real VGG19: colours, masks, blends, style scale, coarse-to-fine."""

from __future__ import annotations

import numpy as np
import pytest

from nst_server.engine import EngineError, Progress
from nst_server.engine.colour import match_colours, rgb_to_ycbcr
from nst_server.params import StyleParams
from tests.conftest import synthetic_painting, synthetic_photo


def params(**overrides) -> StyleParams:
    return StyleParams.from_mapping({"iterations": 8, "max_size": 64, **overrides}, "cpu")


def test_preserve_colors_keeps_the_photos_chroma(engine):
    photo = synthetic_photo(64, 64)
    painting = synthetic_painting()
    plain = engine.stylize(photo, [painting], params())
    kept = engine.stylize(photo, [painting], params(preserve_colors=True))
    chroma = rgb_to_ycbcr(photo)[..., 1:]
    # The palette is the photo's: mean chroma within a bound, and per pixel far closer than
    # without preserve_colors.
    mean_shift = np.abs(rgb_to_ycbcr(kept)[..., 1:].mean((0, 1)) - chroma.mean((0, 1))).max()
    kept_error = np.abs(rgb_to_ycbcr(kept)[..., 1:] - chroma).mean()
    plain_error = np.abs(rgb_to_ycbcr(plain)[..., 1:] - chroma).mean()
    assert mean_shift < 0.02, mean_shift
    assert kept_error < 0.6 * plain_error, (kept_error, plain_error)
    # ... while it is still stylised, not the photo.
    assert np.abs(kept - photo).mean() > 0.01


def test_colour_matching_gives_the_target_mean_and_covariance():
    rng = np.random.default_rng(0)
    source = rng.uniform(0.2, 0.6, (40, 40, 3)).astype(np.float32)
    target = synthetic_photo(40, 40) * 0.8
    out = match_colours(source, target)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), target.reshape(-1, 3).mean(0), atol=0.01)
    np.testing.assert_allclose(
        np.cov(out.reshape(-1, 3), rowvar=False),
        np.cov(target.reshape(-1, 3), rowvar=False),
        atol=0.003,
    )


def test_mask_keeps_the_photo_outside_and_the_optimisation_respects_it(engine):
    photo = synthetic_photo(64, 96)
    mask = np.zeros((64, 96), np.float32)
    mask[:, 48:] = 1.0  # style on the right half only
    events: list[Progress] = []
    result = engine.stylize(
        photo, [synthetic_painting()], params(iterations=10), events.append, mask=mask
    )
    outside = np.s_[:, :40]  # a margin of 8 px keeps away from the soft edge
    inside = np.s_[:, 56:]
    assert np.abs(result[outside] - photo[outside]).max() < 0.02
    assert np.abs(result[inside] - photo[inside]).mean() > 0.03
    # Before the final composite, the optimised image itself kept the outside near the photo.
    iterate = events[-1].preview
    small_photo = synthetic_photo(43, 64)  # the processing size at max_size 64
    left, right = np.s_[:, :26], np.s_[:, 38:]
    assert (
        np.abs(iterate[left] - small_photo[left]).mean()
        < 0.5 * np.abs(iterate[right] - small_photo[right]).mean()
    )


def test_mask_of_another_size_is_a_clear_error(engine):
    with pytest.raises(EngineError, match="must be the same size"):
        engine.stylize(
            synthetic_photo(64, 96),
            [synthetic_painting()],
            params(),
            mask=np.ones((10, 10), np.float32),
        )


def test_blend_weights_one_and_zero_equal_the_single_style(engine):
    photo, first, second = synthetic_photo(), synthetic_painting(), synthetic_painting()[::-1] * 0.7
    single = engine.stylize(photo, [first], params())
    blended = engine.stylize(photo, [first, second], params(style_blend=[1.0, 0.0]))
    mixed = engine.stylize(photo, [first, second], params(style_blend=[1.0, 1.0]))
    np.testing.assert_allclose(blended, single, atol=1e-4)
    assert np.abs(mixed - single).mean() > 0.005


def test_blend_count_must_match_the_styles(engine):
    with pytest.raises(EngineError, match="one weight per style image"):
        engine.stylize(synthetic_photo(), [synthetic_painting()], params(style_blend=[1, 2]))


def test_style_scale_changes_which_statistics_are_matched(engine):
    photo, painting = synthetic_photo(128, 128), synthetic_painting(128, 128)
    scaled = {k: params(style_scale=k, iterations=20, max_size=128) for k in (0.5, 1.5)}
    results = {k: engine.stylize(photo, [painting], p) for k, p in scaled.items()}
    for own, other in ((0.5, 1.5), (1.5, 0.5)):
        at_own = engine.loss_terms(results[own], photo, [painting], scaled[own])
        at_other = engine.loss_terms(results[own], photo, [painting], scaled[other])
        assert at_own["style"] < at_other["style"]


def test_init_image_is_the_starting_point(engine):
    events: list[Progress] = []
    start = synthetic_painting(48, 64)
    engine.stylize(
        synthetic_photo(),
        [synthetic_painting()],
        params(iterations=1),
        events.append,
        init_image=start,
    )
    preview = events[-1].preview
    assert np.abs(preview - start).mean() < 0.5 * np.abs(preview - synthetic_photo()).mean()


def test_coarse_to_fine_matches_single_scale_style_statistics(engine, monkeypatch):
    # The same schedule as a 384 px default run, at half the size, to keep the test quick.
    monkeypatch.setattr("nst_server.engine.planning.SMALLEST_SCALE", 128)
    photo, painting = synthetic_photo(144, 192), synthetic_painting(192, 192)
    events: list[Progress] = []
    multi = engine.stylize(photo, [painting], params(max_size=192, iterations=30), events.append)
    single = engine.stylize(
        photo, [painting], params(max_size=192, iterations=30, coarse_to_fine=False)
    )
    steps = [e for e in events if e.phase == "optimising"]
    assert steps[-1].scales > 1 and steps[0].size[0] < steps[-1].size[0] == 192
    measure = params(max_size=192)
    style = {
        name: engine.loss_terms(img, photo, [painting], measure)["style"]
        for name, img in (("multi", multi), ("single", single), ("photo", photo))
    }
    assert style["multi"] < 0.75 * style["photo"] and style["single"] < 0.75 * style["photo"], style
    assert 0.5 < style["multi"] / style["single"] < 2.0, style


def test_a_job_that_does_not_fit_the_free_memory_is_refused_not_shrunk(engine, monkeypatch):
    from nst_server.engine.planning import plan_job

    photo, painting = synthetic_photo(96, 128), synthetic_painting()
    job = params(iterations=2, max_size=128)
    need = plan_job(photo.shape[:2], [painting.shape[:2]], job).peak_bytes
    monkeypatch.setenv("NST_FREE_MEMORY_MB", str(need / 2**20))  # 80% of it is usable
    events: list[Progress] = []
    with pytest.raises(EngineError, match="not enough memory: this job .128x96 px"):
        engine.stylize(photo, [painting], job, events.append)
    assert not [e for e in events if e.phase == "optimising"]
    monkeypatch.setenv("NST_FREE_MEMORY_MB", str(need / 2**20 / 0.79))
    assert engine.stylize(photo, [painting], job).shape == photo.shape


def test_finish_early_keeps_the_picture_of_that_step_at_the_photos_size(engine):
    """A callback raising FinishEarly ends the run with the iterate of that step as the result
    (brought to the photo's size), not the photo and not the full run."""
    from nst_server.engine import FinishEarly
    from nst_server.engine.core import resize

    photo = synthetic_photo(48, 96)
    painting = synthetic_painting()
    seen: list[np.ndarray] = []
    engine.preview_interval_s = 0.0  # a preview on every event, to compare with

    def stop_at_three(event: Progress) -> None:
        if event.phase == "optimising":
            seen.append(event.preview.copy())
            if event.step == 3:
                raise FinishEarly

    job = params(iterations=20, max_size=64)
    kept = engine.stylize(photo, [painting], job, stop_at_three)
    assert len(seen) == 3, "the run went on after FinishEarly"
    assert kept.shape == photo.shape
    expected = resize(seen[-1], *photo.shape[:2]).numpy()
    np.testing.assert_allclose(kept, expected, atol=1e-5)
    engine.preview_interval_s = 0.5
    full = engine.stylize(photo, [painting], job)
    assert np.abs(kept - photo).mean() > 1e-3  # it moved away from the photo...
    assert np.abs(kept - full).mean() > 1e-3  # ... but is not the finished picture
