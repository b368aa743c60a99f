"""Side by side at 100%: the sky of a 2048 px result (issue 13's speckle) under each candidate.

    .venv/bin/python bench/speckle_candidates.py [--size 2048] [--out DIR] [--only NAME ...]

Renders Tübingen (enlarged to ``--size``, as docs/make_gallery.py does for its 2048 px picture)
in the style of The Starry Night with the device's defaults at ``--size`` for each candidate,
saves each result and a sheet of the same 100% crop of each (docs/make_gallery.py's CROP), and
prints each run's wall time. The candidates are the engine's two choices against the speckle:
VGG19's pooling, and the floor of steps per coarse-to-fine pass (1 was the old behaviour: the
2048 px pass of a 150-step job got 2 steps). At 2048 px each run takes 10-15 minutes on a
2-core CPU. Reads the test images from ../shared/images (never copied into the repository).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "docs"))

import make_gallery  # noqa: E402

from nst_server.engine import StyleEngine, core, planning  # noqa: E402
from nst_server.params import StyleParams  # noqa: E402
from nst_server.weights import resolve_weights  # noqa: E402

#: name -> (VGG19's pooling, least steps per pass)
CANDIDATES = {
    "max_pool_floor_1": ("max", 1),
    "avg_pool_floor_1": ("avg", 1),
    "avg_pool_floor_8": ("avg", planning.MIN_PASS_STEPS),
}


def render(photo, painting, size: int, pooling: str, floor: int):
    pooling_for, least = core.pooling_for, planning.MIN_PASS_STEPS
    core.pooling_for = lambda upscale: pooling
    planning.MIN_PASS_STEPS = floor
    try:
        engine = StyleEngine(resolve_weights())
        engine.load()
        params = StyleParams.from_mapping({"max_size": size}, engine.device)
        return engine.stylize(photo, [painting], params)
    finally:
        core.pooling_for, planning.MIN_PASS_STEPS = pooling_for, least


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=Path("/tmp/speckle"))
    ap.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shared = make_gallery.SHARED
    photo = make_gallery.load(shared / make_gallery.PHOTOS["tubingen"], args.size)
    painting = make_gallery.load(shared / make_gallery.PAINTINGS["starry_night"])
    times = {}
    for name in args.only or CANDIDATES:
        started = time.perf_counter()
        result = render(photo, painting, args.size, *CANDIDATES[name])
        times[name] = round(time.perf_counter() - started, 1)
        make_gallery.to_image(result).save(args.out / f"{name}_{args.size}.png")
        print(name, times[name], "s", flush=True)
    (args.out / f"times_{args.size}.json").write_text(json.dumps(times, indent=1))
    width = round((make_gallery.CROP[2] - make_gallery.CROP[0]) * args.size)
    crops = [
        make_gallery._crop(args.out / f"{n}_{args.size}.png", make_gallery.CROP, width, n)
        for n in CANDIDATES
    ]
    make_gallery._sheet([crops], args.out / f"crops_{args.size}.jpg")


if __name__ == "__main__":
    main()
