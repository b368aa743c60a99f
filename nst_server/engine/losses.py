"""Gatys et al. losses and the style statistics they compare, as pure functions of tensors.

Changes from the paper, on purpose:
- Each content and style term is divided by the mean square of its target. The raw squared
  errors differ by orders of magnitude between layers, networks and image sizes; relative
  errors do not, so one set of weights works at 128 px and at 2048 px and does not depend on
  the weights' scale.
- Total variation is the mean squared difference of neighbouring pixels (image in [0, 1]),
  again independent of size.

The style statistics (``STYLE_LOSSES`` in params.py), per style layer:
- "gram": the Gram matrix, averaged over positions (Gatys et al. 2016);
- "wasserstein": the features' mean and covariance, compared by the Wasserstein-2 distance
  between Gaussians with those moments (as in crowsonkb's style-transfer-pytorch):
  |mu - mu_t|^2 + tr(S) + tr(S_t) - 2 tr((S_t^1/2 S S_t^1/2)^1/2);
- "sliced": the features' whole distribution along fixed random directions, compared by the
  sliced Wasserstein distance: sorted projections against the painting's quantiles (Heitz et al.,
  "A Sliced Wasserstein Loss for Neural Texture Synthesis", CVPR 2021). The directions stay
  fixed within a job, which L-BFGS needs (its curvature pairs assume one objective).

Each kind is computed in three steps: ``painting_moments`` of one painting's features (what can
be blended linearly), ``blend_moments`` of several paintings, and ``finish_statistics`` into the
tensors the loss reads (``statistics_signature``). A blend of paintings is the mixture of their
feature distributions for "gram" and "wasserstein" (weighted moments) and the Wasserstein
barycentre of the marginals for "sliced" (weighted quantiles).
"""

from __future__ import annotations

from collections.abc import Sequence

from nst_server.engine.device import import_tensorflow

tf = import_tensorflow()

#: Keeps the relative errors finite when a target is all zeros (a dead ReLU layer on a flat image).
_EPS = 1e-8
#: Quantiles kept of each projection of a painting's features ("sliced").
SLICED_QUANTILES = 4096


def _flat(features: tf.Tensor) -> tf.Tensor:
    """1 x H x W x C -> (H * W) x C."""
    return tf.reshape(features, (-1, tf.shape(features)[-1]))


def _weights(mask: tf.Tensor | None, features: tf.Tensor) -> tf.Tensor:
    """Per-position weights (H * W) x 1 from a mask on the features' grid (ones without)."""
    if mask is None:
        return tf.ones((tf.shape(_flat(features))[0], 1), features.dtype)
    return tf.reshape(mask, (-1, 1))


def gram_matrix(features: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
    """Channel correlations of ``features`` (1 x H x W x C), averaged over positions -> C x C.

    With ``mask`` (1 x H x W x 1, values in [0, 1], on the features' grid) the average is
    weighted by the mask: the statistics of the masked region only.
    """
    flat = _flat(features)
    weights = _weights(mask, features)
    return tf.matmul(flat * weights, flat, transpose_a=True) / (tf.reduce_sum(weights) + _EPS)


def weighted_moments(
    features: tf.Tensor, mask: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """(mean C, covariance C x C) of the features, weighted by ``mask`` like ``gram_matrix``."""
    flat = _flat(features)
    weights = _weights(mask, features)
    total = tf.reduce_sum(weights) + _EPS
    mean = tf.reduce_sum(flat * weights, 0) / total
    centred = flat - mean
    return mean, tf.matmul(centred * weights, centred, transpose_a=True) / total


def content_loss(features: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Mean squared feature error relative to the target's mean square."""
    return tf.reduce_mean(tf.square(features - target)) / (tf.reduce_mean(tf.square(target)) + _EPS)


def relative_error(value: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Mean squared error relative to the target's mean square."""
    return tf.reduce_mean(tf.square(value - target)) / (tf.reduce_mean(tf.square(target)) + _EPS)


def anchor_loss(image: tf.Tensor, photo: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean squared pixel difference from the photo where ``mask`` is 0 (outside the region)."""
    return tf.reduce_mean((1.0 - mask) * tf.square(image - photo))


def total_variation_loss(image: tf.Tensor) -> tf.Tensor:
    """Mean squared difference between vertical and horizontal neighbours (1 x H x W x 3)."""
    down = image[:, 1:, :, :] - image[:, :-1, :, :]
    right = image[:, :, 1:, :] - image[:, :, :-1, :]
    return tf.reduce_mean(tf.square(down)) + tf.reduce_mean(tf.square(right))


# -- style statistics -------------------------------------------------------------------------


def sliced_directions(channels: int, seed: int, layer: int) -> tf.Tensor:
    """C x C random unit directions for "sliced", the same for a given seed and layer."""
    raw = tf.random.stateless_normal((channels, channels), seed=(seed, layer))
    return raw / tf.norm(raw, axis=0, keepdims=True)


def painting_moments(kind: str, features: tf.Tensor, directions: tf.Tensor | None = None) -> tuple:
    """What of one painting's features (1 x H x W x C) the style loss ``kind`` needs, in a form
    that blends linearly (``blend_moments``)."""
    if kind == "gram":
        return (gram_matrix(features),)
    if kind == "wasserstein":
        flat = _flat(features)
        positions = tf.cast(tf.shape(flat)[0], tf.float32)
        return tf.reduce_mean(flat, 0), tf.matmul(flat, flat, transpose_a=True) / positions
    if kind == "sliced":
        assert directions is not None
        projected = tf.sort(tf.matmul(_flat(features), directions), axis=0)
        return (_resample_sorted(projected, SLICED_QUANTILES),)
    raise ValueError(f"unknown style loss {kind!r}")


def blend_moments(parts: Sequence[tuple[tuple, float]]) -> tuple:
    """The weighted sum of several paintings' moments (weights summing to 1)."""
    blended = None
    for moments, weight in parts:
        scaled = tuple(weight * m for m in moments)
        blended = (
            scaled
            if blended is None
            else tuple(a + b for a, b in zip(blended, scaled, strict=True))
        )
    assert blended is not None, "at least one painting with a weight above 0"
    return blended


def finish_statistics(kind: str, moments: tuple, directions: tf.Tensor | None = None) -> tuple:
    """The style target the loss reads (see ``statistics_signature``)."""
    if kind == "gram":
        return moments
    if kind == "wasserstein":
        mean, second = moments
        covariance = second - mean[:, tf.newaxis] * mean[tf.newaxis, :]
        values, vectors = tf.linalg.eigh(covariance)
        root = tf.matmul(vectors * tf.sqrt(tf.maximum(values, 0.0)), vectors, transpose_b=True)
        mean_square = tf.linalg.trace(covariance) + tf.reduce_sum(tf.square(mean))
        return mean, root, tf.linalg.trace(covariance), mean_square
    if kind == "sliced":
        assert directions is not None
        return directions, moments[0]
    raise ValueError(f"unknown style loss {kind!r}")


def statistics_signature(kind: str) -> tuple:
    """TensorSpecs of one layer's style target of ``kind``."""
    matrix = tf.TensorSpec((None, None), tf.float32)
    scalar = tf.TensorSpec((), tf.float32)
    if kind == "gram":
        return (matrix,)
    if kind == "wasserstein":
        return tf.TensorSpec((None,), tf.float32), matrix, scalar, scalar
    if kind == "sliced":
        return matrix, matrix
    raise ValueError(f"unknown style loss {kind!r}")


def style_loss(
    kind: str, features: tf.Tensor, target: tuple, mask: tf.Tensor | None = None
) -> tf.Tensor:
    """The style loss ``kind`` of ``features`` (1 x H x W x C) against a finished target, over
    the positions ``mask`` (on the features' grid) selects; relative to the target's size."""
    if kind == "gram":
        (target_gram,) = target
        return relative_error(gram_matrix(features, mask), target_gram)
    if kind == "wasserstein":
        return _wasserstein_loss(features, target, mask)
    if kind == "sliced":
        return _sliced_loss(features, target, mask)
    raise ValueError(f"unknown style loss {kind!r}")


def _wasserstein_loss(features: tf.Tensor, target: tuple, mask: tf.Tensor | None) -> tf.Tensor:
    target_mean, target_root, target_trace, mean_square = target
    mean, covariance = weighted_moments(features, mask)
    inner = tf.matmul(target_root, tf.matmul(covariance, target_root))
    inner = 0.5 * (inner + tf.transpose(inner))  # symmetric up to rounding: eigvalsh needs it
    values = tf.linalg.eigvalsh(inner)
    # A floor keeps sqrt's gradient finite at eigenvalues that are zero (dead channels).
    floor = 1e-6 * (target_trace + _EPS) / tf.cast(tf.shape(values)[0], tf.float32)
    cross = tf.reduce_sum(tf.sqrt(tf.maximum(values, floor)))
    distance = (
        tf.reduce_sum(tf.square(mean - target_mean))
        + tf.linalg.trace(covariance)
        + target_trace
        - 2.0 * cross
    )
    return tf.maximum(distance, 0.0) / (mean_square + _EPS)


def _sliced_loss(features: tf.Tensor, target: tuple, mask: tf.Tensor | None) -> tf.Tensor:
    directions, quantiles = target
    flat = _flat(features)
    if mask is not None:
        flat = tf.boolean_mask(flat, tf.reshape(mask, [-1]) >= 0.5)
    projected = tf.sort(tf.matmul(flat, directions), axis=0)
    wanted = _resample_sorted(quantiles, tf.shape(projected)[0])
    return relative_error(projected, wanted)


def _resample_sorted(sorted_values: tf.Tensor, count: int | tf.Tensor) -> tf.Tensor:
    """N x D sorted columns -> count x D, by linear interpolation of the quantile function at
    the midpoints (i + 1/2) / count."""
    n = tf.shape(sorted_values)[0]
    where = (tf.range(count, dtype=tf.float32) + 0.5) / tf.cast(count, tf.float32)
    position = tf.clip_by_value(
        where * tf.cast(n, tf.float32) - 0.5, 0.0, tf.cast(n - 1, tf.float32)
    )
    below = tf.cast(tf.floor(position), tf.int32)
    above = tf.minimum(below + 1, n - 1)
    share = (position - tf.cast(below, tf.float32))[:, tf.newaxis]
    return (1.0 - share) * tf.gather(sorted_values, below) + share * tf.gather(sorted_values, above)
