"""plan_job: the sizes a job runs at and its memory bound, for every aspect ratio, without TF."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nst_server.engine import EngineError
from nst_server.engine.planning import (
    MIN_PASS_STEPS,
    MIN_SHORT_SIDE,
    SMALLEST_SCALE,
    JobPlan,
    fit_size,
    plan_job,
    scale_schedule,
)
from nst_server.params import StyleParams
from tests.conftest import REPO

CPU = StyleParams.for_device("cpu")


def params(**overrides) -> StyleParams:
    return StyleParams.from_mapping(overrides, "cpu")


@pytest.mark.parametrize(
    ("side", "iterations"), [(300, 30), (512, 200), (1024, 200), (2048, 300), (700, 3)]
)
def test_scale_schedule_goes_small_to_large_and_spends_most_steps_small(side, iterations):
    schedule = scale_schedule(side, iterations, coarse_to_fine=True)
    sides = [s for s, _ in schedule]
    steps = [n for _, n in schedule]
    assert sides[-1] == side and sides == sorted(sides) and len(set(sides)) == len(sides)
    assert sides[0] == min(side, SMALLEST_SCALE) or len(sides) == iterations
    assert all(b / a <= 1.5 for a, b in zip(sides[:-1], sides[1:], strict=True))
    assert sum(steps) == iterations and min(steps) >= 1
    assert steps == sorted(steps, reverse=True)


def test_scale_schedule_single_scale_when_off_or_small():
    assert scale_schedule(512, 100, coarse_to_fine=False) == [(512, 100)]
    assert scale_schedule(256, 100, coarse_to_fine=True) == [(256, 100)]


def test_the_default_cpu_job_runs_coarse_to_fine_to_max_size_at_the_photos_shape():
    plan = plan_job((768, 1024), [(811, 1024)], CPU)
    assert isinstance(plan, JobPlan)
    assert [p[:2] for p in plan.passes] == [(192, 256), (236, 314), (288, 384)]
    assert sum(p[2] for p in plan.passes) == CPU.iterations
    assert plan.processing_hw == (288, 384) and plan.result_hw == (768, 1024)
    assert plan.enlargement == pytest.approx(1024 / 384)
    # The painting is seen at each pass's longer side times style_scale (1).
    assert [sizes[0] for sizes in plan.style_sizes] == [(203, 256), (249, 314), (304, 384)]


def test_a_photo_smaller_than_max_size_is_never_enlarged():
    plan = plan_job((300, 200), [(64, 64)], params(max_size=512))
    assert plan.processing_hw == (300, 200) and plan.enlargement == 1.0


@pytest.mark.parametrize(
    ("content_hw", "max_size"),
    [
        ((40, 4000), 384),
        ((4000, 40), 384),
        ((33, 60000), 8192),
        ((64, 8000), 1024),
        ((32, 256), 128),
    ],
)
def test_a_photo_too_thin_for_the_requested_size_is_refused_saying_what_to_do(content_hw, max_size):
    with pytest.raises(EngineError) as caught:
        plan_job(content_hw, [(512, 512)], params(max_size=max_size))
    message = str(caught.value)
    assert "too thin" in message and f"{MIN_SHORT_SIDE} px" in message
    assert "crop it" in message and "max_size" in message


@pytest.mark.parametrize("ratio", [1, 2, 4, 7.9, 8, 11.9, 12])
@pytest.mark.parametrize("max_size", [64, 384, 1024, 0])
def test_every_pass_keeps_the_size_rules_for_every_aspect_ratio(ratio, max_size):
    """Longer side at most max_size, shorter side at least 32 px, steps all spent; or refused."""
    for content_hw in ((1000, round(1000 * ratio)), (round(1000 * ratio), 1000)):
        try:
            plan = plan_job(content_hw, [(300, 2400)], params(max_size=max_size))
        except EngineError as exc:
            assert "too thin" in str(exc)
            if "painting" in str(exc):  # 8:1 raised to 32 px is more than a square at 64 px
                assert max_size == 64
            else:
                assert max_size and max_size / ratio < MIN_SHORT_SIDE + 1
            continue
        for h, w, steps in plan.passes:
            assert min(h, w) >= MIN_SHORT_SIDE and steps >= 1
            assert max(h, w) <= (max_size or max(content_hw))
            assert abs(h / w - content_hw[0] / content_hw[1]) < 0.05 * max(1, h / w)
        for (h, w, _), sizes in zip(plan.passes, plan.style_sizes, strict=True):
            ((sh, sw),) = sizes
            assert min(sh, sw) >= MIN_SHORT_SIDE and sh * sw <= max(h, w, MIN_SHORT_SIDE) ** 2
        assert sum(p[2] for p in plan.passes) == CPU.iterations


def test_a_thin_photo_starts_coarse_to_fine_where_its_short_side_keeps_the_minimum():
    plan = plan_job((100, 1000), [(64, 64)], params(max_size=800))
    assert plan.passes[0][0] >= MIN_SHORT_SIDE and plan.processing_hw == (80, 800)
    assert plan.passes[0][1] == 320  # 32 px x 10:1, not SMALLEST_SCALE's 256


def test_a_photo_smaller_than_the_network_minimum_is_refused():
    with pytest.raises(EngineError, match="at least 32 px"):
        plan_job((20, 64), [(64, 64)], params())


def test_a_thin_painting_is_raised_to_the_minimum_or_refused_beyond_a_squares_pixels():
    plan = plan_job((300, 400), [(50, 1000)], params(max_size=400))
    sizes = [sizes[0] for sizes in plan.style_sizes]
    assert all(min(s) == MIN_SHORT_SIDE for s in sizes[:1]) and min(sizes[-1]) >= MIN_SHORT_SIDE
    with pytest.raises(EngineError, match="painting is 20000x40 px, too thin"):
        plan_job((300, 400), [(40, 20000)], params(max_size=400))


def test_peak_bytes_grows_with_size_style_scale_and_the_photos_own_size():
    base = plan_job((768, 1024), [(512, 512)], params(max_size=512)).peak_bytes
    larger = plan_job((768, 1024), [(512, 512)], params(max_size=1024)).peak_bytes
    styled = plan_job((768, 1024), [(512, 512)], params(max_size=512, style_scale=4)).peak_bytes
    big_photo = plan_job((3000, 4000), [(512, 512)], params(max_size=512)).peak_bytes
    assert base < larger and base < styled and base < big_photo
    # The style pass at style_scale 4 sees 16x the pixels: it dominates the step.
    assert styled > 2 * base
    assert (
        plan_job((768, 1024), [(512, 512)], params(max_size=512), has_mask=True).peak_bytes > base
    )


def test_planning_does_not_import_tensorflow():
    code = (
        "import sys; from nst_server.engine.planning import plan_job; "
        "from nst_server.params import StyleParams; "
        "plan_job((300, 400), [(64, 64)], StyleParams()); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_fit_size_never_enlarges_unless_asked():
    assert fit_size(300, 400, 800) == (300, 400)
    assert fit_size(300, 400, 800, upscale=True) == (600, 800)
    assert fit_size(3000, 4000, 400) == (300, 400)


@pytest.mark.parametrize(("side", "iterations"), [(2048, 150), (4096, 150), (1458, 60), (2048, 30)])
def test_every_pass_gets_the_floor_of_steps_when_the_iterations_allow(side, iterations):
    steps = [n for _, n in scale_schedule(side, iterations, coarse_to_fine=True)]
    assert sum(steps) == iterations and steps == sorted(steps, reverse=True)
    assert min(steps) == min(MIN_PASS_STEPS, iterations // len(steps))
