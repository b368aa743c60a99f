"""upscale "detail": a last pass at the result's size, over tiles, on the real VGG19."""

from __future__ import annotations

import numpy as np
import pytest

from nst_server.engine import FinishEarly, Progress
from nst_server.engine.planning import plan_job, tiles
from nst_server.params import StyleParams
from tests.conftest import synthetic_painting, synthetic_photo


def params(**overrides) -> StyleParams:
    return StyleParams.from_mapping({"iterations": 4, "max_size": 64, **overrides}, "cpu")


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 96 px overlapping by 24, so a 160 x 200 photo takes several."""
    monkeypatch.setattr("nst_server.engine.planning.DETAIL_TILE", 96)
    monkeypatch.setattr("nst_server.engine.planning.DETAIL_OVERLAP", 24)
    monkeypatch.setattr("nst_server.engine.planning.DETAIL_STEPS", 3)


@pytest.mark.parametrize("size", [(100, 100), (768, 1024), (3000, 4000), (513, 2000)])
def test_tiles_cover_the_picture_and_overlap_by_at_least_the_overlap(size):
    covered = np.zeros(size, int)
    found = tiles(size, 512, 64)
    for top, left, h, w in found:
        assert h <= 512 and w <= 512 and top + h <= size[0] and left + w <= size[1]
        covered[top : top + h, left : left + w] += 1
    assert covered.min() >= 1
    tops = sorted({t for t, *_ in found})
    heights = {t: h for t, _, h, _ in found}
    for a, b in zip(tops, tops[1:], strict=False):
        assert a + heights[a] - b >= 64


def test_the_detail_pass_is_planned_only_for_an_enlarged_result():
    detail = params(upscale="detail")
    assert plan_job((48, 64), [(64, 64)], detail).detail is None  # processed at full size
    assert plan_job((480, 640), [(64, 64)], params()).detail is None  # plain
    job = plan_job((480, 640), [(2000, 2000)], detail)
    assert job.detail is not None and job.total_steps == 4 + len(job.detail.tiles) * 10
    # The painting as fine as the result's scale wants, never enlarged beyond its own pixels.
    assert job.detail.style_sizes == ((640, 640),)
    assert plan_job((480, 640), [(300, 300)], detail).detail.style_sizes == ((300, 300),)
    plain = plan_job((480, 640), [(2000, 2000)], params())
    assert job.peak_bytes > plain.peak_bytes and job.pixel_steps > plain.pixel_steps


def plain_on_the_detail_network(engine, photo, painting, monkeypatch) -> np.ndarray:
    """The plain enlargement a detail job starts from: a plain job on the detail job's network
    (max pooling, see network.pooling_for)."""
    with monkeypatch.context() as patch:
        patch.setattr("nst_server.engine.core.pooling_for", lambda upscale: "max")
        return engine.stylize(photo, [painting], params())


def test_detail_refines_the_enlarged_result_and_reports_the_extra_pass(
    engine, small_tiles, monkeypatch
):
    photo, painting = synthetic_photo(160, 200), synthetic_painting(128, 128)
    events: list[Progress] = []
    detailed = engine.stylize(photo, [painting], params(upscale="detail"), events.append)
    plain = plain_on_the_detail_network(engine, photo, painting, monkeypatch)
    steps = [e for e in events if e.phase == "optimising"]
    job = plan_job((160, 200), [(128, 128)], params(upscale="detail"))
    assert len(job.detail.tiles) > 2
    assert [e.step for e in steps] == list(range(1, job.total_steps + 1))
    assert {e.total for e in steps} == {job.total_steps}
    last_pass = [e for e in steps if e.scale == e.scales]
    assert last_pass[0].size == (200, 160) and last_pass[0].scales == 2
    assert steps[-1].preview is not None and steps[-1].preview.shape == (51, 64, 3)
    assert detailed.shape == plain.shape == (160, 200, 3)
    assert detailed.min() >= 0 and detailed.max() <= 1

    # Finer than the plain enlargement: more energy in neighbour differences, same picture.
    def roughness(image: np.ndarray) -> float:
        return float(np.abs(np.diff(image, axis=1)).mean())

    assert roughness(detailed) > 1.1 * roughness(plain)
    assert np.abs(detailed - plain).mean() < 0.1


def test_finishing_during_the_detail_pass_keeps_the_tiles_done(engine, small_tiles, monkeypatch):
    photo, painting = synthetic_photo(160, 200), synthetic_painting(128, 128)
    job = plan_job((160, 200), [(128, 128)], params(upscale="detail"))
    stop_at = job.total_steps - job.detail.steps  # in the last tile

    def finish(event: Progress) -> None:
        if event.phase == "optimising" and event.step == stop_at:
            raise FinishEarly

    kept = engine.stylize(photo, [painting], params(upscale="detail"), finish)
    full = engine.stylize(photo, [painting], params(upscale="detail"))
    plain = plain_on_the_detail_network(engine, photo, painting, monkeypatch)
    top, left, h, w = job.detail.tiles[0]
    first = np.s_[top : top + h - 24, left : left + w - 24]  # refined, and nothing after it
    np.testing.assert_allclose(kept[first], full[first], atol=1e-5)
    assert np.abs(kept[first] - plain[first]).mean() > 1e-3
