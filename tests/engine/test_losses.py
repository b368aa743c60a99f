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
    assert losses.style_loss(gram, target).numpy() == pytest.approx(0.75 / 2, rel=1e-6)


def test_total_variation_of_flat_and_striped_images():
    flat = tf.fill((1, 4, 4, 3), 0.3)
    assert losses.total_variation_loss(flat).numpy() == pytest.approx(0.0, abs=1e-12)
    # vertical stripes 0,1,0,1: every horizontal neighbour differs by 1, vertical ones by 0
    stripes = tf.constant(
        np.tile(np.array([0.0, 1.0] * 2, np.float32)[None, None, :, None], (1, 4, 1, 3))
    )
    assert losses.total_variation_loss(stripes).numpy() == pytest.approx(1.0)
