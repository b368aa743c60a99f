"""Losses against values computed by hand on tiny tensors."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from nst_server.engine import losses  # noqa: E402


def test_gram_matrix_is_channel_correlation_over_positions():
    # 1 x 2 x 2 x 2: channel a = [1, 2, 3, 4], channel b = [0, 1, 0, 1]
    feats = tf.constant([[[[1.0, 0.0], [2.0, 1.0]], [[3.0, 0.0], [4.0, 1.0]]]])
    gram = losses.gram_matrix(feats).numpy()
    # a.a = 30, a.b = 6, b.b = 2, divided by 4 positions
    np.testing.assert_allclose(gram, [[7.5, 1.5], [1.5, 0.5]])


def test_gram_matrix_does_not_grow_with_image_size():
    rng = np.random.default_rng(0)
    tile = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    big = np.tile(tile, (1, 3, 3, 1))
    np.testing.assert_allclose(
        losses.gram_matrix(tf.constant(big)).numpy(),
        losses.gram_matrix(tf.constant(tile)).numpy(),
        rtol=1e-5,
    )


def test_content_loss_is_relative_mean_squared_error():
    target = tf.constant([[[[1.0, 2.0], [3.0, 4.0]]]])  # mean square = 30 / 4 = 7.5
    feats = tf.constant([[[[2.0, 2.0], [3.0, 2.0]]]])  # squared errors 1, 0, 0, 4 -> mean 1.25
    assert losses.content_loss(feats, target).numpy() == pytest.approx(1.25 / 7.5, rel=1e-6)
    assert losses.content_loss(target, target).numpy() == 0.0


def test_content_loss_ignores_the_features_scale():
    rng = np.random.default_rng(1)
    target = tf.constant(rng.normal(size=(1, 4, 4, 3)), tf.float32)
    feats = tf.constant(rng.normal(size=(1, 4, 4, 3)), tf.float32)
    assert losses.content_loss(100 * feats, 100 * target).numpy() == pytest.approx(
        losses.content_loss(feats, target).numpy(), rel=1e-5
    )


def test_style_loss_is_relative_mean_squared_gram_error():
    target = tf.constant([[2.0, 0.0], [0.0, 2.0]])  # mean square = 8 / 4 = 2
    gram = tf.constant([[1.0, 1.0], [1.0, 2.0]])  # errors 1, 1, 1, 0 -> mean 0.75
    assert losses.relative_error(gram, target).numpy() == pytest.approx(0.75 / 2, rel=1e-6)


def test_total_variation_of_flat_and_striped_images():
    flat = tf.fill((1, 4, 4, 3), 0.3)
    assert losses.total_variation_loss(flat).numpy() == pytest.approx(0.0, abs=1e-12)
    # vertical stripes 0,1,0,1: every horizontal neighbour differs by 1, vertical ones by 0
    stripes = tf.constant(
        np.tile(np.array([0.0, 1.0] * 2, np.float32)[None, None, :, None], (1, 4, 1, 3))
    )
    assert losses.total_variation_loss(stripes).numpy() == pytest.approx(1.0)


def features(values: np.ndarray) -> tf.Tensor:
    """N x C values as 1 x 1 x N x C features."""
    return tf.constant(values[np.newaxis, np.newaxis], tf.float32)


def target_of(kind: str, values: np.ndarray, seed: int = 0) -> tuple:
    feats = features(values)
    channels = values.shape[-1]
    directions = losses.sliced_directions(channels, seed, 0) if kind == "sliced" else None
    moments = losses.painting_moments(kind, feats, directions)
    return losses.finish_statistics(kind, moments, directions)


@pytest.mark.parametrize("kind", ["gram", "wasserstein", "sliced"])
def test_each_style_loss_is_zero_on_the_paintings_own_features_and_ignores_order(kind):
    rng = np.random.default_rng(2)
    painting = np.abs(rng.normal(size=(400, 6))).astype(np.float32)
    target = target_of(kind, painting)
    own = losses.style_loss(kind, features(painting), target).numpy()
    shuffled = losses.style_loss(kind, features(rng.permutation(painting)), target).numpy()
    other = losses.style_loss(kind, features(painting * 1.5 + 0.2), target).numpy()
    assert own == pytest.approx(0.0, abs=2e-3)
    assert shuffled == pytest.approx(own, abs=2e-3)
    assert other > 0.05


def test_wasserstein_is_the_distance_between_gaussians_relative_to_the_mean_square():
    # One channel: W2^2 = (mu1 - mu2)^2 + (sigma1 - sigma2)^2.
    rng = np.random.default_rng(3)
    base = rng.normal(size=(20000, 1))
    painting = (2.0 + 0.5 * base).astype(np.float32)
    image = (1.0 + 2.0 * base).astype(np.float32)
    mean_square = 2.0**2 + 0.5**2
    expected = ((2.0 - 1.0) ** 2 + (0.5 - 2.0) ** 2) / mean_square
    got = losses.style_loss("wasserstein", features(image), target_of("wasserstein", painting))
    assert got.numpy() == pytest.approx(expected, rel=0.02)


def test_sliced_compares_sorted_projections_so_it_sees_more_than_two_moments():
    # Same mean and variance, different shapes: Gaussian moments cannot tell them apart.
    rng = np.random.default_rng(4)
    normal = rng.normal(size=(8192, 1)).astype(np.float32)
    two_peaks = np.where(rng.random((8192, 1)) < 0.5, -1.0, 1.0).astype(np.float32)
    w2 = losses.style_loss("wasserstein", features(normal), target_of("wasserstein", two_peaks))
    sliced = losses.style_loss("sliced", features(normal), target_of("sliced", two_peaks))
    assert w2.numpy() < 0.01 < sliced.numpy()


@pytest.mark.parametrize("kind", ["gram", "wasserstein", "sliced"])
def test_a_mask_selects_the_statistics_of_its_region(kind):
    rng = np.random.default_rng(5)
    painting = np.abs(rng.normal(size=(256, 4))).astype(np.float32)
    inside = rng.permutation(painting)  # the painting's own statistics ...
    outside = inside * 3.0 + 1.0  # ... and something far from them
    image = features(np.concatenate([inside, outside]))
    mask = tf.constant(np.r_[np.ones(256), np.zeros(256)].reshape(1, 1, -1, 1), tf.float32)
    target = target_of(kind, painting)
    assert losses.style_loss(kind, image, target, mask).numpy() == pytest.approx(0.0, abs=2e-3)
    assert losses.style_loss(kind, image, target).numpy() > 0.05


@pytest.mark.parametrize("kind", ["gram", "wasserstein", "sliced"])
def test_a_blend_with_weight_one_is_the_painting_and_half_half_lies_between(kind):
    rng = np.random.default_rng(6)
    first = np.abs(rng.normal(size=(300, 4))).astype(np.float32)
    second = (first * 2.0 + 0.5).astype(np.float32)
    directions = losses.sliced_directions(4, 0, 0) if kind == "sliced" else None

    def moments(values: np.ndarray) -> tuple:
        return losses.painting_moments(kind, features(values), directions)

    def blended(a: float) -> tuple:
        mix = losses.blend_moments([(moments(first), a), (moments(second), 1.0 - a)])
        return losses.finish_statistics(kind, mix, directions)

    only_first = losses.style_loss(kind, features(first), blended(1.0)).numpy()
    assert only_first == pytest.approx(0.0, abs=2e-3)
    half = blended(0.5)
    for values in (first, second):
        assert losses.style_loss(kind, features(values), half).numpy() > 1e-3
    assert (
        losses.style_loss(kind, features(second), half).numpy()
        < losses.style_loss(kind, features(second), blended(1.0)).numpy()
    )
