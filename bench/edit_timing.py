"""Per-step and per-edit times of one engine tree, in a fresh process (for before/after runs).

    .venv/bin/python bench/edit_timing.py TREE [--steps SIZE:N ...] [--edits SIZE:ITER ...]

``TREE`` is a checkout of this repository (e.g. an older commit extracted with ``git archive``);
its ``nst_server`` is imported, so the same measurement runs on the engine as it was and as it
is. Only the engine's public API is used (``StyleEngine.stylize`` and progress events), which
both sides share. Prints one JSON line: seconds per step (median, coarse to fine off, after an
untimed warm-up job at the same size) and seconds per whole edit (the second of two identical
edits, so both sides have their tracing and style targets done, as in a warm server).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree", type=Path)
    ap.add_argument("--steps", action="append", default=[], help="SIZE:N timed steps at SIZE")
    ap.add_argument("--edits", action="append", default=[], help="SIZE:ITER default edit")
    ap.add_argument("--images", type=Path, required=True, help="the shared images folder")
    args = ap.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    from PIL import Image

    from nst_server.engine import StyleEngine
    from nst_server.params import StyleParams

    def load(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), np.float32) / 255.0

    try:  # engines from before it took resolved weights
        from nst_server.weights import resolve_weights

        engine = StyleEngine(resolve_weights())
    except TypeError:
        engine = StyleEngine()
    engine.load()
    photo = load(args.images / "content" / "tubingen.jpg")
    painting = load(args.images / "style" / "starry_night.jpg")
    out: dict[str, dict[str, float]] = {"step_s": {}, "edit_s": {}}
    for spec in args.steps:
        size, count = (int(v) for v in spec.split(":"))
        params = StyleParams.from_mapping(
            {"iterations": count + 1, "max_size": size, "coarse_to_fine": False}, engine.device
        )
        engine.stylize(photo, [painting], params)  # warm: traced, targets cached
        stamps: list[float] = []

        def on_progress(event: object, stamps: list[float] = stamps) -> None:
            if event.phase == "optimising":  # type: ignore[attr-defined]
                stamps.append(time.perf_counter())

        engine.stylize(photo, [painting], params, on_progress)
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        out["step_s"][str(size)] = statistics.median(gaps)
    for spec in args.edits:
        size, iterations = (int(v) for v in spec.split(":"))
        params = StyleParams.from_mapping(
            {"iterations": iterations, "max_size": size}, engine.device
        )
        engine.stylize(photo, [painting], params)
        started = time.perf_counter()
        engine.stylize(photo, [painting], params)
        out["edit_s"][str(size)] = time.perf_counter() - started
    print(json.dumps(out))


if __name__ == "__main__":
    main()
