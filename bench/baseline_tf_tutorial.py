"""The baseline: the TensorFlow "Neural style transfer" tutorial's loop, on our VGG19 weights.

What the tutorial (tensorflow.org/tutorials/generative/style_transfer) does, kept here on
purpose because it is what the benchmark compares against:
- images read from disk, scaled so the longer side is ``max_dim`` (one fixed size) with a
  bilinear resize, in [0, 1];
- Keras VGG19 built for every run, content layer block5_conv2, style layers
  block1_conv1..block5_conv1, inputs through ``vgg19.preprocess_input(x * 255)``;
- Gram matrices via einsum divided by the number of positions; losses are plain mean squared
  errors, style weight 1e-2, content weight 1e4, plus 30 x ``tf.image.total_variation``;
- a ``@tf.function`` training step with Keras Adam (lr 0.02, beta_1 0.99, epsilon 0.1),
  starting from the content image, clipped to [0, 1] after every step.

The single difference: the network's weights come from ``nst_server.weights`` (the same real
VGG19 the engine uses, loaded from disk on every run as the tutorial loads its .h5), because
``weights="imagenet"`` needs the internet. Same backbone, so the comparison is about the loop.

    .venv/bin/python bench/baseline_tf_tutorial.py CONTENT STYLE --size 256 --steps 20 [--out X]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from nst_server.weights import load_weights, resolve_weights  # noqa: E402

CONTENT_LAYERS = ("block5_conv2",)
STYLE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
STYLE_WEIGHT = 1e-2
CONTENT_WEIGHT = 1e4
TOTAL_VARIATION_WEIGHT = 30.0
LEARNING_RATE = 0.02
BETA_1 = 0.99
EPSILON = 1e-1


@dataclass
class BaselineRun:
    """What one tutorial-style run produced, and where its time went."""

    image: np.ndarray  # H x W x 3 float32 in [0, 1], at the processing size
    setup_s: float  # reading images + building VGG19 + loading weights + targets
    first_step_s: float  # includes tracing the @tf.function
    step_times: list[float] = field(default_factory=list)  # every step after the first
    total_s: float = 0.0  # the whole run, wall time
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)  # step -> image then

    @property
    def steps(self) -> int:
        return 1 + len(self.step_times)


def load_img(path: str | os.PathLike[str], max_dim: int) -> tf.Tensor:
    """The tutorial's ``load_img``: decode, to float, longer side ``max_dim``, batch of one."""
    img = tf.io.read_file(str(path))
    img = tf.image.decode_image(img, channels=3, expand_animations=False)
    img = tf.image.convert_image_dtype(img, tf.float32)
    shape = tf.cast(tf.shape(img)[:-1], tf.float32)
    scale = max_dim / tf.reduce_max(shape)
    new_shape = tf.cast(shape * scale, tf.int32)
    img = tf.image.resize(img, new_shape)
    return img[tf.newaxis, :]


def vgg_layers(layer_names: tuple[str, ...]) -> tf.keras.Model:
    """The tutorial's ``vgg_layers``, with our weights set instead of downloading ImageNet's."""
    vgg = tf.keras.applications.VGG19(include_top=False, weights=None)
    for name, (kernel, bias) in load_weights(resolve_weights()).items():
        vgg.get_layer(name).set_weights([kernel, bias])
    vgg.trainable = False
    outputs = [vgg.get_layer(name).output for name in layer_names]
    return tf.keras.Model([vgg.input], outputs)


def gram_matrix(input_tensor: tf.Tensor) -> tf.Tensor:
    result = tf.linalg.einsum("bijc,bijd->bcd", input_tensor, input_tensor)
    input_shape = tf.shape(input_tensor)
    num_locations = tf.cast(input_shape[1] * input_shape[2], tf.float32)
    return result / num_locations


class StyleContentExtractor:
    """The tutorial's ``StyleContentModel`` (a plain class: Keras 3 gains nothing from a
    subclassed Model here, and the computation is identical)."""

    def __init__(self, style_layers: tuple[str, ...], content_layers: tuple[str, ...]) -> None:
        self.vgg = vgg_layers(style_layers + content_layers)
        self.style_layers = style_layers
        self.content_layers = content_layers
        self.num_style_layers = len(style_layers)

    def __call__(self, inputs: tf.Tensor) -> dict[str, dict[str, tf.Tensor]]:
        preprocessed = tf.keras.applications.vgg19.preprocess_input(inputs * 255.0)
        outputs = self.vgg(preprocessed)
        style_outputs = [gram_matrix(o) for o in outputs[: self.num_style_layers]]
        content_outputs = outputs[self.num_style_layers :]
        return {
            "content": dict(zip(self.content_layers, content_outputs, strict=True)),
            "style": dict(zip(self.style_layers, style_outputs, strict=True)),
        }


def run_baseline(
    content_path: str | os.PathLike[str],
    style_path: str | os.PathLike[str],
    size: int,
    steps: int,
    on_step: Callable[[int, float], None] | None = None,
    snapshot_steps: Sequence[int] = (),
) -> BaselineRun:
    """One complete tutorial run: reload the images, rebuild the network, ``steps`` Adam steps.

    ``on_step(step, seconds)`` is told each step's wall time (progress printing); the image
    after each step in ``snapshot_steps`` is kept (copied outside the timed step).
    """
    started = time.perf_counter()
    content_image = load_img(content_path, size)
    style_image = load_img(style_path, size)
    extractor = StyleContentExtractor(STYLE_LAYERS, CONTENT_LAYERS)
    style_targets = extractor(style_image)["style"]
    content_targets = extractor(content_image)["content"]
    image = tf.Variable(content_image)
    opt = tf.keras.optimizers.Adam(learning_rate=LEARNING_RATE, beta_1=BETA_1, epsilon=EPSILON)
    num_style_layers, num_content_layers = len(STYLE_LAYERS), len(CONTENT_LAYERS)

    def style_content_loss(outputs: dict[str, dict[str, tf.Tensor]]) -> tf.Tensor:
        style_outputs, content_outputs = outputs["style"], outputs["content"]
        style_loss = tf.add_n(
            [tf.reduce_mean((style_outputs[n] - style_targets[n]) ** 2) for n in style_outputs]
        )
        style_loss *= STYLE_WEIGHT / num_style_layers
        content_loss = tf.add_n(
            [
                tf.reduce_mean((content_outputs[n] - content_targets[n]) ** 2)
                for n in content_outputs
            ]
        )
        content_loss *= CONTENT_WEIGHT / num_content_layers
        return style_loss + content_loss

    @tf.function()
    def train_step(image: tf.Variable) -> tf.Tensor:
        with tf.GradientTape() as tape:
            outputs = extractor(image)
            loss = style_content_loss(outputs)
            loss += TOTAL_VARIATION_WEIGHT * tf.image.total_variation(image)
        grad = tape.gradient(loss, image)
        opt.apply_gradients([(grad, image)])
        image.assign(tf.clip_by_value(image, 0.0, 1.0))
        # Returned (the tutorial returns nothing) only so that reading it waits for the step
        # to finish: per-step times then mean the same on an asynchronous GPU as on a CPU.
        return loss

    setup = time.perf_counter() - started
    times: list[float] = []
    snapshots: dict[int, np.ndarray] = {}
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        float(train_step(image)[0])
        times.append(time.perf_counter() - t0)
        if on_step is not None:
            on_step(step, times[-1])
        if step in snapshot_steps:
            snapshots[step] = image.numpy()[0].astype(np.float32)
    result = image.numpy()[0].astype(np.float32)
    return BaselineRun(
        image=result,
        setup_s=setup,
        first_step_s=times[0] if times else 0.0,
        step_times=times[1:],
        total_s=time.perf_counter() - started,
        snapshots=snapshots,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("content")
    ap.add_argument("style")
    ap.add_argument("--size", type=int, default=256, help="longer side in px (one fixed size)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", help="write the result here (PNG)")
    args = ap.parse_args()
    run = run_baseline(
        args.content,
        args.style,
        args.size,
        args.steps,
        lambda step, s: print(f"step {step}/{args.steps}: {s:.3f} s", flush=True),
    )
    median = float(np.median(run.step_times)) if run.step_times else float("nan")
    print(
        f"setup {run.setup_s:.1f} s, first step {run.first_step_s:.1f} s, median step "
        f"{median:.3f} s, total {run.total_s:.1f} s"
    )
    if args.out:
        from nst_server.images import encode_png

        Path(args.out).write_bytes(encode_png(run.image))


if __name__ == "__main__":
    main()
