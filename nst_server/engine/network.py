"""VGG19 with the real weights, in the precision a job asks for, cut at the layers a job uses."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from nst_server.engine.device import import_tensorflow
from nst_server.params import VGG19_LAYERS
from nst_server.weights import WeightsSource, load_weights

tf = import_tensorflow()
log = logging.getLogger(__name__)

#: Caffe-style VGG input: BGR, 0..255, ImageNet mean subtracted (what the weights were trained on).
_BGR_MEAN = (103.939, 116.779, 123.68)


#: How VGG19 shrinks its feature maps between blocks. Average by default, as Gatys et al.
#: recommend for synthesis: through a max pooling the gradient reaches one pixel of each 2 x 2
#: window, and a long optimisation grows isolated light points on that grid (the speckle of
#: large results; bench/speckle_candidates.py shows both side by side).
POOLINGS = ("avg", "max")
DEFAULT_POOLING = "avg"


def pooling_for(upscale: str) -> str:
    """The pooling a job's network uses. A detail pass (upscale "detail") runs on max pooling:
    it asks for the painting's finest texture in ten steps, and average pooling hides a
    pixel-scale mesh from the deeper layers, so the mesh is what those steps added; with max
    pooling the deeper layers see it and the strokes stay strokes."""
    return "max" if upscale == "detail" else DEFAULT_POOLING


@dataclass(frozen=True)
class LayerPlan:
    """One compiled configuration: which extractor outputs are content and style features, the
    statistic the style loss matches, the dtype policy VGG19 computes in, its pooling, and
    whether the step is XLA-compiled."""

    outputs: tuple[str, ...]
    content: tuple[int, ...]
    style: tuple[int, ...]
    style_loss: str = "gram"
    policy: str = "float32"
    jit: bool = False
    pooling: str = DEFAULT_POOLING

    @property
    def style_layers(self) -> tuple[str, ...]:
        return tuple(self.outputs[i] for i in self.style)


def layer_plan(
    content_layers: Sequence[str],
    style_layers: Sequence[str],
    *,
    style_loss: str = "gram",
    policy: str = "float32",
    jit: bool = False,
    pooling: str = DEFAULT_POOLING,
) -> LayerPlan:
    # Outputs in network order: the model then computes only up to the deepest one.
    outputs = tuple(n for n in VGG19_LAYERS if n in content_layers or n in style_layers)
    return LayerPlan(
        outputs=outputs,
        content=tuple(outputs.index(n) for n in content_layers),
        style=tuple(outputs.index(n) for n in style_layers),
        style_loss=style_loss,
        policy=policy,
        jit=jit,
        pooling=pooling,
    )


def build_vgg19(weights: WeightsSource, *, pooling: str = DEFAULT_POOLING) -> tf.keras.Model:
    """VGG19's convolutional part (float32) with ``weights`` and ``pooling`` between blocks;
    frozen: gradients go to the image."""
    started = time.perf_counter()
    vgg = tf.keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
    vgg = _with_pooling(vgg, pooling)
    # Our reader for both files: it checks a known file's digest on the very bytes it parses.
    for name, (kernel, bias) in load_weights(weights).items():
        vgg.get_layer(name).set_weights([kernel, bias])
    vgg.trainable = False
    log.info("VGG19 built in %.1f s from %s", time.perf_counter() - started, weights.describe())
    return vgg


def with_pooling(vgg: tf.keras.Model, pooling: str) -> tf.keras.Model:
    """A copy of ``vgg`` (weights included) pooling with ``pooling`` between blocks."""
    copy = _with_pooling(vgg, pooling)
    copy.set_weights(vgg.get_weights())
    copy.trainable = False
    return copy


def _with_pooling(vgg: tf.keras.Model, pooling: str) -> tf.keras.Model:
    """``vgg``'s architecture (same layer names, fresh weights) with ``pooling`` between blocks."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    kind = {"avg": tf.keras.layers.AveragePooling2D, "max": tf.keras.layers.MaxPooling2D}[pooling]

    def clone(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        if isinstance(layer, (tf.keras.layers.AveragePooling2D, tf.keras.layers.MaxPooling2D)):
            return kind.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    return tf.keras.models.clone_model(vgg, clone_function=clone)


def with_policy(vgg: tf.keras.Model, policy: str) -> tf.keras.Model:
    """A copy of ``vgg`` whose layers compute in ``policy`` (e.g. mixed_bfloat16); the kernels
    are stored as float32 and cast once per step."""

    def clone(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": policy})

    copy = tf.keras.models.clone_model(vgg, clone_function=clone)
    copy.set_weights(vgg.get_weights())
    copy.trainable = False
    return copy


def extractor(network: tf.keras.Model, outputs: Sequence[str]) -> tf.keras.Model:
    """``network`` cut after the deepest of ``outputs``, returning those layers' activations."""
    model = tf.keras.Model(network.input, [network.get_layer(n).output for n in outputs])
    model.trainable = False
    return model


def preprocess(image: tf.Tensor) -> tf.Tensor:
    """[0, 1] RGB -> Caffe-style BGR, 0..255, mean subtracted (the VGG weights' convention)."""
    bgr = tf.reverse(image, axis=[-1]) * 255.0
    return bgr - tf.constant(_BGR_MEAN, tf.float32)


def as_float32(features: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """Features in float32 whatever the network computed in: statistics and losses sum over
    many positions, which bfloat16's 8-bit mantissa would not survive."""
    return [tf.cast(f, tf.float32) for f in features]
