"""Gatys et al. losses as pure functions of tensors.

Changes from the paper, on purpose:
- Gram matrices are divided by the number of positions (H*W), so they do not grow with size.
- Each content and style term is divided by the mean square of its target. The raw squared
  errors differ by orders of magnitude between layers, networks and image sizes; relative
  errors do not, so one set of weights (content 1, style 20, TV 1) works at 128 px and at
  2048 px and does not depend on the weights' scale.
- Total variation is the mean squared difference of neighbouring pixels (image in [0, 1]),
  again independent of size.
"""

from __future__ import annotations

import tensorflow as tf

#: Keeps the relative errors finite when a target is all zeros (a dead ReLU layer on a flat image).
_EPS = 1e-8


def gram_matrix(features: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
    """Channel correlations of ``features`` (1 x H x W x C), averaged over positions -> C x C.

    With ``mask`` (1 x H x W x 1, values in [0, 1], on the features' grid) the average is
    weighted by the mask: the statistics of the masked region only.
    """
    channels = tf.shape(features)[-1]
    flat = tf.reshape(features, (-1, channels))
    if mask is None:
        positions = tf.cast(tf.shape(flat)[0], features.dtype)
        return tf.matmul(flat, flat, transpose_a=True) / positions
    weights = tf.reshape(mask, (-1, 1))
    return tf.matmul(flat * weights, flat, transpose_a=True) / (tf.reduce_sum(weights) + _EPS)


def content_loss(features: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Mean squared feature error relative to the target's mean square."""
    return tf.reduce_mean(tf.square(features - target)) / (tf.reduce_mean(tf.square(target)) + _EPS)


def style_loss(gram: tf.Tensor, target_gram: tf.Tensor) -> tf.Tensor:
    """Mean squared Gram error relative to the target Gram's mean square."""
    return tf.reduce_mean(tf.square(gram - target_gram)) / (
        tf.reduce_mean(tf.square(target_gram)) + _EPS
    )


def anchor_loss(image: tf.Tensor, photo: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean squared pixel difference from the photo where ``mask`` is 0 (outside the region)."""
    return tf.reduce_mean((1.0 - mask) * tf.square(image - photo))


def total_variation_loss(image: tf.Tensor) -> tf.Tensor:
    """Mean squared difference between vertical and horizontal neighbours (1 x H x W x 3)."""
    down = image[:, 1:, :, :] - image[:, :-1, :, :]
    right = image[:, :, 1:, :] - image[:, :, :-1, :]
    return tf.reduce_mean(tf.square(down)) + tf.reduce_mean(tf.square(right))
