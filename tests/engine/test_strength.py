"""Strength: the style weight from the photo's own content-to-style loss ratio at the first pass."""

from __future__ import annotations

import numpy as np
import pytest

from nst_server.engine import losses
from nst_server.engine.core import STRENGTH_SCALE, resize
from nst_server.params import StyleParams
from tests.conftest import synthetic_painting, synthetic_photo


def params(**overrides) -> StyleParams:
    return StyleParams.from_mapping({"iterations": 4, "max_size": 64, **overrides}, "cpu")


def soft_painting() -> np.ndarray:
    """Nearly flat, gently graded: its statistics lie near a smooth photo's."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float32) / 64
    return np.stack([0.4 + 0.2 * x, 0.45 + 0.1 * y, 0.5 + 0.05 * x * y], axis=2)


def busy_painting() -> np.ndarray:
    rng = np.random.default_rng(0)
    stripes = synthetic_painting()
    return np.clip(stripes + rng.normal(0, 0.25, stripes.shape), 0, 1).astype(np.float32)


def measured_ratio(engine, photo: np.ndarray, painting: np.ndarray) -> float:
    """Content loss of the painting against the photo over the photo's style loss, computed
    here from the losses module at the first pass's size (64 px)."""
    job = params()
    plan, model = engine._plan(job)  # noqa: SLF001
    features = engine._feature_fn(plan, model)  # noqa: SLF001
    h, w = photo.shape[:2]
    ph = features(resize(photo, h, w)[np.newaxis])
    pa = features(resize(painting, h, w)[np.newaxis])
    target = features(resize(painting, 64, 64)[np.newaxis])
    style = np.mean(
        [
            float(
                losses.style_loss(
                    "gram",
                    ph[i],
                    losses.finish_statistics("gram", (losses.gram_matrix(target[i]),)),
                )
            )
            for i in plan.style
        ]
    )
    content = np.mean([float(losses.content_loss(pa[i], ph[i])) for i in plan.content])
    return content / style


def test_a_given_style_weight_wins_over_strength(engine):
    photo, painting = synthetic_photo(), busy_painting()
    assert engine.style_weight(photo, [painting], params(style_weight=7.5, strength=90)) == 7.5


def test_strength_50_is_the_scale_times_the_photos_content_to_style_ratio(engine):
    """So at strength 50 the photo's weighted style loss is the scale times the painting's
    content loss, whether the painting is soft or busy."""
    photo = synthetic_photo()
    for painting in (soft_painting(), busy_painting()):
        ratio = measured_ratio(engine, photo, painting)
        weight = engine.style_weight(photo, [painting], params())
        assert weight == pytest.approx(STRENGTH_SCALE * ratio, rel=1e-3)


def test_every_25_points_of_strength_multiply_the_weight_by_ten(engine):
    photo, painting = synthetic_photo(), busy_painting()
    at = {s: engine.style_weight(photo, [painting], params(strength=s)) for s in (25, 50, 75)}
    assert at[75] == pytest.approx(10 * at[50], rel=1e-4)
    assert at[25] == pytest.approx(at[50] / 10, rel=1e-4)


def test_a_continued_run_gets_the_same_weight_as_the_run_it_continues(engine, monkeypatch):
    """The weights the objective really receives, for a fresh run and for one started from its
    result (init_image), are the same."""
    seen: list[np.ndarray] = []
    own = engine._optimiser  # noqa: SLF001

    def spying(plan, model, p):
        optimiser = own(plan, model, p)
        start = optimiser.start

        def recording_start(x0, targets):
            seen.append(targets.weights.numpy())
            return start(x0, targets)

        monkeypatch.setattr(optimiser, "start", recording_start)
        return optimiser

    monkeypatch.setattr(engine, "_optimiser", spying)
    photo, painting = synthetic_photo(), busy_painting()
    fresh = engine.stylize(photo, [painting], params())
    engine.stylize(photo, [painting], params(), init_image=fresh)
    assert len(seen) >= 2  # (the cached optimiser is wrapped once per run: 3 records)
    for weights in seen[1:]:
        np.testing.assert_array_equal(weights, seen[0])
    assert seen[0][1] == pytest.approx(engine.style_weight(photo, [painting], params()), rel=1e-6)
