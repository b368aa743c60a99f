"""StyleEngine: holds VGG19 and runs Gatys et al. style transfer on numpy images.

Contract: images are float32 arrays, H x W x 3 (RGB) or H x W x 4 (RGBA), values in [0, 1].
The result has the content's height, width and channels; its alpha channel is the content's,
untouched. Nothing here knows about HTTP or files.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import scipy.optimize
import tensorflow as tf
from threadpoolctl import threadpool_limits

from nst_server.engine import colour, lbfgs, losses, memory
from nst_server.engine.errors import EngineError
from nst_server.engine.planning import JobPlan, plan_job
from nst_server.engine.progress import FinishEarly, Progress, ProgressCallback
from nst_server.params import STRENGTH_DEFAULT, VGG19_LAYERS, StyleParams
from nst_server.weights import WeightsSource, load_weights, resolve_weights

log = logging.getLogger(__name__)

#: Caffe-style VGG input: BGR, 0..255, ImageNet mean subtracted (what the weights were trained on).
_BGR_MEAN = (103.939, 116.779, 123.68)

#: How many (painting, size) style targets are kept between jobs: a coarse-to-fine run uses one
#: per scale; a 512 px entry is about 2.4 MB.
_STYLE_CACHE_SIZE = 48

#: How preserve_colors works: "match" (the painting recoloured to the photo's colour mean and
#: covariance before the transfer) or "luminance" (the result's luminance, the photo's chroma).
#: Both were rendered on Tübingen + The Starry Night: "luminance" keeps every pixel's chroma
#: exactly but reads as a textured photo; "match" keeps the photo's palette (mean chroma within
#: 0.003) while each stroke varies in colour like paint, and the stars and swirls stay whole.
#: "match" looked better.
_COLOUR_METHOD = "match"
#: L-BFGS history length (both implementations).
LBFGS_MEMORY = 20
#: Weight of the pixel anchor outside a mask: strong enough that the outside stays the photo.
_ANCHOR_WEIGHT = 100.0


def detect_device() -> str:
    """Return "gpu" when TensorFlow sees one, turning on memory growth so others keep theirs."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # RuntimeError: already initialised (a second engine in one process), harmless.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    return "gpu" if gpus else "cpu"


def native_bfloat16(device: str, cpu_flags: str | None = None) -> bool:
    """Whether ``device`` has bfloat16 matrix units (where mixed bfloat16 is faster, not slower).

    CPUs: the AMX-BF16 or AVX512-BF16 flags (oneDNN uses them; without them TensorFlow emulates
    bfloat16 and is slower than float32). GPUs: NVIDIA compute capability 8.0 (Ampere) or later.
    ``cpu_flags`` is the flags line of /proc/cpuinfo (read when None; tests pass their own).
    """
    if device == "gpu":
        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            if tuple(details.get("compute_capability") or (0, 0)) < (8, 0):
                return False
        return True
    if cpu_flags is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as info:
                cpu_flags = next((ln for ln in info if ln.startswith("flags")), "")
        except OSError:  # not Linux: no way to tell, float32 is the safe choice
            return False
    flags = set(cpu_flags.split(":", 1)[-1].split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_precision(precision: str, device: str, cpu_flags: str | None = None) -> str:
    """The Keras dtype policy a job runs with: "auto" becomes mixed_bfloat16 or float32."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if native_bfloat16(device, cpu_flags) else "float32"


def resize(image: np.ndarray | tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Anti-aliased Lanczos resize of an H x W x C float image, clipped to [0, 1]."""
    image = tf.convert_to_tensor(image, tf.float32)
    if image.shape[0] == height and image.shape[1] == width:
        return image
    resized = tf.image.resize(image, (height, width), method="lanczos3", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


@dataclass(frozen=True)
class _LayerPlan:
    """One compiled configuration: which extractor outputs are content and style features, the
    dtype policy VGG19 computes in, and whether the step is XLA-compiled."""

    outputs: tuple[str, ...]
    content: tuple[int, ...]
    style: tuple[int, ...]
    policy: str = "float32"
    jit: bool = False


class StyleEngine:
    """VGG19 kept loaded, Gatys losses, L-BFGS or Adam.

    Thread-compatible, not thread-safe: one worker thread owns an engine (the job queue does).
    """

    def __init__(self, weights: WeightsSource | str | None = None, *, fetch: bool = False) -> None:
        self.weights = (
            weights if isinstance(weights, WeightsSource) else resolve_weights(weights, fetch=fetch)
        )
        self.device = detect_device()
        #: Which L-BFGS runs: "tensorflow" (nst_server.engine.lbfgs: state and arithmetic on the
        #: device, so a GPU never waits for the host; on this project's 2-core CPU a default
        #: edit took 39 s against scipy's 51 s, same picture, loss within 1%) or "scipy"
        #: (L-BFGS-B on the host in float64, with a better line search but per-step copies and
        #: a per-pixel Python set-up of its bounds). Tests and benchmarks switch it.
        self.lbfgs = "tensorflow"
        #: What precision "auto" means here (mixed_bfloat16 or float32).
        self.precision = resolve_precision("auto", self.device)
        self._vgg: tf.keras.Model | None = None
        self._networks: dict[str, tf.keras.Model] = {}  # mixed-precision copies, by policy
        self._extractors: dict[tuple, tuple[_LayerPlan, tf.keras.Model]] = {}
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

    def clear_style_cache(self) -> None:
        """Forget cached style targets (benchmarks measure a first edit with it)."""
        self._style_cache.clear()

    @property
    def loaded(self) -> bool:
        return self._vgg is not None

    def load(self, *, warm_up: bool = True) -> None:
        """Build VGG19 with the real weights and (``warm_up``) compile the default job's step:
        a few seconds at server start rather than in the user's first edit; idempotent."""
        with self._lock:
            if self._vgg is None:
                self._vgg = self._build_vgg()
                if warm_up:
                    self._warm_up()

    def _warm_up(self) -> None:
        """Trace the default configuration's compiled functions on a tiny image: tracing costs
        2-3 s on a CPU, once per engine; with None height/width no later size retraces."""
        started = time.perf_counter()
        plan, model = self._plan(StyleParams.for_device(self.device))
        image = tf.fill((1, 64, 64, 3), 0.5)
        feats = self._feature_fn(plan, model)(image)
        grams = [losses.gram_matrix(feats[i]) for i in plan.style]
        self._loss_fn(plan, model)(
            image,
            tuple(feats[i] for i in plan.content),
            tuple(grams),
            tf.constant([1.0, 1.0, 1.0, 0.0]),
            tf.ones((1, 64, 64, 1)),
            image,
            tf.constant(1.0),
        )
        log.info("default step (%s) compiled in %.1f s", plan.policy, time.perf_counter() - started)

    def unload(self) -> None:
        """Drop the network and compiled functions (frees GPU memory while idle)."""
        with self._lock:
            self._vgg = None
            self._networks.clear()
            self._extractors.clear()
            self._loss_fns.clear()
            self._feature_fns.clear()
            self._style_cache.clear()
            tf.keras.backend.clear_session()

    def _build_vgg(self) -> tf.keras.Model:
        started = time.perf_counter()
        vgg = tf.keras.applications.VGG19(
            include_top=False, weights=None, input_shape=(None, None, 3)
        )
        # Our reader for both files: it checks a known file's digest on the bytes it reads.
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

    def _network(self, policy: str) -> tf.keras.Model:
        """VGG19 computing in ``policy``: the float32 network, or a copy made for a mixed policy
        (layers compute in bfloat16/float16; the kernels are cast once, stored as float32)."""
        if self._vgg is None:
            self._vgg = self._build_vgg()
        if policy == "float32":
            return self._vgg
        if policy not in self._networks:

            def with_policy(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
                return layer.__class__.from_config({**layer.get_config(), "dtype": policy})

            copy = tf.keras.models.clone_model(self._vgg, clone_function=with_policy)
            copy.set_weights(self._vgg.get_weights())
            copy.trainable = False
            self._networks[policy] = copy
        return self._networks[policy]

    def _plan(self, params: StyleParams) -> tuple[_LayerPlan, tf.keras.Model]:
        policy = self.precision if params.precision == "auto" else params.precision
        key = (*params.content_layers, "|", *params.style_layers, policy, params.jit)
        if key not in self._extractors:
            network = self._network(policy)
            # Outputs in network order: the model then computes only up to the deepest one.
            outputs = tuple(
                n for n in VGG19_LAYERS if n in params.content_layers or n in params.style_layers
            )
            plan = _LayerPlan(
                outputs=outputs,
                content=tuple(outputs.index(n) for n in params.content_layers),
                style=tuple(outputs.index(n) for n in params.style_layers),
                policy=policy,
                jit=params.jit,
            )
            model = tf.keras.Model(network.input, [network.get_layer(n).output for n in outputs])
            model.trainable = False
            self._extractors[key] = (plan, model)
        return self._extractors[key]

    # -- compiled functions ------------------------------------------------------------------

    def _feature_fn(self, plan: _LayerPlan, model: tf.keras.Model) -> Callable:
        if plan not in self._feature_fns:

            @tf.function(input_signature=[tf.TensorSpec((1, None, None, 3), tf.float32)])
            def features(image: tf.Tensor) -> list[tf.Tensor]:
                return _as_float32(model(_preprocess(image), training=False))

            self._feature_fns[plan] = features
        return self._feature_fns[plan]

    def _loss_fn(self, plan: _LayerPlan, model: tf.keras.Model) -> Callable:
        """The one compiled loss-and-gradient step for a layer plan, shared by every job.

        Height and width are None in the signature, so a new image size does not retrace (with
        XLA each new size is still compiled once). The mask is always given (all ones without
        one), so there is one graph, not two. ``loss_scale`` multiplies the loss before the
        gradient and divides the gradient after: float16 gradients underflow without it.
        """
        if plan not in self._loss_fns:
            image_spec = tf.TensorSpec((1, None, None, 3), tf.float32)
            signature = [
                image_spec,
                tuple(tf.TensorSpec((1, None, None, None), tf.float32) for _ in plan.content),
                tuple(tf.TensorSpec((None, None), tf.float32) for _ in plan.style),
                tf.TensorSpec((4,), tf.float32),  # content, style, tv, anchor weights
                tf.TensorSpec((1, None, None, 1), tf.float32),  # mask
                image_spec,  # the photo, for the anchor outside the mask
                tf.TensorSpec((), tf.float32),  # loss scale
            ]

            @tf.function(input_signature=signature, jit_compile=plan.jit)
            def loss_and_grads(
                image, content_targets, style_targets, weights, mask, photo, loss_scale
            ):
                with tf.GradientTape() as tape:
                    tape.watch(image)
                    feats = _as_float32(model(_preprocess(image), training=False))
                    terms = _loss_terms(
                        plan, feats, image, content_targets, style_targets, mask, photo
                    )
                    total = tf.reduce_sum(weights * terms)
                    scaled = total * loss_scale
                return total, terms, tape.gradient(scaled, image) / loss_scale

            self._loss_fns[plan] = loss_and_grads
        return self._loss_fns[plan]

    # -- targets ---------------------------------------------------------------------------

    def _style_targets(
        self,
        plan: _LayerPlan,
        model: tf.keras.Model,
        styles: Sequence[np.ndarray],
        sizes: Sequence[tuple[int, int]],
        blend: Sequence[float],
        digest: str | None = None,
    ) -> list[tf.Tensor]:
        """Blended Gram matrices of the paintings, each at its (h, w) in ``sizes`` (the job
        plan's), cached across jobs.

        ``digest`` is ``_styles_digest(styles)``, passed in by callers that need several sizes
        so the paintings are hashed once, not once per scale.
        """
        digest = digest or _styles_digest(styles)
        key = (digest, tuple(sizes), plan.outputs, plan.style, tuple(blend))
        if key in self._style_cache:
            self._style_cache.move_to_end(key)
            return self._style_cache[key]
        features = self._feature_fn(plan, model)
        grams: list[tf.Tensor] = []
        for style, share, (h, w) in zip(styles, blend, sizes, strict=True):
            if share == 0:
                continue
            feats = features(resize(style[..., :3], h, w)[tf.newaxis])
            these = [share * losses.gram_matrix(feats[i]) for i in plan.style]
            grams = these if not grams else [a + b for a, b in zip(grams, these, strict=True)]
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
        *,
        mask: np.ndarray | None = None,
        init_image: np.ndarray | None = None,
    ) -> np.ndarray:
        """Paint ``content`` in the style of ``styles``; see the module docstring.

        ``mask`` (float32 H x W or H x W x 1 in [0, 1], the content's size) limits the style to
        where it is 1, with a soft edge. ``init_image`` (any size) is the starting point instead
        of ``params.init``, e.g. a previous result to continue from.

        Raises ``Cancelled`` when ``on_progress`` raises it, ``EngineError`` for requests that
        cannot be done as asked (too small, out of memory, blend/style count mismatch),
        ``ValueError`` for malformed arrays.
        """
        _check_image(content, "content")
        if params.style_loss != "gram" or params.upscale != "plain":
            raise EngineError(
                f"style_loss {params.style_loss!r} / upscale {params.upscale!r}: this engine "
                "has only 'gram' and 'plain' so far"
            )
        if not styles:
            raise ValueError("at least one style image is needed")
        for style in styles:
            _check_image(style, "style")
        if init_image is not None:
            _check_image(init_image, "init image")
        height, width = content.shape[:2]
        soft_mask = None if mask is None else _soft_mask(mask, height, width)
        if params.preserve_colors and _COLOUR_METHOD == "match":
            styles = [colour.match_colours(style[..., :3], content[..., :3]) for style in styles]
        blend = _blend_weights(params.style_blend, len(styles))
        notify = on_progress or (lambda event: None)
        started = time.perf_counter()
        if not self.loaded:
            notify(Progress("loading", 0, params.iterations, 0.0))
            self.load()
        plan = plan_job(
            (height, width), [s.shape[:2] for s in styles], params, has_mask=mask is not None
        )
        h, w = plan.processing_hw
        budget = memory.free_bytes(self.device)
        if budget is not None and plan.peak_bytes > budget * memory.USABLE_SHARE:
            raise EngineError(
                f"not enough memory: this job ({w}x{h} px, style_scale "
                f"{params.style_scale:g}) needs about {plan.peak_bytes / 2**30:.1f} GB and "
                f"{budget * memory.USABLE_SHARE / 2**30:.1f} GB is free on the "
                f"{self.device.upper()}; lower max_size or style_scale, or close other programs"
            )
        notify(
            Progress(
                "preparing",
                0,
                params.iterations,
                time.perf_counter() - started,
                size=(w, h),
            )
        )
        try:
            pixels = self._optimise(
                content,
                styles,
                blend,
                params,
                plan,
                soft_mask,
                init_image,
                notify,
                started,
            )
        except tf.errors.InvalidArgumentError as exc:
            if not params.jit:
                raise
            # XLA refuses ops or shapes some devices/versions do not support; without XLA the
            # same job runs, so say so instead of failing as an internal error.
            first_line = (exc.message or type(exc).__name__).splitlines()[0][:200]
            raise EngineError(
                f"XLA could not compile this job ({first_line}); run it with jit off"
            ) from exc
        except tf.errors.ResourceExhaustedError as exc:
            raise EngineError(
                f"out of memory on the {self.device.upper()} at {w}x{h} px: try a smaller "
                f"max_size (e.g. {max(64, max(h, w) // 2)}) or, with L-BFGS, optimizer 'adam', "
                "or close other programs using the graphics card"
            ) from exc
        rgb = content[..., :3]
        result = resize(pixels, height, width).numpy()
        if params.preserve_colors and _COLOUR_METHOD == "luminance":
            result = colour.luminance_transfer(result, rgb)
        if soft_mask is not None:
            # The optimisation already kept the outside close to the photo; this makes it exact.
            result = soft_mask * result + (1.0 - soft_mask) * rgb
        if content.shape[2] == 4:
            result = np.concatenate([result, content[..., 3:]], axis=2)
        return result.astype(np.float32, copy=False)

    def _optimise(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        blend: Sequence[float],
        params: StyleParams,
        plan: JobPlan,
        mask: np.ndarray | None,
        init_image: np.ndarray | None,
        notify: ProgressCallback,
        started: float,
    ) -> np.ndarray:
        job_plan = plan
        plan, model = self._plan(params)
        loss_and_grads = self._loss_fn(plan, model)
        schedule = job_plan.passes
        # ETA: seconds per (pixel x step), measured, times the pixel-steps still to do.
        work = [steps * h * w for h, w, steps in schedule]
        weights = tf.constant(
            [
                params.content_weight,
                style_weight(params),
                params.tv_weight,
                _ANCHOR_WEIGHT if mask is not None else 0.0,
            ],
            tf.float32,
        )
        scaler = _LossScale(plan.policy)
        digest = _styles_digest(styles)
        opt_started = time.perf_counter()
        done_steps = 0
        x: np.ndarray | None = None
        latest: list[np.ndarray] = []  # the newest iterate, kept when the run is finished early
        for index, ((h, w, steps), style_sizes) in enumerate(
            zip(schedule, job_plan.style_sizes, strict=True)
        ):
            photo = resize(content[..., :3], h, w)[tf.newaxis]
            feats = self._feature_fn(plan, model)(photo)
            content_targets = tuple(feats[i] for i in plan.content)
            style_targets = tuple(
                self._style_targets(plan, model, styles, style_sizes, blend, digest)
            )
            mask_here = tf.ones((1, h, w, 1)) if mask is None else resize(mask, h, w)[tf.newaxis]

            def evaluate_tensor(
                image: tf.Tensor,
                ct=content_targets,
                st=style_targets,
                m=mask_here,
                ph=photo,
            ) -> tuple[float, tf.Tensor, dict[str, float]]:
                while True:
                    total, terms, grad = loss_and_grads(
                        image, ct, st, weights, m, ph, tf.constant(scaler.value, tf.float32)
                    )
                    if scaler.accept(grad):
                        break
                values = tf.concat([total[tf.newaxis], terms[:3]], 0).numpy()  # one transfer
                named = dict(
                    zip(("total", "content", "style", "tv"), map(float, values), strict=True)
                )
                return named["total"], grad, named

            def evaluate(
                flat: np.ndarray, h=h, w=w, evaluate_tensor=evaluate_tensor
            ) -> tuple[float, np.ndarray, dict[str, float]]:
                image = tf.constant(flat.reshape(1, h, w, 3), tf.float32)
                total, grad, named = evaluate_tensor(image)
                return total, grad.numpy().reshape(-1), named

            if x is None:
                x = _initial_image(params, photo[0].numpy(), styles, init_image, (h, w))
            else:
                x = resize(x, h, w).numpy()
            first_step = done_steps
            done_work = sum(work[:index])

            def report(
                step: int,
                flat: np.ndarray,
                named: dict[str, float],
                h=h,
                w=w,
                first_step=first_step,
                done_work=done_work,
                index=index,
            ) -> None:
                latest[:] = [flat.reshape(h, w, 3)]
                spent = time.perf_counter() - opt_started
                finished = done_work + step * h * w
                eta = spent / finished * (sum(work) - finished)
                notify(
                    Progress(
                        "optimising",
                        first_step + step,
                        params.iterations,
                        time.perf_counter() - started,
                        eta,
                        named,
                        (w, h),
                        index + 1,
                        len(schedule),
                        None,
                        flat.reshape(h, w, 3).astype(np.float32),
                    )
                )

            try:
                if params.optimizer == "lbfgs" and self.lbfgs == "tensorflow":
                    x = lbfgs.minimize(
                        evaluate_tensor,
                        tf.constant(x[np.newaxis], tf.float32),
                        steps,
                        memory=LBFGS_MEMORY,
                        callback=lambda i, xt, named, report=report: report(i, xt.numpy(), named),
                    ).numpy()[0]
                else:
                    optimise = _run_lbfgs if params.optimizer == "lbfgs" else _run_adam
                    x = optimise(
                        evaluate, x.astype(np.float64).reshape(-1), steps, params, report
                    ).reshape(h, w, 3)
            except FinishEarly:
                # Keep the picture so far; a coarse pass's picture is brought to the
                # result's size below, by the same resize the next pass would start from.
                x = latest[0] if latest else x
                break
            done_steps += steps
        assert x is not None
        return x.astype(np.float32)

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
        photo = resize(content[..., :3], h, w)[tf.newaxis]
        feats = self._feature_fn(plan, model)(photo)
        blend = _blend_weights(params.style_blend, len(styles))
        measured = dataclasses.replace(params, max_size=max(h, w), coarse_to_fine=False)
        (sizes,) = plan_job((h, w), [s.shape[:2] for s in styles], measured).style_sizes
        grams = tuple(self._style_targets(plan, model, styles, sizes, blend))
        weights = tf.constant(
            [params.content_weight, style_weight(params), params.tv_weight, 0.0], tf.float32
        )
        total, terms, _ = self._loss_fn(plan, model)(
            tf.constant(image[np.newaxis, ..., :3], tf.float32),
            tuple(feats[i] for i in plan.content),
            grams,
            weights,
            tf.ones((1, h, w, 1)),
            photo,
            tf.constant(1.0, tf.float32),  # no gradient is used here
        )
        return {
            "total": float(total),
            "content": float(terms[0]),
            "style": float(terms[1]),
            "tv": float(terms[2]),
        }


def style_weight(params: StyleParams) -> float:
    """The style loss's weight: ``params.style_weight`` when given, else from ``strength`` (50 is
    the balanced weight 20; every 25 points multiply or divide it by 10)."""
    if params.style_weight is not None:
        return params.style_weight
    return 20.0 * 10.0 ** ((params.strength - STRENGTH_DEFAULT) / 25.0)


class _LossScale:
    """Dynamic loss scaling for float16, as in mixed-precision training: start high so small
    gradients do not flush to zero, halve whenever the gradient overflows (and redo the step).
    Other policies keep 1: bfloat16 has float32's exponent range."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.value = 2.0**15 if policy == "mixed_float16" else 1.0

    def accept(self, gradient: np.ndarray) -> bool:
        """True if ``gradient`` is usable; else lower the scale (caller retries) or raise."""
        if self.policy != "mixed_float16" or np.isfinite(gradient).all():
            return True
        if self.value <= 1.0:
            raise EngineError(
                "the computation overflowed in float16; use precision 'mixed_bfloat16' or 'float32'"
            )
        self.value /= 2.0
        return False


def _as_float32(features: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """Features in float32 whatever the network computed in: Gram matrices and losses sum over
    many positions, which bfloat16's 8-bit mantissa would not survive."""
    return [tf.cast(f, tf.float32) for f in features]


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
    mask: tf.Tensor,
    photo: tf.Tensor,
) -> tf.Tensor:
    """[content, style, tv, anchor]; content and style averaged over their layers."""
    zero = tf.constant(0.0, tf.float32)
    grid_masks = _masks_on_feature_grids(mask, [plan.outputs[i] for i in plan.style])
    content = tf.add_n(
        [
            losses.content_loss(feats[i], t)
            for i, t in zip(plan.content, content_targets, strict=True)
        ]
        or [zero]
    )
    # Without a mask the mask is all ones: the weighted Gram is then the plain one.
    style = tf.add_n(
        [
            losses.style_loss(losses.gram_matrix(feats[i], grid_masks[plan.outputs[i]]), t)
            for i, t in zip(plan.style, style_targets, strict=True)
        ]
        or [zero]
    )
    content /= max(1, len(plan.content))
    style /= max(1, len(plan.style))
    tv = losses.total_variation_loss(image)
    return tf.stack([content, style, tv, losses.anchor_loss(image, photo, mask)])


def _masks_on_feature_grids(mask: tf.Tensor, layers: Sequence[str]) -> dict[str, tf.Tensor]:
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


def _styles_digest(styles: Sequence[np.ndarray]) -> str:
    """SHA-256 of the paintings' RGB pixels and shapes: the style-target cache's key."""
    digest = hashlib.sha256()
    for style in styles:
        digest.update(str(style.shape).encode())
        digest.update(np.ascontiguousarray(style[..., :3]).tobytes())
    return digest.hexdigest()


def _check_image(image: np.ndarray, what: str) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.ndim != 3
        or image.shape[2] not in (3, 4)
        or image.dtype != np.float32
    ):
        raise ValueError(f"{what} must be a float32 H x W x 3|4 array")


def _initial_image(
    params: StyleParams,
    photo: np.ndarray,
    styles: Sequence[np.ndarray],
    init_image: np.ndarray | None,
    size: tuple[int, int],
) -> np.ndarray:
    h, w = size
    if init_image is not None:
        return resize(init_image[..., :3], h, w).numpy()
    if params.init == "content":
        return photo
    if params.init == "style":
        return resize(styles[0][..., :3], h, w).numpy()
    rng = np.random.default_rng(params.seed)
    return rng.uniform(0.0, 1.0, (h, w, 3)).astype(np.float32)


def _soft_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """The mask as H x W x 1 float32 with a soft edge (a Gaussian of 0.5% of the longer side)."""
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2 or mask.shape != (height, width):
        raise EngineError(
            f"the mask is {mask.shape[1] if mask.ndim > 1 else '?'}x{mask.shape[0]} px but the "
            f"photo is {width}x{height} px: they must be the same size"
        )
    sigma = max(1.0, 0.005 * max(height, width))
    soft = scipy.ndimage.gaussian_filter(np.clip(mask, 0.0, 1.0).astype(np.float32), sigma)
    return soft[..., np.newaxis]


def _blend_weights(style_blend: Sequence[float], count: int) -> list[float]:
    """Blend weights normalised to sum to 1 (equal when none are given)."""
    if not style_blend:
        return [1.0 / count] * count
    if len(style_blend) != count:
        raise EngineError(
            f"style_blend has {len(style_blend)} weight(s) but {count} style image(s) were "
            "given: give one weight per style image"
        )
    total = float(sum(style_blend))
    return [weight / total for weight in style_blend]


Evaluate = Callable[[np.ndarray], tuple[float, np.ndarray, dict[str, float]]]
Report = Callable[[int, np.ndarray, dict[str, float]], None]


def lbfgs_options(steps: int) -> dict[str, float]:
    """scipy L-BFGS-B options for ``steps`` iterations (the benchmark measures the same ones).

    Tolerances at zero: run the steps asked for, stopping only on a true standstill.
    """
    return {
        "maxiter": steps,
        "maxfun": steps * 2,
        "maxcor": LBFGS_MEMORY,
        "ftol": 0.0,
        "gtol": 0.0,
    }


def _run_lbfgs(
    evaluate: Evaluate, x0: np.ndarray, steps: int, params: StyleParams, report: Report
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

    # One BLAS thread: L-BFGS-B's own vector work is small, and two OpenBLAS threads contending
    # with TensorFlow's made it 2x slower (0.26 vs 0.12 s per iteration at 384 px, 2 cores).
    with threadpool_limits(limits=1, user_api="blas"):
        result = scipy.optimize.minimize(
            fun,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=scipy.optimize.Bounds(0.0, 1.0),
            callback=callback,
            options=lbfgs_options(steps),
        )
    return result.x


def _run_adam(
    evaluate: Evaluate, x0: np.ndarray, steps: int, params: StyleParams, report: Report
) -> np.ndarray:
    """Adam in numpy, clipped to [0, 1] after each step.

    Five lines of arithmetic costing well under 1% of a VGG19 step; a Keras optimiser would add
    a variable and a retrace for every new image shape.
    """
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    x = x0.copy()
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for step in range(1, steps + 1):
        _, grad, named = evaluate(x)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        m_hat = m / (1 - beta1**step)
        v_hat = v / (1 - beta2**step)
        x = np.clip(x - params.learning_rate * m_hat / (np.sqrt(v_hat) + eps), 0.0, 1.0)
        report(step, x, named)
    return x
