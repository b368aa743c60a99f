"""Render the README gallery: both test pairs, each control, the style losses, the strength range,
and 100% crops at 512, 1024 and 2048 px.

    .venv/bin/python docs/make_gallery.py [--out docs/gallery] [--only NAME ...] [--force]
    .venv/bin/python docs/make_gallery.py --sheets-only   # re-assemble the figures

Reads the public-domain test images from ../shared/images (never copied into the repository),
runs the engine with the device's default parameters (plus the named overrides), and writes
each result as a JPEG, the wall time of each into timings.json, and the figures the README
shows (docs/gallery*.jpg). Finished renders are kept: a re-run only renders what is missing.
On a 2-core CPU the whole set takes a few hours, a third of it the 2048 px render.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nst_server.engine import ENGINE_VERSION, StyleEngine  # noqa: E402
from nst_server.params import StyleParams  # noqa: E402
from nst_server.weights import resolve_weights  # noqa: E402

SHARED = Path(os.environ.get("NST_SHARED_IMAGES", REPO.parent / "shared" / "images"))
PHOTOS = {"tubingen": "content/tubingen.jpg", "golden_gate": "content/golden_gate.jpg"}
PAINTINGS = {"starry_night": "style/starry_night.jpg", "the_scream": "style/the_scream.jpg"}
PAIRS = {
    "tubingen_starry": ("tubingen", "starry_night"),
    "golden_gate_scream": ("golden_gate", "the_scream"),
}
STRENGTHS = (10, 30, 50, 70, 90)
LOSSES = ("gram", "wasserstein", "sliced")


@dataclass(frozen=True)
class Render:
    photo: str
    paintings: tuple[str, ...]
    params: dict = field(default_factory=dict)
    mask: str | None = None
    #: The photo enlarged to this longer side first (the shared photos are at most 1024 px).
    photo_side: int | None = None
    #: Steps scaled so that the run takes as long as this render's (same wall time).
    same_time_as: str | None = None


def _renders() -> dict[str, Render]:
    out = {
        "tubingen_starry_512": Render("tubingen", ("starry_night",), {"max_size": 512}),
        "tubingen_starry_1024": Render("tubingen", ("starry_night",), {"max_size": 1024}),
        "golden_gate_scream_512": Render("golden_gate", ("the_scream",), {"max_size": 512}),
        "golden_gate_scream_1024": Render("golden_gate", ("the_scream",), {"max_size": 1024}),
        "tubingen_starry_colours": Render("tubingen", ("starry_night",), {"preserve_colors": True}),
        "tubingen_starry_masked": Render("tubingen", ("starry_night",), mask="sky"),
        "tubingen_blend": Render(
            "tubingen", ("starry_night", "the_scream"), {"style_blend": [1, 1]}
        ),
        "tubingen_starry_detail": Render("tubingen", ("starry_night",), {"upscale": "detail"}),
    }
    for pair, (photo, painting) in PAIRS.items():
        for loss in LOSSES[1:]:
            out[f"{pair}_{loss}_512"] = Render(
                photo,
                (painting,),
                {"max_size": 512, "style_loss": loss},
                same_time_as=f"{pair}_512",
            )
        for strength in STRENGTHS:
            out[f"{pair}_strength_{strength}"] = Render(photo, (painting,), {"strength": strength})
    # Last: the longest (about a third of the whole set).
    out["tubingen_starry_2048"] = Render(
        "tubingen", ("starry_night",), {"max_size": 2048}, photo_side=2048
    )
    return out


RENDERS = _renders()


def load(path: Path, long_side: int | None = None) -> np.ndarray:
    with Image.open(path) as img:
        img = img.convert("RGB")
        if long_side:
            scale = long_side / max(img.size)
            img = img.resize(
                (round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS
            )
        return np.asarray(img, np.float32) / 255.0


def sky_mask(photo: np.ndarray) -> np.ndarray:
    """Upper part of the picture with a soft gradient: the style goes to the sky only."""
    h, w = photo.shape[:2]
    rows = np.clip((0.45 * h - np.arange(h)) / (0.1 * h), 0.0, 1.0)
    return np.tile(rows[:, None], (1, w)).astype(np.float32)


def to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8))


def seconds_per_step(engine: StyleEngine, photo, paintings, params: StyleParams) -> float:
    """Median seconds of a step at the processing size (4 steps, one pass, after a warm-up)."""
    probe = dataclasses.replace(params, iterations=5, coarse_to_fine=False)
    engine.stylize(photo, paintings, dataclasses.replace(probe, iterations=1))
    stamps: list[float] = []
    engine.stylize(
        photo,
        paintings,
        probe,
        lambda e: stamps.append(time.perf_counter()) if e.phase == "optimising" else None,
    )
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def render(engine: StyleEngine, name: str, out: Path, timings: dict) -> None:
    job = RENDERS[name]
    photo = load(SHARED / PHOTOS[job.photo], job.photo_side)
    paintings = [load(SHARED / PAINTINGS[p]) for p in job.paintings]
    mask = sky_mask(photo) if job.mask == "sky" else None
    params = StyleParams.from_mapping(job.params, engine.device)
    note = None
    if job.same_time_as:
        reference = StyleParams.from_mapping(RENDERS[job.same_time_as].params, engine.device)
        ratio = seconds_per_step(engine, photo, paintings, reference) / seconds_per_step(
            engine, photo, paintings, params
        )
        params = dataclasses.replace(params, iterations=max(10, round(params.iterations * ratio)))
        note = f"{params.iterations} steps: a step costs {1 / ratio:.2f}x a Gram step"
    last: dict = {}

    def progress(event) -> None:
        if event.phase == "optimising":
            last.update(size=event.size)
            if event.step % 10 == 0 or event.step == event.total:
                print(
                    f"  {name}: step {event.step}/{event.total} pass {event.scale}/"
                    f"{event.scales} {event.size[0]}x{event.size[1]} px, "
                    f"{event.elapsed_s:.0f} s",
                    flush=True,
                )

    started = time.perf_counter()
    result = engine.stylize(photo, paintings, params, progress, mask=mask)
    seconds = time.perf_counter() - started
    to_image(result).save(out / f"{name}.jpg", quality=92)
    timings[name] = {
        "seconds": round(seconds, 1),
        "output": f"{photo.shape[1]}x{photo.shape[0]}",
        "processed_at": "x".join(map(str, last.get("size", ()))),
        "params": job.params,
        "iterations": params.iterations,
        "note": note,
        "engine_version": ENGINE_VERSION,
        "load_average": round(os.getloadavg()[0], 1),
    }
    print(f"{name}: {seconds:.0f} s", flush=True)


# -- the figures ---------------------------------------------------------------------------------

HEIGHT, PAD = 240, 6


def _label(img: Image.Image, text: str) -> Image.Image:
    ImageDraw.Draw(img).text((6, 4), text, fill="white", stroke_width=2, stroke_fill="black")
    return img


def _plain_tile(path: Path, height: int = 300) -> Image.Image | None:
    if not path.exists():
        return None
    img = Image.open(path).convert("RGB")
    return img.resize((round(img.width * height / img.height), height), Image.Resampling.LANCZOS)


def _tile(path: Path, label: str, height: int = HEIGHT) -> Image.Image | None:
    img = _plain_tile(path, height)
    return None if img is None else _label(img, label)


def _sheet(rows: list[list[Image.Image | None]], path: Path) -> None:
    rows = [[t for t in row if t is not None] for row in rows]
    rows = [row for row in rows if row]
    if not rows:
        return
    width = max(sum(t.width for t in row) + PAD * (len(row) - 1) for row in rows)
    height = sum(max(t.height for t in row) for row in rows) + PAD * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    y = 0
    for row in rows:
        x = 0
        for img in row:
            canvas.paste(img, (x, y))
            x += img.width + PAD
        y += max(t.height for t in row) + PAD
    canvas.save(path, quality=88)


#: The detail the crops show, as fractions of the picture: the sky left of the tower, with the
#: painting's moon-like swirl, where the speckle showed.
CROP = (0.29, 0.05, 0.45, 0.21)


def _crop(path: Path, box: tuple[float, float, float, float], size: int, label: str):
    """``box`` of the picture at ``path``, shown ``size`` px wide without smoothing (a pixel of a
    smaller picture becomes a block, so each is seen at its own resolution)."""
    if not path.exists():
        return None
    img = Image.open(path).convert("RGB")
    w, h = img.size
    region = img.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    shown = region.resize(
        (size, round(size * region.height / region.width)), Image.Resampling.NEAREST
    )
    return _label(shown, label)


def sheets(out: Path) -> None:
    docs = REPO / "docs"
    photo = {k: SHARED / v for k, v in PHOTOS.items()}
    painting = {k: SHARED / v for k, v in PAINTINGS.items()}
    _sheet(  # README's first picture: photo, painting, result (no labels)
        [
            [
                _plain_tile(photo["tubingen"]),
                _plain_tile(painting["starry_night"]),
                _plain_tile(out / "tubingen_starry_512.jpg"),
            ]
        ],
        docs / "hero.jpg",
    )
    _sheet(
        [
            [
                _tile(photo["tubingen"], "photo"),
                _tile(painting["starry_night"], "painting"),
                _tile(out / "tubingen_starry_512.jpg", "defaults, 512 px"),
                _tile(out / "tubingen_starry_1024.jpg", "defaults, 1024 px"),
            ],
            [
                _tile(photo["golden_gate"], "photo"),
                _tile(painting["the_scream"], "painting"),
                _tile(out / "golden_gate_scream_512.jpg", "defaults, 512 px"),
                _tile(out / "golden_gate_scream_1024.jpg", "defaults, 1024 px"),
            ],
            [
                _tile(out / "tubingen_starry_colours.jpg", "colours preserved"),
                _tile(out / "tubingen_starry_masked.jpg", "masked: sky only"),
                _tile(out / "tubingen_blend.jpg", "two paintings blended"),
            ],
        ],
        docs / "gallery.jpg",
    )
    # 100% crops: the same detail of each result; the 2048 px one at 100%, the others blown up
    # to the same size with their pixels as blocks.
    width = round((CROP[2] - CROP[0]) * 2048)
    _sheet(
        [
            [
                _crop(out / "tubingen_starry_512.jpg", CROP, width, "512 px result"),
                _crop(out / "tubingen_starry_1024.jpg", CROP, width, "1024 px result"),
                _crop(out / "tubingen_starry_2048.jpg", CROP, width, "2048 px result, 100%"),
            ],
            [
                _crop(out / "tubingen_starry_strength_50.jpg", CROP, width, "384 px, plain"),
                _crop(out / "tubingen_starry_detail.jpg", CROP, width, "384 px, detail"),
            ],
        ],
        docs / "gallery-crops.jpg",
    )
    _sheet(
        [
            [_tile(out / f"{pair}_512.jpg", "gram (default)", 200)]
            + [_tile(out / f"{pair}_{loss}_512.jpg", loss, 200) for loss in LOSSES[1:]]
            for pair in PAIRS
        ],
        docs / "gallery-losses.jpg",
    )
    _sheet(
        [
            [_tile(out / f"{pair}_strength_{s}.jpg", f"strength {s}", 150) for s in STRENGTHS]
            for pair in PAIRS
        ],
        docs / "gallery-strength.jpg",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "gallery")
    ap.add_argument("--only", nargs="*", choices=sorted(RENDERS), default=None)
    ap.add_argument("--force", action="store_true", help="render again what exists")
    ap.add_argument("--sheets-only", action="store_true", help="only assemble the figures")
    args = ap.parse_args()
    if not (SHARED / "content").is_dir():
        sys.exit(f"make_gallery: test images not found at {SHARED}")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.sheets_only:
        timings_path = args.out / "timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
        engine = StyleEngine(resolve_weights())
        engine.load()
        for name in args.only or RENDERS:
            if (args.out / f"{name}.jpg").exists() and not args.force:
                continue
            render(engine, name, args.out, timings)
            timings_path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    sheets(args.out)
    print(f"wrote {REPO / 'docs'}/gallery*.jpg")


if __name__ == "__main__":
    main()
