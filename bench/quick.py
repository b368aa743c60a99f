"""Per-step time of the engine, and one job through the real server next to the engine alone.

    .venv/bin/python bench/quick.py [--sizes 128 256] [--steps 20] [--job-size 256]
                                    [--job-steps N]

Run it on an otherwise idle machine: every figure is wall time on this CPU. Images are made in
code (a smooth synthetic photo and a striped 'painting'), so it needs nothing from ../shared.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nst_server.engine import StyleEngine  # noqa: E402
from nst_server.images import encode_png  # noqa: E402
from nst_server.params import StyleParams  # noqa: E402
from nst_server.weights import resolve_weights  # noqa: E402
from tests.conftest import synthetic_painting, synthetic_photo  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402


def step_times(engine: StyleEngine, size: int, steps: int) -> list[float]:
    """Seconds per L-BFGS step after the first (which includes tracing) at ``size`` px."""
    stamps: list[float] = []
    content = synthetic_photo(size * 3 // 4, size)
    params = StyleParams.from_mapping({"iterations": steps + 1, "max_size": size}, engine.device)
    engine.stylize(
        content,
        [synthetic_painting(size, size)],
        params,
        lambda e: stamps.append(time.perf_counter()) if e.phase == "optimising" else None,
    )
    return [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--job-size", type=int, default=256)
    ap.add_argument("--job-steps", type=int, default=None, help="default: the device's")
    args = ap.parse_args()

    engine = StyleEngine(resolve_weights())
    engine.load()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"device {engine.device}; weights: {engine.weights_description}\n"
    )
    print("| size | median s/step | min | max |\n|---|---|---|---|")
    for size in args.sizes:
        times = step_times(engine, size, args.steps)
        print(
            f"| {size} px | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |"
        )

    size, steps = args.job_size, args.job_steps
    content, style = synthetic_photo(size * 3 // 4, size), synthetic_painting(size, size)
    steps = steps or StyleParams.for_device(engine.device).iterations
    params = {"iterations": steps, "max_size": size}
    p = StyleParams.from_mapping(params, engine.device)
    engine.stylize(content, [style], p)  # warm: the server's engine is warm too
    started = time.perf_counter()
    engine.stylize(content, [style], p)
    alone = time.perf_counter() - started

    # the server's defaults (no --abandon-after, no --queue-size), as a user would run it
    with (
        tempfile.TemporaryDirectory() as tmp,
        LiveServer(Path(tmp), abandon_after_s=None) as server,
    ):
        server.timed_job(encode_png(content), encode_png(style), params)  # warm, as the engine
        through, inside = server.timed_job(encode_png(content), encode_png(style), params)
    print(
        f"\none {size} px job, {steps} L-BFGS steps, warm: engine alone {alone:.1f} s, "
        f"through HTTP + PNG + the plug-in's polls {through:.1f} s, of which the server's "
        f"engine {inside:.1f} s (overhead {100 * (through - inside) / inside:+.1f}%)"
    )


if __name__ == "__main__":
    main()
