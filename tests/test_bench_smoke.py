"""The benchmark (bench/, not a test) cannot rot: its baseline and its equal-quality search run.

Tiny on purpose (64 px, a couple of steps); the timings themselves are never asserted.
"""

from __future__ import annotations

import math

import numpy as np

from bench.baseline_tf_tutorial import run_baseline
from bench.benchmark import (
    QUICK,
    Results,
    forget_styles,
    params_for,
    render,
    time_to_loss,
    vgg19_gflop,
)
from nst_server.images import encode_png
from tests.conftest import synthetic_painting, synthetic_photo


def test_baseline_two_steps(tmp_path):
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    content.write_bytes(encode_png(synthetic_photo(48, 64)))
    style.write_bytes(encode_png(synthetic_painting(64, 64)))
    run = run_baseline(content, style, 64, 2, snapshot_steps=[2])
    assert run.image.shape == (48, 64, 3)
    assert run.steps == 2 and len(run.step_times) == 1
    assert run.image.min() >= 0.0 and run.image.max() <= 1.0  # clipped after each step
    assert np.array_equal(run.snapshots[2], run.image)
    # The tutorial starts from the photo and must have moved away from it.
    assert not np.allclose(run.image, synthetic_photo(48, 64), atol=1e-4)


def test_equal_quality_search(engine):
    content, style = synthetic_photo(48, 64), synthetic_painting(64, 64)
    params = params_for(engine, 64, 3)
    # Any loss satisfies an infinite target: stopped (Cancelled) at the first step.
    easy = time_to_loss(engine, content, [style], params, math.inf)
    assert easy.reached and easy.steps == easy.full_steps == 1
    assert easy.image is not None and easy.image.shape == (48, 64, 3)
    assert engine.loss_terms(easy.image, content, [style], params)["total"] == easy.loss
    assert engine.cached_styles > 0
    forget_styles(engine)
    assert engine.cached_styles == 0
    # An impossible target: the run ends at its cap, not reached.
    never = time_to_loss(engine, content, [style], params, -1.0)
    assert not never.reached and never.steps == 3 and never.loss > 0


def test_report_renders():
    report = render(
        Results(
            machine=dict.fromkeys(("model", "cores", "ram", "python", "tensorflow"), "x"),
            quick=True,
            started="now",
        ),
        QUICK,
    )
    assert "# Benchmarks" in report and "bench/benchmark.py --quick" in report
    assert "before and after issue 13" not in report  # no such figures in this run


def test_report_renders_the_engine_section():
    times = {"step_s": {"256": 0.2}, "edit_s": {"384": 40.0}}
    report = render(
        Results(
            machine=dict.fromkeys(("model", "cores", "ram", "python", "tensorflow"), "x"),
            quick=True,
            started="now",
            before_after={
                "commit": "abc",
                "runs": {"before": [times], "after": [times]},
                "before": times,
                "after": times,
            },
            style_losses=[{"size": 384, "gram": 0.2, "wasserstein": 0.3, "sliced": 0.4}],
            detail={
                "photo": "1024x768",
                "max_size": 384,
                "iterations": 150,
                "plain": 40.0,
                "detail": 80.0,
            },
            measured={"detail": "now"},
        ),
        QUICK,
    )
    assert "before and after issue 13" in report and "| s per step, 256 px | 0.200 |" in report
    assert "| 384 px | 0.200 | 0.300 (1.50x) | 0.400 (2.00x) |" in report
    assert "plain 40.0 s, detail 80.0 s, +100%" in report
    # The FLOP count behind the GPU estimate: ~190 GFLOP forward at 512x512, ~380 per step.
    assert 185 < vgg19_gflop(512, 512) < 195
