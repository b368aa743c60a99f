"""The three style losses in whole runs on the real VGG19, with masks and blends for each."""

from __future__ import annotations

import numpy as np
import pytest

from nst_server.params import StyleParams
from tests.conftest import synthetic_painting, synthetic_photo

KINDS = ["gram", "wasserstein", "sliced"]


def params(kind: str, **overrides) -> StyleParams:
    return StyleParams.from_mapping(
        {"iterations": 10, "max_size": 64, "style_loss": kind, **overrides}, "cpu"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_each_loss_moves_the_photo_towards_the_paintings_statistics(engine, kind):
    photo, painting = synthetic_photo(), synthetic_painting()
    result = engine.stylize(photo, [painting], params(kind))
    before = engine.loss_terms(photo, photo, [painting], params(kind))["style"]
    after = engine.loss_terms(result, photo, [painting], params(kind))["style"]
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("kind", KINDS)
def test_each_loss_keeps_the_photo_outside_a_mask(engine, kind):
    photo = synthetic_photo(64, 96)
    mask = np.zeros((64, 96), np.float32)
    mask[:, 48:] = 1.0
    result = engine.stylize(photo, [synthetic_painting()], params(kind), mask=mask)
    assert np.abs(result[:, :40] - photo[:, :40]).max() < 0.02
    assert np.abs(result[:, 56:] - photo[:, 56:]).mean() > 0.02


@pytest.mark.parametrize("kind", KINDS)
def test_each_loss_blends_paintings(engine, kind):
    photo, first = synthetic_photo(), synthetic_painting()
    second = synthetic_painting()[::-1] * 0.7
    single = engine.stylize(photo, [first], params(kind))
    only_first = engine.stylize(photo, [first, second], params(kind, style_blend=[1.0, 0.0]))
    mixed = engine.stylize(photo, [first, second], params(kind, style_blend=[1.0, 1.0]))
    np.testing.assert_allclose(only_first, single, atol=1e-4)
    assert np.abs(mixed - single).mean() > 0.005


def test_sliced_is_the_same_picture_for_the_same_seed_and_another_for_another(engine):
    photo, painting = synthetic_photo(), [synthetic_painting()]
    first = engine.stylize(photo, painting, params("sliced", seed=1))
    again = engine.stylize(photo, painting, params("sliced", seed=1))
    other = engine.stylize(photo, painting, params("sliced", seed=2))
    np.testing.assert_allclose(first, again, atol=1e-5)
    assert np.abs(first - other).mean() > 1e-3
