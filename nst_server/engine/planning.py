"""What a job will do, and the memory it needs, decided before any work: pure Python, no TensorFlow.

The API layer calls ``plan_job`` before it accepts a job (to answer 400 for a photo too thin to
process, 413/429 for one that does not fit); the engine calls it again to run the job by the same
plan, and refuses (never shrinks) a job whose plan does not fit the free memory.

Size rules, the same for every aspect ratio:
- the photo is processed with its longer side at ``max_size`` (never enlarged; 0: full size);
  every pass's shorter side must be at least ``MIN_SHORT_SIDE`` px, the least VGG19's deepest
  style layer can see: a photo too thin for that at the requested size is refused with a message
  saying why and what to do, never processed at a size the user did not ask for;
- coarse to fine, passes start at ``SMALLEST_SCALE`` px (larger for a thin photo, so that the
  first pass keeps the minimum) and grow by about sqrt(2) to the processing size;
- each pass sees the paintings with their longer side at the pass's longer side times
  ``style_scale``; a thin painting's shorter side is raised to ``MIN_SHORT_SIDE`` as long as that
  costs no more pixels than a square painting would, and refused beyond.

The memory figures were measured by bench/measure_memory.py (VmHWM of a fresh process minus its
idle resident set, inputs included); see ``peak_bytes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from nst_server.engine.errors import EngineError
from nst_server.params import StyleParams

#: Shorter side, in pixels, below which block5 of VGG19 sees less than two positions.
MIN_SHORT_SIDE = 32
#: Longer side, in px, of the smallest coarse-to-fine pass. The picture's composition of strokes
#: is settled there, so every target size gets the same look; below 256 px the content layer is
#: a 16 x 12 grid and the painting swamps the photo (seen at 128 px).
SMALLEST_SCALE = 256
#: Each pass gets this share of the steps of the pass below it ...
STEP_DECAY = 0.6
#: ... but at least this many when the iterations allow. The first steps after an upscale add
#: the gradient's pixel-scale noise and later ones remove it: with 2 steps at its 2048 px pass a
#: picture's sky was covered in coloured pixel noise, with 8 it was clean.
MIN_PASS_STEPS = 8
#: The detail pass (upscale "detail"): square tiles of at most this many px a side ...
DETAIL_TILE = 512
#: ... overlapping by this many px: a tile's border (a quarter of it each side) is left out,
#: convolutions see padding there, and the middle half is blended, so no seam shows ...
DETAIL_OVERLAP = 128
#: ... each refined by this many steps from the plainly enlarged result.
DETAIL_STEPS = 10

# -- the memory model (bench/measure_memory.py; every figure rounded up) -----------------------
#: Fixed cost of a job over an idle engine: compiled-function temporaries and the allocator's
#: slack between passes of different sizes (measured: 10-20 MB, and up to 280 MB more over a
#: coarse-to-fine run than its largest pass alone).
_BASE_BYTES = 300 * 2**20
#: One loss-and-gradient step through VGG19 up to block5_conv1, per pixel of the pass
#: (activations kept for the backward pass, their gradients), by the network's arithmetic.
#: Measured from 256 to 1024 px square: 2.95 KB (float32) and 2.23 KB (mixed bfloat16).
_STEP_BYTES_PER_PIXEL = {"float32": 3_100, "mixed": 2_400}
#: A forward pass over a painting (the style targets), per pixel of the painting. Measured at
#: style_scale 4 (a 1536 px painting for a 384 px pass): 0.86 KB and 0.73 KB.
_STYLE_BYTES_PER_PIXEL = {"float32": 950, "mixed": 800}
#: The optimiser's state per pixel of the pass: L-BFGS's 20 pairs of float32 vectors (3 values
#: per pixel) and a few more vectors; Adam's two moments, the iterate and the gradient.
_OPTIMISER_BYTES_PER_PIXEL = {"lbfgs": (2 * 20 + 8) * 3 * 4, "adam": 6 * 3 * 8}
#: Work at the photo's own size, per pixel of the photo: the iterate brought to that size (the
#: resize's intermediates), the soft mask, the composite and the result handed back (measured:
#: 35 bytes for a 4000 x 3000 photo processed at 384 px).
_FULL_SIZE_BYTES_PER_PIXEL = 64
#: The detail pass's pictures at the photo's size (float32 RGB, several), per pixel.
_DETAIL_FULL_SIZE_BYTES_PER_PIXEL = 5 * 3 * 4
#: A second copy of VGG19 up to block5_conv1 (float32 kernels, and their copy for a mixed
#: policy): a detail job runs on its own network (see network.pooling_for).
_SECOND_NETWORK_BYTES = 2 * 80 * 2**20
#: The inputs as the caller hands them over (float32, up to 4 channels), per pixel.
_INPUT_BYTES_PER_PIXEL = 4 * 4


@dataclass(frozen=True)
class DetailPass:
    """A last pass at the result's own size, tile by tile (upscale "detail").

    ``tiles``: (top, left, height, width) of each tile at the result's size; ``steps`` per
    tile; ``style_sizes``: the (height, width) each painting is seen at: as large as at the
    result's scale allows, but never enlarged beyond the painting's own pixels (an enlarged
    painting has no finer detail to give).
    """

    tiles: tuple[tuple[int, int, int, int], ...]
    steps: int
    style_sizes: tuple[tuple[int, int], ...]

    @property
    def pixel_steps(self) -> int:
        return sum(h * w for _, _, h, w in self.tiles) * self.steps


@dataclass(frozen=True)
class JobPlan:
    """The sizes a job runs at and an upper bound of the memory it needs.

    ``passes``: (height, width, steps) per pass, coarse to fine; the last is the processing size.
    ``style_sizes``: per pass, the (height, width) each painting is seen at, in upload order.
    ``result_hw``: the result's (height, width): always the photo's.
    ``peak_bytes``: the job's extra memory over an idle server, at most: its inputs as float32,
    the network's activations and gradients at the largest pass, the style pass over the largest
    painting, the optimiser's state and the work at the photo's size (bringing the result there).
    """

    passes: tuple[tuple[int, int, int], ...]
    style_sizes: tuple[tuple[tuple[int, int], ...], ...]
    result_hw: tuple[int, int]
    peak_bytes: int
    #: The detail pass at the result's size (upscale "detail" on an enlarged result), or None.
    detail: DetailPass | None = None

    @property
    def processing_hw(self) -> tuple[int, int]:
        """(height, width) of the last, largest pass."""
        return self.passes[-1][0], self.passes[-1][1]

    @property
    def enlargement(self) -> float:
        """How many times the result's longer side is the processing size's (1.0: none)."""
        return max(self.result_hw) / max(self.processing_hw)

    @property
    def total_steps(self) -> int:
        """Optimisation steps in all: the passes', and each detail tile's."""
        steps = sum(p[2] for p in self.passes)
        return steps + (len(self.detail.tiles) * self.detail.steps if self.detail else 0)

    @property
    def pixel_steps(self) -> int:
        """The job's work: pixels times steps over every pass and tile (a step's time grows
        with its pixels, so this times the device's seconds per pixel-step is an estimate)."""
        work = sum(h * w * steps for h, w, steps in self.passes)
        return work + (self.detail.pixel_steps if self.detail else 0)


def fit_size(height: int, width: int, long_side: int, *, upscale: bool = False) -> tuple[int, int]:
    """(h, w) scaled so the longer side is ``long_side`` (enlarged only if ``upscale``).

    No minimum is enforced here: callers check the shorter side against ``MIN_SHORT_SIDE``.
    """
    scale = long_side / max(height, width) if long_side > 0 else 1.0
    if not upscale:
        scale = min(1.0, scale)
    return max(1, round(height * scale)), max(1, round(width * scale))


def scale_schedule(
    long_side: int, iterations: int, coarse_to_fine: bool, *, smallest: int = SMALLEST_SCALE
) -> list[tuple[int, int]]:
    """[(longer side, steps), ...] from small to ``long_side``; the steps add up to ``iterations``.

    Coarse to fine: the first pass's longer side is ``smallest``; sizes grow by about sqrt(2) (a
    step there costs twice as much); each pass gets ``STEP_DECAY`` times the steps of the one
    before (at least ``MIN_PASS_STEPS``), so most steps are taken where they are cheap and the
    larger passes refine detail from an upscaled result.
    """
    if not coarse_to_fine or long_side <= smallest:
        return [(long_side, iterations)]
    count = 1 + math.ceil(math.log(long_side / smallest, math.sqrt(2)) - 1e-9)
    sides = [round(smallest * (long_side / smallest) ** (i / (count - 1))) for i in range(count)]
    sides = sides[-iterations:]  # fewer steps than passes: keep the largest passes
    shares = [STEP_DECAY**i for i in range(len(sides))]
    least = max(1, min(MIN_PASS_STEPS, iterations // len(sides)))
    steps = [max(least, int(iterations * share / sum(shares))) for share in shares]
    steps[0] += max(0, iterations - sum(steps))  # rounding goes to the cheapest pass
    for _ in range(sum(steps) - iterations):  # the floor's steps come from the largest shares
        top = max(steps)
        steps[len(steps) - 1 - steps[::-1].index(top)] -= 1  # the last of them: order is kept
    return list(zip(sides, steps, strict=True))


def plan_job(
    content_hw: tuple[int, int],
    style_hws: Sequence[tuple[int, int]],
    params: StyleParams,
    *,
    has_mask: bool = False,
) -> JobPlan:
    """The plan of a job on a photo of ``content_hw`` with paintings of ``style_hws``.

    Raises ``EngineError`` (a message for the user: why, and what to do) when the photo or a
    painting is too small or too thin to be processed at the requested size.
    """
    height, width = (int(v) for v in content_hw)
    if not style_hws:
        raise EngineError("at least one style image is needed")
    if min(height, width) < MIN_SHORT_SIDE:
        raise EngineError(
            f"the photo is {width}x{height} px; its shorter side must be at least "
            f"{MIN_SHORT_SIDE} px for VGG19"
        )
    long_side = max(height, width) if params.max_size == 0 else params.max_size
    h, w = fit_size(height, width, long_side)
    if min(h, w) < MIN_SHORT_SIDE:
        raise EngineError(_too_thin_message(height, width, h, w, params.max_size))
    # The first pass must keep the minimum too: a thin photo starts at a larger size.
    ratio = max(h, w) / min(h, w)
    smallest = max(SMALLEST_SCALE, math.ceil(MIN_SHORT_SIDE * ratio))
    schedule = scale_schedule(
        max(h, w), params.iterations, params.coarse_to_fine, smallest=smallest
    )
    passes = tuple((*fit_size(height, width, side), steps) for side, steps in schedule)
    style_sizes = tuple(
        tuple(
            _painting_size(sh, sw, side * params.style_scale, params.style_scale)
            for sh, sw in style_hws
        )
        for side, _ in schedule
    )
    detail = None
    if params.upscale == "detail" and (height, width) != passes[-1][:2]:
        detail = DetailPass(
            tiles=tiles((height, width), DETAIL_TILE, DETAIL_OVERLAP),
            steps=DETAIL_STEPS,
            style_sizes=tuple(
                _detail_painting_size(sh, sw, max(height, width) * params.style_scale, last)
                for (sh, sw), last in zip(style_hws, style_sizes[-1], strict=True)
            ),
        )
    return JobPlan(
        passes=passes,
        style_sizes=style_sizes,
        result_hw=(height, width),
        peak_bytes=_peak_bytes(
            passes, style_sizes, (height, width), style_hws, params, has_mask, detail
        ),
        detail=detail,
    )


def tiles(size: tuple[int, int], tile: int, overlap: int) -> tuple[tuple[int, int, int, int], ...]:
    """(top, left, height, width) of tiles of at most ``tile`` px covering ``size`` (h, w),
    neighbours overlapping by at least ``overlap`` px, spread evenly."""

    def starts(length: int) -> list[tuple[int, int]]:
        if length <= tile:
            return [(0, length)]
        count = math.ceil((length - overlap) / (tile - overlap))
        size = math.ceil((length + (count - 1) * overlap) / count)  # as small as covers it
        return [(min(i * (size - overlap), length - size), size) for i in range(count)]

    return tuple((top, left, th, tw) for top, th in starts(size[0]) for left, tw in starts(size[1]))


def _detail_painting_size(
    height: int, width: int, wanted_side: float, last: tuple[int, int]
) -> tuple[int, int]:
    """The painting for the detail pass: its longer side at ``wanted_side`` but no larger than
    its own, and no smaller than at the last pass (``last``)."""
    side = max(min(round(wanted_side), max(height, width)), max(last))
    h, w = fit_size(height, width, side, upscale=True)
    return (h, w) if min(h, w) >= min(last) else last


def _too_thin_message(height: int, width: int, h: int, w: int, max_size: int) -> str:
    needed = math.ceil(MIN_SHORT_SIDE * max(height, width) / min(height, width))
    at = f"at max_size {max_size}" if max_size else "at full size"
    return (
        f"the photo is {width}x{height} px, too thin to process {at}: its shorter side would be "
        f"{min(h, w)} px and VGG19 needs at least {MIN_SHORT_SIDE} px; crop it to a less "
        f"elongated shape, or set max_size to {needed} or more (0: full size)"
    )


def _painting_size(
    height: int, width: int, style_side: float, style_scale: float
) -> tuple[int, int]:
    """(h, w) a painting is seen at for a pass whose style side is ``style_side`` px."""
    side = max(MIN_SHORT_SIDE, round(style_side))
    h, w = fit_size(height, width, side, upscale=True)
    if min(h, w) >= MIN_SHORT_SIDE:
        return h, w
    # A thin painting: raise its shorter side to the minimum, at most to a square's pixels.
    scale = MIN_SHORT_SIDE / min(height, width)
    h, w = max(MIN_SHORT_SIDE, round(height * scale)), max(MIN_SHORT_SIDE, round(width * scale))
    if h * w > side * side:
        needed = math.ceil(MIN_SHORT_SIDE * max(height, width) / min(height, width))
        raise EngineError(
            f"a painting is {width}x{height} px, too thin to use at style_scale "
            f"{style_scale:g}: seen with its longer side at {side} px its shorter side would be "
            f"under {MIN_SHORT_SIDE} px; crop it to a less elongated shape (its longer side "
            f"would need {needed} px)"
        )
    return h, w


def _peak_bytes(
    passes: Sequence[tuple[int, int, int]],
    style_sizes: Sequence[Sequence[tuple[int, int]]],
    result_hw: tuple[int, int],
    style_hws: Sequence[tuple[int, int]],
    params: StyleParams,
    has_mask: bool,
    detail: DetailPass | None = None,
) -> int:
    """An upper bound of the job's extra memory (see ``JobPlan``).

    Within a pass the style targets are computed before the optimisation starts, and each pass's
    optimiser state is freed before the next pass's style targets are computed, so a pass costs
    the larger of its style pass and its step, plus its optimiser state.
    """
    arithmetic = "mixed" if params.precision.startswith("mixed") else "float32"
    per_pass = [
        _OPTIMISER_BYTES_PER_PIXEL[params.optimizer] * h * w
        + max(
            _STEP_BYTES_PER_PIXEL[arithmetic] * h * w,
            _STYLE_BYTES_PER_PIXEL[arithmetic] * max(sh * sw for sh, sw in sizes),
        )
        for (h, w, _), sizes in zip(passes, style_sizes, strict=True)
    ]
    photo = result_hw[0] * result_hw[1]
    if detail is not None:
        tile = max(h * w for _, _, h, w in detail.tiles)
        painting = max(h * w for h, w in detail.style_sizes)
        per_pass.append(
            _OPTIMISER_BYTES_PER_PIXEL[params.optimizer] * tile
            + max(
                _STEP_BYTES_PER_PIXEL[arithmetic] * tile,
                _STYLE_BYTES_PER_PIXEL[arithmetic] * painting,
            )
            # the enlarged picture, the refined one, their blend weights, the photo
            + _DETAIL_FULL_SIZE_BYTES_PER_PIXEL * photo
        )
        per_pass = [part + _SECOND_NETWORK_BYTES for part in per_pass]
    inputs = _INPUT_BYTES_PER_PIXEL * (
        photo * (2 if has_mask else 1) + sum(sh * sw for sh, sw in style_hws)
    )
    return int(_BASE_BYTES + inputs + max(per_pass) + _FULL_SIZE_BYTES_PER_PIXEL * photo)
