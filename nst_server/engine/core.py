"""StyleEngine: holds VGG19 and runs Gatys et al. style transfer on numpy images.

Contract: images are float32 arrays, H x W x 3 (RGB) or H x W x 4 (RGBA), values in [0, 1].
The result has the content's height, width and channels; its alpha channel is the content's,
untouched. Nothing here knows about HTTP or files.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import tensorflow as tf

from nst_server.engine import losses
from nst_server.engine.errors import EngineError
from nst_server.engine.progress import Progress, ProgressCallback
from nst_server.params import VGG19_LAYERS, StyleParams
from nst_server.weights import WeightsSource, load_weights, resolve_weights

log = logging.getLogger(__name__)

#: Caffe-style VGG input: BGR, 0..255, ImageNet mean subtracted (what the weights were trained on).
_BGR_MEAN = (103.939, 116.779, 123.68)

#: Shorter side, in pixels, below which block5 of VGG19 sees less than two positions.
MIN_SHORT_SIDE = 32

#: How many paintings' style targets are kept between jobs.
_STYLE_CACHE_SIZE = 16


def detect_device() -> str:
    """Return "gpu" when TensorFlow sees one, turning on memory growth so others keep theirs."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # RuntimeError: already initialised (a second engine in one process), harmless.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return "gpu" if gpus else "cpu"


def fit_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) scaled so the longer side is ``long_side`` (never up), short side >= 32 px."""
    longer, shorter = max(height, width), min(height, width)
    if shorter < MIN_SHORT_SIDE:
        raise EngineError(
            f"the image is {width}x{height} px; its shorter side must be at least "
            f"{MIN_SHORT_SIDE} px for VGG19"
        )
    scale = min(1.0, long_side / longer) if long_side > 0 else 1.0
    # Never let the short side drop below the network's minimum when downscaling elongated images.
    scale = max(scale, MIN_SHORT_SIDE / shorter)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: np.ndarray | tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Anti-aliased Lanczos resize of an H x W x C float image, clipped to [0, 1]."""
    image = tf.convert_to_tensor(image, tf.float32)
    if image.shape[0] == height and image.shape[1] == width:
        return image
    resized = tf.image.resize(image, (height, width), method="lanczos3", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


@dataclass(frozen=True)
class _LayerPlan:
    """Which extractor outputs are content and style features, for one layer configuration."""

    outputs: tuple[str, ...]
    content: tuple[int, ...]
    style: tuple[int, ...]


class StyleEngine:
    """VGG19 kept loaded, Gatys losses, L-BFGS or Adam.

    Thread-compatible, not thread-safe: one worker thread owns an engine (the job queue does).
    """

    def __init__(self, weights: WeightsSource | str | None = None, *, fetch: bool = False) -> None:
        self.weights = (
            weights if isinstance(weights, WeightsSource) else resolve_weights(weights, fetch=fetch)
        )
        self.device = detect_device()
        self._vgg: tf.keras.Model | None = None
        self._extractors: dict[tuple[str, ...], tuple[_LayerPlan, tf.keras.Model]] = {}
        self._loss_fns: dict[_LayerPlan, Callable] = {}
        self._feature_fns: dict[_LayerPlan, Callable] = {}
        self._style_cache: collections.OrderedDict[tuple, list[tf.Tensor]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------

    @property
    def weights_description(self) -> str:
        return self.weights.describe()

    @property
    def cached_styles(self) -> int:
        """How many paintings' style targets are cached (repeated edits skip their work)."""
        return len(self._style_cache)

    @property
    def loaded(self) -> bool:
        return self._vgg is not None

    def load(self) -> None:
        """Build VGG19 with the real weights (a few seconds); idempotent."""
        with self._lock:
            if self._vgg is None:
                self._vgg = self._build_vgg()

    def unload(self) -> None:
        """Drop the network and compiled functions (frees GPU memory while idle)."""
        with self._lock:
            self._vgg = None
            self._extractors.clear()
            self._loss_fns.clear()
            self._feature_fns.clear()
            self._style_cache.clear()
            tf.keras.backend.clear_session()

    def _build_vgg(self) -> tf.keras.Model:
        started = time.perf_counter()
        if self.weights.kind == "keras-h5":
            # Keras' own loader for Keras' own file (also what an online user has in ~/.keras).
            vgg = tf.keras.applications.VGG19(
                include_top=False, weights=str(self.weights.path), input_shape=(None, None, 3)
            )
        else:
            vgg = tf.keras.applications.VGG19(
                include_top=False, weights=None, input_shape=(None, None, 3)
            )
            for name, (kernel, bias) in load_weights(self.weights).items():
                vgg.get_layer(name).set_weights([kernel, bias])
        vgg.trainable = False  # gradients w.r.t. the image only, never the kernels
        log.info(
            "VGG19 built in %.1f s from %s on %s",
            time.perf_counter() - started,
            self.weights.describe(),
            self.device,
        )
        return vgg

    def _plan(self, params: StyleParams) -> tuple[_LayerPlan, tf.keras.Model]:
        key = (*params.content_layers, "|", *params.style_layers)
        if key not in self._extractors:
            if self._vgg is None:
                self._vgg = self._build_vgg()
            # Outputs in network order: the model then computes only up to the deepest one.
            outputs = tuple(
                n for n in VGG19_LAYERS if n in params.content_layers or n in params.style_layers
            )
            plan = _LayerPlan(
                outputs=outputs,
                content=tuple(outputs.index(n) for n in params.content_layers),
                style=tuple(outputs.index(n) for n in params.style_layers),
            )
            model = tf.keras.Model(
                self._vgg.input, [self._vgg.get_layer(n).output for n in outputs]
            )
            model.trainable = False
            self._extractors[key] = (plan, model)
        return self._extractors[key]

    # -- compiled functions ------------------------------------------------------------------

    def _feature_fn(self, plan: _LayerPlan, model: tf.keras.Model) -> Callable:
        if plan not in self._feature_fns:

            @tf.function(input_signature=[tf.TensorSpec((1, None, None, 3), tf.float32)])
            def features(image: tf.Tensor) -> list[tf.Tensor]:
                return model(_preprocess(image), training=False)

            self._feature_fns[plan] = features
        return self._feature_fns[plan]

    def _loss_fn(self, plan: _LayerPlan, model: tf.keras.Model) -> Callable:
        """The one compiled loss-and-gradient step for a layer plan, shared by every job.

        Height and width are None in the signature, so a new image size does not retrace.
        """
        if plan not in self._loss_fns:
            signature = [
                tf.TensorSpec((1, None, None, 3), tf.float32),
                tuple(tf.TensorSpec((1, None, None, None), tf.float32) for _ in plan.content),
                tuple(tf.TensorSpec((None, None), tf.float32) for _ in plan.style),
                tf.TensorSpec((3,), tf.float32),
            ]

            @tf.function(input_signature=signature)
            def loss_and_grads(image, content_targets, style_targets, weights):
                with tf.GradientTape() as tape:
                    tape.watch(image)
                    feats = model(_preprocess(image), training=False)
                    terms = _loss_terms(plan, feats, image, content_targets, style_targets)
                    total = weights[0] * terms[0] + weights[1] * terms[1] + weights[2] * terms[2]
                return total, terms, tape.gradient(total, image)

            self._loss_fns[plan] = loss_and_grads
        return self._loss_fns[plan]

    # -- targets ---------------------------------------------------------------------------

    def _style_targets(
        self,
        plan: _LayerPlan,
        model: tf.keras.Model,
        styles: Sequence[np.ndarray],
        long_side: int,
        blend: Sequence[float],
    ) -> list[tf.Tensor]:
        """Blended Gram matrices of the paintings at ``long_side``, cached across jobs."""
        digest = hashlib.sha256()
        for style in styles:
            digest.update(str(style.shape).encode())
            digest.update(np.ascontiguousarray(style[..., :3]).tobytes())
        key = (digest.hexdigest(), long_side, plan.outputs, plan.style, tuple(blend))
        if key in self._style_cache:
            self._style_cache.move_to_end(key)
            return self._style_cache[key]
        features = self._feature_fn(plan, model)
        grams: list[tf.Tensor] | None = None
        for style, share in zip(styles, blend, strict=False):
            h, w = fit_size(style.shape[0], style.shape[1], long_side)
            feats = features(resize(style[..., :3], h, w)[tf.newaxis])
            these = [share * losses.gram_matrix(feats[i]) for i in plan.style]
            grams = these if grams is None else [a + b for a, b in zip(grams, these, strict=False)]
        assert grams is not None
        self._style_cache[key] = grams
        while len(self._style_cache) > _STYLE_CACHE_SIZE:
            self._style_cache.popitem(last=False)
        return grams

    # -- the run -----------------------------------------------------------------------------

    def stylize(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        params: StyleParams,
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Paint ``content`` in the style of ``styles`` (blended equally); see module docstring.

        Raises ``Cancelled`` when ``on_progress`` raises it, ``EngineError`` for requests that
        cannot be done as asked (too small, out of memory), ``ValueError`` for malformed arrays.
        """
        _check_image(content, "content")
        if not styles:
            raise ValueError("at least one style image is needed")
        for style in styles:
            _check_image(style, "style")
        notify = on_progress or (lambda event: None)
        started = time.perf_counter()
        if not self.loaded:
            notify(Progress("loading", 0, params.iterations, 0.0))
            self.load()
        height, width = content.shape[:2]
        long_side = max(height, width) if params.max_size == 0 else params.max_size
        h, w = fit_size(height, width, long_side)
        notify(
            Progress("preparing", 0, params.iterations, time.perf_counter() - started, size=(w, h))
        )
        try:
            pixels = self._optimise(content, styles, params, (h, w), notify, started)
        except tf.errors.ResourceExhaustedError as exc:
            raise EngineError(
                f"out of memory on the {self.device.upper()} at {w}x{h} px: try a smaller "
                f"max_size (e.g. {max(64, max(h, w) // 2)}) or, with L-BFGS, optimizer 'adam', "
                "or close other programs using the graphics card"
            ) from exc
        result = resize(pixels, height, width).numpy()
        if content.shape[2] == 4:
            result = np.concatenate([result, content[..., 3:]], axis=2)
        return result.astype(np.float32, copy=False)

    def _optimise(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        params: StyleParams,
        size: tuple[int, int],
        notify: ProgressCallback,
        started: float,
    ) -> np.ndarray:
        h, w = size
        plan, model = self._plan(params)
        content_small = resize(content[..., :3], h, w)[tf.newaxis]
        feats = self._feature_fn(plan, model)(content_small)
        content_targets = tuple(feats[i] for i in plan.content)
        blend = [1.0 / len(styles)] * len(styles)
        style_targets = tuple(self._style_targets(plan, model, styles, max(h, w), blend))
        weights = tf.constant(
            [params.content_weight, params.style_weight, params.tv_weight], tf.float32
        )
        loss_and_grads = self._loss_fn(plan, model)

        def evaluate(x: np.ndarray) -> tuple[float, np.ndarray, dict[str, float]]:
            image = tf.constant(x.reshape(1, h, w, 3), tf.float32)
            total, terms, grad = loss_and_grads(image, content_targets, style_targets, weights)
            named = {
                "total": float(total),
                "content": float(terms[0]),
                "style": float(terms[1]),
                "tv": float(terms[2]),
            }
            return float(total), grad.numpy().reshape(-1), named

        init = _initial_image(params, content_small[0].numpy(), styles, (h, w))
        optimise = _run_lbfgs if params.optimizer == "lbfgs" else _run_adam
        opt_started = time.perf_counter()

        def report(step: int, x: np.ndarray, named: dict[str, float]) -> None:
            spent = time.perf_counter() - opt_started
            eta = spent / step * (params.iterations - step)
            notify(
                Progress(
                    "optimising",
                    step,
                    params.iterations,
                    time.perf_counter() - started,
                    eta,
                    named,
                    (w, h),
                    x.reshape(h, w, 3).astype(np.float32),
                )
            )

        final = optimise(evaluate, init.reshape(-1), params, report)
        return final.reshape(h, w, 3).astype(np.float32)

    # -- measuring (tests, benchmarks) ------------------------------------------------------

    def loss_terms(
        self,
        image: np.ndarray,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        params: StyleParams,
    ) -> dict[str, float]:
        """The normalised loss terms of ``image`` against ``content`` and ``styles``.

        Everything is taken at ``image``'s size, so results of different runs compare on one
        definition (the benchmark's "equal quality").
        """
        self.load()
        h, w = image.shape[:2]
        plan, model = self._plan(params)
        content_small = resize(content[..., :3], h, w)[tf.newaxis]
        feats = self._feature_fn(plan, model)(content_small)
        blend = [1.0 / len(styles)] * len(styles)
        grams = tuple(self._style_targets(plan, model, styles, max(h, w), blend))
        weights = tf.constant(
            [params.content_weight, params.style_weight, params.tv_weight], tf.float32
        )
        total, terms, _ = self._loss_fn(plan, model)(
            tf.constant(image[np.newaxis, ..., :3], tf.float32),
            tuple(feats[i] for i in plan.content),
            grams,
            weights,
        )
        return {
            "total": float(total),
            "content": float(terms[0]),
            "style": float(terms[1]),
            "tv": float(terms[2]),
        }


def _preprocess(image: tf.Tensor) -> tf.Tensor:
    """[0, 1] RGB -> Caffe-style BGR, 0..255, mean subtracted (the VGG weights' convention)."""
    bgr = tf.reverse(image, axis=[-1]) * 255.0
    return bgr - tf.constant(_BGR_MEAN, tf.float32)


def _loss_terms(
    plan: _LayerPlan,
    feats: Sequence[tf.Tensor],
    image: tf.Tensor,
    content_targets: Sequence[tf.Tensor],
    style_targets: Sequence[tf.Tensor],
) -> tf.Tensor:
    """[content, style, tv], each averaged over its layers."""
    zero = tf.constant(0.0, tf.float32)
    content = tf.add_n(
        [
            losses.content_loss(feats[i], t)
            for i, t in zip(plan.content, content_targets, strict=False)
        ]
        or [zero]
    )
    style = tf.add_n(
        [
            losses.style_loss(losses.gram_matrix(feats[i]), t)
            for i, t in zip(plan.style, style_targets, strict=False)
        ]
        or [zero]
    )
    content /= max(1, len(plan.content))
    style /= max(1, len(plan.style))
    return tf.stack([content, style, losses.total_variation_loss(image)])


def _check_image(image: np.ndarray, what: str) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.ndim != 3
        or image.shape[2] not in (3, 4)
        or image.dtype != np.float32
    ):
        raise ValueError(f"{what} must be a float32 H x W x 3|4 array")


def _initial_image(
    params: StyleParams, content: np.ndarray, styles: Sequence[np.ndarray], size: tuple[int, int]
) -> np.ndarray:
    h, w = size
    if params.init == "content":
        return content.astype(np.float64)
    if params.init == "style":
        return resize(styles[0][..., :3], h, w).numpy().astype(np.float64)
    rng = np.random.default_rng(params.seed)
    return rng.uniform(0.0, 1.0, (h, w, 3))


Evaluate = Callable[[np.ndarray], tuple[float, np.ndarray, dict[str, float]]]
Report = Callable[[int, np.ndarray, dict[str, float]], None]


def _run_lbfgs(
    evaluate: Evaluate, x0: np.ndarray, params: StyleParams, report: Report
) -> np.ndarray:
    """scipy's L-BFGS-B with pixels bounded to [0, 1] (no clipping that would confuse it)."""
    last: dict[str, float] = {}
    step = 0

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad, named = evaluate(x)
        last.update(named)
        return value, grad.astype(np.float64)

    def callback(intermediate_result: scipy.optimize.OptimizeResult) -> None:
        nonlocal step
        step += 1
        report(step, intermediate_result.x, dict(last))

    result = scipy.optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=scipy.optimize.Bounds(0.0, 1.0),
        callback=callback,
        # Run the steps asked for: tolerances at zero stop only on a true standstill.
        options={
            "maxiter": params.iterations,
            "maxfun": params.iterations * 2,
            "maxcor": 20,
            "ftol": 0.0,
            "gtol": 0.0,
        },
    )
    return result.x


def _run_adam(
    evaluate: Evaluate, x0: np.ndarray, params: StyleParams, report: Report
) -> np.ndarray:
    """Adam in numpy, clipped to [0, 1] after each step.

    Five lines of arithmetic costing well under 1% of a VGG19 step; a Keras optimiser would add
    a variable and a retrace for every new image shape.
    """
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    x = x0.copy()
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for step in range(1, params.iterations + 1):
        _, grad, named = evaluate(x)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        m_hat = m / (1 - beta1**step)
        v_hat = v / (1 - beta2**step)
        x = np.clip(x - params.learning_rate * m_hat / (np.sqrt(v_hat) + eps), 0.0, 1.0)
        report(step, x, named)
    return x
