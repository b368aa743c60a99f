"""The compiled objective of a layer plan: weighted Gatys loss terms and their image gradient.

One ``tf.function`` per layer plan, shared by every job and pass: height and width are None in
its signature, so a new image size does not retrace it (with XLA each new size is still compiled
once). What changes between passes and jobs comes in as ``Targets``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from nst_server.engine import losses
from nst_server.engine.device import import_tensorflow
from nst_server.engine.network import LayerPlan, as_float32, preprocess
from nst_server.params import VGG19_LAYERS

tf = import_tensorflow()

#: Names of the terms, in the order of the report vector (the optimiser's ``report``).
TERMS = ("content", "style", "tv", "anchor")
#: Largest float16 loss scale; halved whenever the gradient overflows (and the step redone).
FLOAT16_LOSS_SCALE = 2.0**15
#: What a float16 run that overflows even unscaled says (the engine passes it on).
FLOAT16_OVERFLOW = (
    "the computation overflowed in float16; use precision 'mixed_bfloat16' or 'float32'"
)
IMAGE_SPEC = tf.TensorSpec((1, None, None, 3), tf.float32)


class Targets(NamedTuple):
    """Everything an objective needs besides the image, for one pass."""

    content: tuple  # content features, one per content layer (1 x h x w x C)
    style: tuple  # style statistics, one per style layer (see losses.style_statistics)
    weights: tf.Tensor  # weights of TERMS
    mask: tf.Tensor  # 1 x H x W x 1 in [0, 1]: where the style goes (all ones without a mask)
    photo: tf.Tensor  # 1 x H x W x 3: the photo at this size, for the anchor outside the mask


def targets_signature(plan: LayerPlan) -> Targets:
    return Targets(
        content=tuple(tf.TensorSpec((1, None, None, None), tf.float32) for _ in plan.content),
        style=tuple(losses.statistics_signature(plan.style_loss) for _ in plan.style),
        weights=tf.TensorSpec((len(TERMS),), tf.float32),
        mask=tf.TensorSpec((1, None, None, 1), tf.float32),
        photo=IMAGE_SPEC,
    )


def build_scaled_loss(plan: LayerPlan, model: tf.keras.Model):
    """``scaled(image, targets, loss_scale) -> (total, terms, gradient)``, compiled: the loss is
    multiplied by ``loss_scale`` before the gradient and the gradient divided by it after
    (float16's small gradients would flush to zero otherwise; other precisions pass 1)."""
    signature = [IMAGE_SPEC, targets_signature(plan), tf.TensorSpec((), tf.float32)]

    @tf.function(input_signature=signature, jit_compile=plan.jit)
    def scaled(image, targets, loss_scale):
        with tf.GradientTape() as tape:
            tape.watch(image)
            feats = as_float32(model(preprocess(image), training=False))
            terms = loss_terms(plan, feats, image, targets)
            total = tf.reduce_sum(targets.weights * terms)
            scaled_total = total * loss_scale
        return total, terms, tape.gradient(scaled_total, image) / loss_scale

    return scaled


def build_objective(plan: LayerPlan, model: tf.keras.Model):
    """``objective(image, targets) -> (total, terms, gradient)`` for ``plan``, compiled; in
    float16 with dynamic loss scaling (``with_loss_scaling``)."""
    scaled = build_scaled_loss(plan, model)
    signature = [IMAGE_SPEC, targets_signature(plan)]
    if plan.policy == "mixed_float16":
        return with_loss_scaling(scaled, signature, jit=plan.jit)

    @tf.function(input_signature=signature, jit_compile=plan.jit)
    def objective(image, targets):
        return scaled(image, targets, tf.constant(1.0))

    return objective


def with_loss_scaling(scaled, signature: list, *, jit: bool = False):
    """Dynamic loss scaling, as in mixed-precision training: the scale starts high so small
    gradients survive float16, and halves whenever the gradient overflows, redoing the
    evaluation; when even a scale of 1 overflows, the call fails with advice."""
    loss_scale = tf.Variable(FLOAT16_LOSS_SCALE, trainable=False)

    @tf.function(input_signature=signature, jit_compile=jit)
    def objective(image, targets):
        def overflowed(total, terms, grad):
            finite = tf.reduce_all(tf.math.is_finite(grad))
            return tf.logical_and(tf.logical_not(finite), loss_scale > 1.0)

        def halve(total, terms, grad):
            loss_scale.assign(loss_scale / 2.0)
            return scaled(image, targets, loss_scale.read_value())

        total, terms, grad = tf.while_loop(
            overflowed, halve, scaled(image, targets, loss_scale.read_value())
        )
        tf.debugging.assert_all_finite(grad, FLOAT16_OVERFLOW)
        return total, terms, grad

    objective.loss_scale = loss_scale
    return objective


def loss_terms(
    plan: LayerPlan, feats: Sequence[tf.Tensor], image: tf.Tensor, targets: Targets
) -> tf.Tensor:
    """[content, style, tv, anchor]; content and style averaged over their layers."""
    zero = tf.constant(0.0, tf.float32)
    grid_masks = masks_on_feature_grids(targets.mask, plan.style_layers)
    content = tf.add_n(
        [
            losses.content_loss(feats[i], t)
            for i, t in zip(plan.content, targets.content, strict=True)
        ]
        or [zero]
    )
    # Without a mask the mask is all ones: the weighted statistics are then the plain ones.
    style = tf.add_n(
        [
            losses.style_loss(plan.style_loss, feats[i], t, grid_masks[plan.outputs[i]])
            for i, t in zip(plan.style, targets.style, strict=True)
        ]
        or [zero]
    )
    content /= max(1, len(plan.content))
    style /= max(1, len(plan.style))
    tv = losses.total_variation_loss(image)
    anchor = losses.anchor_loss(image, targets.photo, targets.mask)
    return tf.stack([content, style, tv, anchor])


def masks_on_feature_grids(mask: tf.Tensor, layers: Sequence[str]) -> dict[str, tf.Tensor]:
    """The mask (1 x H x W x 1) on each layer's grid: averaged over 2 x 2 'valid' windows once
    per pooling before the layer, exactly as VGG19 shrinks the image (and XLA-compilable,
    unlike an area resize)."""
    out: dict[str, tf.Tensor] = {}
    pooled, pools = mask, 0
    for name in sorted(set(layers), key=VGG19_LAYERS.index):
        block = int(name[len("block")]) - 1  # block N comes after N - 1 poolings
        while pools < block:
            pooled = tf.nn.avg_pool2d(pooled, 2, 2, "VALID")
            pools += 1
        out[name] = pooled
    return out
