"""StyleEngine: holds VGG19 and runs Gatys et al. style transfer on numpy images.

Contract: images are float32 arrays, H x W x 3 (RGB) or H x W x 4 (RGBA), values in [0, 1].
The result has the content's height, width and channels; its alpha channel is the content's,
untouched. Nothing here knows about HTTP or files, or where the weights come from: the caller
resolves them (``nst_server.weights.resolve_weights``) and hands them over.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from nst_server.engine import colour, losses, memory
from nst_server.engine.device import (
    describe,
    detect_device,
    import_tensorflow,
    resolve_precision,
)
from nst_server.engine.errors import EngineError
from nst_server.engine.network import (
    DEFAULT_POOLING,
    LayerPlan,
    as_float32,
    build_vgg19,
    extractor,
    layer_plan,
    pooling_for,
    preprocess,
    with_policy,
    with_pooling,
)
from nst_server.engine.objective import (
    FLOAT16_OVERFLOW,
    TERMS,
    Targets,
    build_objective,
    targets_signature,
)
from nst_server.engine.optimisers import LBFGS, STANDSTILL, Adam, Optimiser
from nst_server.engine.planning import JobPlan, plan_job
from nst_server.engine.progress import FinishEarly, Progress, ProgressCallback
from nst_server.params import STRENGTH_DEFAULT, StyleParams
from nst_server.weights import WeightsSource

tf = import_tensorflow()
log = logging.getLogger(__name__)

#: How many (painting, size) style targets are kept between jobs: a coarse-to-fine run uses one
#: per pass; a 512 px Gram entry is about 2.4 MB.
_STYLE_CACHE_SIZE = 48
#: Weight of the pixel anchor outside a mask: strong enough that the outside stays the photo.
_ANCHOR_WEIGHT = 100.0
#: The mask's soft edge: a Gaussian of this share of the photo's longer side (at least 1 px).
_FEATHER = 0.005


class StyleEngine:
    """VGG19 kept loaded, Gatys losses, L-BFGS or Adam.

    Thread-compatible, not thread-safe: one worker thread owns an engine (the job queue does).
    """

    def __init__(self, weights: WeightsSource) -> None:
        if not isinstance(weights, WeightsSource):
            raise TypeError(
                "StyleEngine needs resolved weights (nst_server.weights.resolve_weights)"
            )
        self.weights = weights
        self.device = detect_device()
        #: What precision "auto" means here (mixed_bfloat16 or float32).
        self.precision = resolve_precision("auto", self.device)
        #: Seconds between the previews an "optimising" event carries (each is a copy of the
        #: image from the device): the first event, then at most one per interval, and the last.
        self.preview_interval_s = 0.5
        self._vgg: tf.keras.Model | None = None
        #: Copies of the network by (policy, pooling): mixed precision, max pooling.
        self._networks: dict[tuple[str, str], tf.keras.Model] = {}
        self._plans: dict[tuple, tuple[LayerPlan, tf.keras.Model]] = {}
        self._objectives: dict[LayerPlan, Callable] = {}
        self._feature_fns: dict[LayerPlan, Callable] = {}
        self._optimisers: dict[tuple[LayerPlan, str], Optimiser] = {}
        self._style_cache: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------

    @property
    def weights_description(self) -> str:
        return self.weights.describe()

    @property
    def description(self) -> str:
        """One line for the user: the device and what "auto" precision means on it."""
        return describe(self.device, self.precision)

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
        """Build VGG19 with the real weights and (``warm_up``) compile the default job's step
        and optimiser iteration: seconds at server start rather than in the user's first edit;
        idempotent."""
        with self._lock:
            if self._vgg is None:
                self._vgg = build_vgg19(self.weights)
                if warm_up:
                    self._warm_up()

    def _warm_up(self) -> None:
        """Run the default configuration on a tiny image: tracing costs seconds on a CPU, once
        per engine; with None height/width no later size retraces."""
        started = time.perf_counter()
        defaults = StyleParams.for_device(self.device)
        tiny = dataclasses.replace(defaults, iterations=2, max_size=64)
        image = np.full((64, 64, 3), 0.5, np.float32)
        image[16:48, 16:48] = 0.8
        self.stylize(image, [image], tiny)
        self.clear_style_cache()
        log.info("default step compiled in %.1f s", time.perf_counter() - started)

    def unload(self) -> None:
        """Drop the network and compiled functions (frees GPU memory while idle)."""
        with self._lock:
            self._vgg = None
            self._networks.clear()
            self._plans.clear()
            self._objectives.clear()
            self._feature_fns.clear()
            self._optimisers.clear()
            self._style_cache.clear()
            tf.keras.backend.clear_session()

    def _network(self, policy: str, pooling: str) -> tf.keras.Model:
        if self._vgg is None:
            self._vgg = build_vgg19(self.weights)  # the default pooling, float32
        if (policy, pooling) == ("float32", DEFAULT_POOLING):
            return self._vgg
        if (policy, pooling) not in self._networks:
            pooled = self._vgg if pooling == DEFAULT_POOLING else with_pooling(self._vgg, pooling)
            self._networks[policy, pooling] = (
                pooled if policy == "float32" else with_policy(pooled, policy)
            )
        return self._networks[policy, pooling]

    def _plan(self, params: StyleParams) -> tuple[LayerPlan, tf.keras.Model]:
        policy = self.precision if params.precision == "auto" else params.precision
        pooling = pooling_for(params.upscale)
        key = (
            params.content_layers,
            params.style_layers,
            params.style_loss,
            policy,
            params.jit,
            pooling,
        )
        if key not in self._plans:
            plan = layer_plan(
                params.content_layers,
                params.style_layers,
                style_loss=params.style_loss,
                policy=policy,
                jit=params.jit,
                pooling=pooling,
            )
            self._plans[key] = (plan, extractor(self._network(policy, pooling), plan.outputs))
        return self._plans[key]

    # -- compiled functions ------------------------------------------------------------------

    def _feature_fn(self, plan: LayerPlan, model: tf.keras.Model) -> Callable:
        if plan not in self._feature_fns:

            @tf.function(input_signature=[tf.TensorSpec((1, None, None, 3), tf.float32)])
            def features(image: tf.Tensor) -> list[tf.Tensor]:
                return as_float32(model(preprocess(image), training=False))

            self._feature_fns[plan] = features
        return self._feature_fns[plan]

    def _objective(self, plan: LayerPlan, model: tf.keras.Model) -> Callable:
        """The one compiled loss-and-gradient function of a layer plan, shared by every job."""
        if plan not in self._objectives:
            self._objectives[plan] = build_objective(plan, model)
        return self._objectives[plan]

    def _optimiser(self, plan: LayerPlan, model: tf.keras.Model, params: StyleParams) -> Optimiser:
        key = (plan, params.optimizer)
        if key not in self._optimisers:
            objective, signature = self._objective(plan, model), targets_signature(plan)
            self._optimisers[key] = (
                LBFGS(objective, signature)
                if params.optimizer == "lbfgs"
                else Adam(objective, signature, params.learning_rate)
            )
        optimiser = self._optimisers[key]
        if isinstance(optimiser, Adam):
            optimiser.set_learning_rate(params.learning_rate)
        return optimiser

    # -- targets ---------------------------------------------------------------------------

    def _style_targets(
        self,
        plan: LayerPlan,
        model: tf.keras.Model,
        styles: Sequence[np.ndarray],
        sizes: Sequence[tuple[int, int]],
        blend: Sequence[float],
        seed: int,
        digest: str | None = None,
    ) -> tuple:
        """The blended style statistics of the paintings, each at its (h, w) in ``sizes`` (the
        job plan's), one per style layer; cached across jobs.

        ``digest`` is ``_styles_digest(styles)``, passed in by callers that need several sizes
        so the paintings are hashed once, not once per pass.
        """
        digest = digest or _styles_digest(styles)
        # "sliced" projects on random directions: the same seed gives the same ones.
        seed_key = seed if plan.style_loss == "sliced" else None
        key = (
            digest,
            tuple(sizes),
            plan.outputs,
            plan.style,
            plan.style_loss,
            plan.pooling,
            tuple(blend),
            seed_key,
        )
        if key in self._style_cache:
            self._style_cache.move_to_end(key)
            return self._style_cache[key]
        features = self._feature_fn(plan, model)
        parts: list[list[tuple[tuple, float]]] = [[] for _ in plan.style]
        directions: list[tf.Tensor | None] = [None] * len(plan.style)
        for style, share, (h, w) in zip(styles, blend, sizes, strict=True):
            if share == 0:
                continue
            feats = features(resize(style[..., :3], h, w)[tf.newaxis])
            for n, i in enumerate(plan.style):
                if plan.style_loss == "sliced" and directions[n] is None:
                    directions[n] = losses.sliced_directions(int(feats[i].shape[-1]), seed, i)
                moments = losses.painting_moments(plan.style_loss, feats[i], directions[n])
                parts[n].append((moments, share))
        targets = tuple(
            losses.finish_statistics(plan.style_loss, losses.blend_moments(p), d)
            for p, d in zip(parts, directions, strict=True)
        )
        self._style_cache[key] = targets
        while len(self._style_cache) > _STYLE_CACHE_SIZE:
            self._style_cache.popitem(last=False)
        return targets

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

        Raises ``Cancelled`` when ``on_progress`` raises it; when it raises ``FinishEarly`` the
        picture so far, brought to the result's size, is the result. Raises ``EngineError`` for
        requests that cannot be done as asked (too thin, not enough memory, blend/style count
        mismatch), ``ValueError`` for malformed arrays.
        """
        _check_image(content, "content")
        if not styles:
            raise ValueError("at least one style image is needed")
        for style in styles:
            _check_image(style, "style")
        if init_image is not None:
            _check_image(init_image, "init image")
        height, width = content.shape[:2]
        job = plan_job(
            (height, width), [s.shape[:2] for s in styles], params, has_mask=mask is not None
        )
        h, w = job.processing_hw
        budget = memory.free_bytes(self.device)
        if budget is not None and job.peak_bytes > budget * memory.USABLE_SHARE:
            raise EngineError(
                f"not enough memory: this job ({w}x{h} px, style_scale "
                f"{params.style_scale:g}) needs about {job.peak_bytes / 2**30:.1f} GB and "
                f"{budget * memory.USABLE_SHARE / 2**30:.1f} GB is free on the "
                f"{self.device.upper()}; lower max_size or style_scale, or close other programs"
            )
        blend = _blend_weights(params.style_blend, len(styles))
        soft_mask = None if mask is None else _soft_mask(mask, height, width)
        if params.preserve_colors:
            styles = [colour.match_colours(style[..., :3], content[..., :3]) for style in styles]
        notify = on_progress or (lambda event: None)
        started = time.perf_counter()
        if not self.loaded:
            notify(Progress(phase="loading", step=0, total=params.iterations, elapsed_s=0.0))
            self.load()
        notify(
            Progress(
                phase="preparing",
                step=0,
                total=params.iterations,
                elapsed_s=time.perf_counter() - started,
                size=(w, h),
                result_size=(width, height),
            )
        )
        try:
            result = self._optimise(
                content, styles, blend, params, job, soft_mask, init_image, notify, started
            )
        except tf.errors.InvalidArgumentError as exc:
            first_line = (exc.message or type(exc).__name__).splitlines()[0][:200]
            if FLOAT16_OVERFLOW in (exc.message or ""):
                raise EngineError(FLOAT16_OVERFLOW) from exc
            if not params.jit:
                raise
            # XLA refuses ops or shapes some devices/versions do not support; without XLA the
            # same job runs, so say so instead of failing as an internal error.
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
        job: JobPlan,
        mask: np.ndarray | None,
        init_image: np.ndarray | None,
        notify: ProgressCallback,
        started: float,
    ) -> np.ndarray:
        """The coarse-to-fine passes, then the detail pass if planned; returns the picture at
        the result's size (RGB)."""
        plan, model = self._plan(params)
        optimiser = self._optimiser(plan, model, params)
        digest = _styles_digest(styles)
        weights = tf.constant(
            [
                params.content_weight,
                self._style_weight(plan, model, params, job, content, styles, blend, digest),
                params.tv_weight,
                _ANCHOR_WEIGHT if mask is not None else 0.0,
            ],
            tf.float32,
        )
        features = self._feature_fn(plan, model)

        def targets(
            photo: tf.Tensor,
            sizes: Sequence[tuple[int, int]],
            mask_here: tf.Tensor | None,
            structure: tf.Tensor | None = None,
        ) -> Targets:
            """The targets at ``photo``'s size; the content features are ``structure``'s when
            given (the detail pass keeps the picture's own structure, not the photo's)."""
            feats = features(photo if structure is None else structure)
            return Targets(
                content=tuple(feats[i] for i in plan.content),
                style=self._style_targets(plan, model, styles, sizes, blend, params.seed, digest),
                weights=weights,
                mask=tf.ones_like(photo[..., :1]) if mask_here is None else mask_here,
                photo=photo,
            )

        progress = _Reporter(self, job, params, notify, started)
        height, width = job.result_hw
        x: tf.Tensor | None = None
        try:
            for index, ((h, w, steps), style_sizes) in enumerate(
                zip(job.passes, job.style_sizes, strict=True)
            ):
                photo = resize(content[..., :3], h, w)[tf.newaxis]
                mask_here = None if mask is None else resize(mask, h, w)[tf.newaxis]
                these = targets(photo, style_sizes, mask_here)
                if x is None:
                    x = _initial_image(params, photo[0], styles, init_image, (h, w))
                optimiser.start(resize(x, h, w)[tf.newaxis], these)
                try:
                    for step in range(1, steps + 1):
                        values = optimiser.step(these)
                        progress.step(index, step, values, lambda: optimiser.x.numpy()[0])
                        if values[-1] == STANDSTILL:
                            break
                except FinishEarly:
                    # Keep the picture so far; a coarse pass's picture is brought to the
                    # result's size by the same resize the next pass would start from.
                    return resize(optimiser.x[0], height, width).numpy()
                x = optimiser.x[0]
                optimiser.release()  # before the next pass's style targets need the memory
            assert x is not None
            if job.detail is None:
                return resize(x, height, width).numpy()
            return self._detail(content, mask, job, x, targets, optimiser, progress)
        finally:
            optimiser.release()

    def _detail(
        self,
        content: np.ndarray,
        mask: np.ndarray | None,
        job: JobPlan,
        small: tf.Tensor,
        targets: Callable[..., Targets],
        optimiser: Optimiser,
        progress: _Reporter,
    ) -> np.ndarray:
        """The detail pass: the result enlarged plainly, then each tile refined at the result's
        size: its content target is the enlarged picture itself (its structure stays; the photo
        would pull it back towards the photo), its style the painting at its finest (see
        ``planning.DetailPass``). Each tile fades in over the overlap with the tiles before it
        (raster order), so no seam shows. A finish requested mid-pass keeps the tiles done."""
        assert job.detail is not None
        height, width = job.result_hw
        h, w = job.processing_hw
        out = resize(small, height, width).numpy()
        first = len(job.passes)
        for n, (top, left, th, tw) in enumerate(job.detail.tiles):
            region = np.s_[top : top + th, left : left + tw]
            photo = tf.constant(content[region][np.newaxis, ..., :3])
            mask_here = None if mask is None else tf.constant(mask[region][np.newaxis])
            enlarged = tf.constant(out[region][np.newaxis])
            these = targets(photo, job.detail.style_sizes, mask_here, structure=enlarged)
            optimiser.start(enlarged, these)
            ramp = _fade_in(th, tw, top > 0, left > 0)

            def blend(region: tuple = region, ramp: np.ndarray = ramp) -> None:
                out[region] = ramp * optimiser.x.numpy()[0] + (1.0 - ramp) * out[region]

            try:
                for step in range(1, job.detail.steps + 1):
                    values = optimiser.step(these)
                    done = step == job.detail.steps or values[-1] == STANDSTILL
                    if done:
                        blend()
                    progress.step(
                        first + n,
                        step,
                        values,
                        (lambda: resize(out, h, w).numpy()) if done else None,
                    )
                    if done:
                        break
            except FinishEarly:
                if not done:
                    blend()
                return out
            optimiser.release()
        return out

    def _style_weight(
        self,
        plan: LayerPlan,
        model: tf.keras.Model,
        params: StyleParams,
        job: JobPlan,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        blend: Sequence[float],
        digest: str,
    ) -> float:
        """The style loss's weight: ``params.style_weight`` when given; else ``strength`` times
        the photo's own content-to-style loss ratio at the first pass.

        The ratio is the content loss of the painting against the photo (how far pure style is
        from the photo) over the style loss of the photo against the painting (how far the
        photo is from the style). At that weight both extremes score the same, whatever the
        painting: a soft painting, whose statistics lie near the photo's, gets a larger weight
        than a busy one, so a given strength gives a comparable amount of style. It depends on
        the photo and the paintings only, so a continued run gets the same weight as the run
        it continues.
        """
        if params.style_weight is not None:
            return params.style_weight
        factor = strength_factor(params.strength)
        if not plan.content or not plan.style:
            return factor
        h, w, _ = job.passes[0]
        features = self._feature_fn(plan, model)
        photo = features(resize(content[..., :3], h, w)[tf.newaxis])
        targets = self._style_targets(
            plan, model, styles, job.style_sizes[0], blend, params.seed, digest
        )
        style = np.mean(
            [
                float(losses.style_loss(plan.style_loss, photo[i], t))
                for i, t in zip(plan.style, targets, strict=True)
            ]
        )
        content_loss = 0.0
        for painting, share in zip(styles, blend, strict=True):
            if share:
                feats = features(resize(painting[..., :3], h, w)[tf.newaxis])
                content_loss += share * np.mean(
                    [float(losses.content_loss(feats[i], photo[i])) for i in plan.content]
                )
        ratio = content_loss / max(style, 1e-6)
        log.info(
            "style weight %.3g (strength %g, content/style ratio %.3g)",
            factor * ratio,
            params.strength,
            ratio,
        )
        return factor * ratio

    # -- measuring (tests, benchmarks) ------------------------------------------------------

    def style_weight(
        self, content: np.ndarray, styles: Sequence[np.ndarray], params: StyleParams
    ) -> float:
        """The style loss's weight a job with these inputs runs with (see ``_style_weight``)."""
        self.load()
        plan, model = self._plan(params)
        job = plan_job(content.shape[:2], [s.shape[:2] for s in styles], params)
        blend = _blend_weights(params.style_blend, len(styles))
        if params.preserve_colors:
            styles = [colour.match_colours(style[..., :3], content[..., :3]) for style in styles]
        return self._style_weight(
            plan, model, params, job, content, styles, blend, _styles_digest(styles)
        )

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
        job = plan_job((h, w), [s.shape[:2] for s in styles], measured)
        digest = _styles_digest(styles)
        weight = self._style_weight(plan, model, params, job, content, styles, blend, digest)
        targets = Targets(
            content=tuple(feats[i] for i in plan.content),
            style=self._style_targets(
                plan, model, styles, job.style_sizes[0], blend, params.seed, digest
            ),
            weights=tf.constant([params.content_weight, weight, params.tv_weight, 0.0], tf.float32),
            mask=tf.ones((1, h, w, 1)),
            photo=photo,
        )
        total, terms, _ = self._objective(plan, model)(
            tf.constant(image[np.newaxis, ..., :3], tf.float32), targets
        )
        values = [float(total), *map(float, terms.numpy())]
        return dict(zip(("total", *TERMS[:3]), values[:4], strict=True))


class _Reporter:
    """Turns optimiser steps into "optimising" events: losses, ETA, and a preview now and then.

    Stages are the passes, then the detail pass's tiles (reported as one more pass, at the
    result's size)."""

    def __init__(
        self,
        engine: StyleEngine,
        job: JobPlan,
        params: StyleParams,
        notify: ProgressCallback,
        started: float,
    ) -> None:
        self.engine, self.job, self.notify = engine, job, notify
        self.started = started
        self.optimising_since = time.perf_counter()
        tiles = job.detail.tiles if job.detail else ()
        self.stages = list(job.passes) + [(th, tw, job.detail.steps) for *_, th, tw in tiles]
        # ETA: seconds per (pixel x step), measured, times the pixel-steps still to do.
        self.work = [h * w * steps for h, w, steps in self.stages]
        self.steps_before = [sum(st[2] for st in self.stages[:i]) for i in range(len(self.stages))]
        self.last_preview = -math.inf

    def step(
        self,
        stage: int,
        step: int,
        values: np.ndarray,
        picture: Callable[[], np.ndarray] | None,
    ) -> None:
        """Report ``step`` of ``stage``; ``picture`` copies the current picture (None: none to
        show at this step)."""
        h, w, steps = self.stages[stage]
        now = time.perf_counter()
        done = sum(self.work[:stage]) + step * h * w
        eta = (now - self.optimising_since) / done * (sum(self.work) - done)
        overall = self.steps_before[stage] + step
        last = overall == self.job.total_steps or (
            stage == len(self.stages) - 1 and (step == steps or values[-1] == STANDSTILL)
        )
        preview = None
        if picture is not None and (
            last or now - self.last_preview >= self.engine.preview_interval_s
        ):
            preview = picture()  # the one image copy: at most every interval
            self.last_preview = now
        passes = len(self.job.passes)
        detail = stage >= passes
        self.notify(
            Progress(
                phase="optimising",
                step=overall,
                total=self.job.total_steps,
                elapsed_s=now - self.started,
                eta_s=0.0 if last else eta,
                losses=dict(zip(("total", *TERMS[:3]), map(float, values[:4]), strict=True)),
                size=self.job.result_hw[::-1] if detail else (w, h),
                result_size=self.job.result_hw[::-1],
                scale=passes + 1 if detail else stage + 1,
                scales=passes + (1 if self.job.detail else 0),
                preview=preview,
            )
        )


#: The style weight at strength 50 is this times the photo's content-to-style loss ratio: the
#: look the engine had with a fixed weight of 20 on Tübingen and The Starry Night.
STRENGTH_SCALE = 4.65


def strength_factor(strength: float) -> float:
    """What strength multiplies the content-to-style ratio by: ``STRENGTH_SCALE`` at 50, ten
    times more every 25 points above, ten times less every 25 below (0: a 10,000th)."""
    return STRENGTH_SCALE * 10.0 ** ((strength - STRENGTH_DEFAULT) / 25.0)


def resize(image: np.ndarray | tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Anti-aliased Lanczos resize of an H x W x C float image, clipped to [0, 1]."""
    image = tf.convert_to_tensor(image, tf.float32)
    if image.shape[0] == height and image.shape[1] == width:
        return image
    resized = tf.image.resize(image, (height, width), method="lanczos3", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


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
    photo: tf.Tensor,
    styles: Sequence[np.ndarray],
    init_image: np.ndarray | None,
    size: tuple[int, int],
) -> tf.Tensor:
    h, w = size
    if init_image is not None:
        return resize(init_image[..., :3], h, w)
    if params.init == "content":
        return photo
    if params.init == "style":
        return resize(styles[0][..., :3], h, w)
    rng = np.random.default_rng(params.seed)
    return tf.constant(rng.uniform(0.0, 1.0, (h, w, 3)), tf.float32)


def _soft_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """The mask as H x W x 1 float32 with a soft edge (a Gaussian of 0.5% of the longer side)."""
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2 or mask.shape != (height, width):
        raise EngineError(
            f"the mask is {mask.shape[1] if mask.ndim > 1 else '?'}x{mask.shape[0]} px but the "
            f"photo is {width}x{height} px: they must be the same size"
        )
    sigma = max(1.0, _FEATHER * max(height, width))
    return gaussian_blur(np.clip(mask, 0.0, 1.0)[..., np.newaxis], sigma).numpy()


def _fade_in(height: int, width: int, top: bool, left: bool) -> np.ndarray:
    """H x W x 1 blend weights of a detail tile along the sides it shares with tiles refined
    before it (top, left): 0 over the first quarter of the overlap (where the convolutions saw
    the tile's edge), rising to 1 over its middle half; 1 elsewhere."""
    from nst_server.engine.planning import DETAIL_OVERLAP

    margin, rise = DETAIL_OVERLAP / 4, DETAIL_OVERLAP / 2
    ramp = np.clip((np.arange(max(height, width)) + 0.5 - margin) / rise, 0.0, 1.0)
    rows = ramp[:height] if top else np.ones(height)
    cols = ramp[:width] if left else np.ones(width)
    return (rows[:, None] * cols[None, :])[..., None].astype(np.float32)


def gaussian_blur(image: np.ndarray | tf.Tensor, sigma: float) -> tf.Tensor:
    """H x W x C blurred by a Gaussian of ``sigma`` px, edges mirrored (two 1-D passes)."""
    radius = max(1, math.ceil(3.0 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = tf.constant(taps / taps.sum(), tf.float32)
    x = tf.convert_to_tensor(image, tf.float32)
    channels = x.shape[-1]
    x = tf.transpose(x, (2, 0, 1))[..., tf.newaxis]  # each channel on its own
    x = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    x = tf.nn.conv2d(x, tf.reshape(taps, (-1, 1, 1, 1)), 1, "VALID")
    x = tf.nn.conv2d(x, tf.reshape(taps, (1, -1, 1, 1)), 1, "VALID")
    return tf.reshape(tf.transpose(x[..., 0], (1, 2, 0)), (*x.shape[1:3], channels))


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
