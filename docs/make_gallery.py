"""Render the README gallery: both test pairs with the default settings, and each control.

    .venv/bin/python docs/make_gallery.py [--out docs/gallery] [--only NAME ...] [--force]

Reads the public-domain test images from ../shared/images (never copied into the repository),
runs the engine with the device's default parameters (plus the named overrides), and writes
each result as a JPEG, the wall time of each into timings.json, and a contact sheet
(docs/gallery.jpg). Finished renders are kept: a re-run only renders what is missing.
On a 2-core CPU the whole set takes about an hour, most of it the 2048 px render.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nst_server.engine import StyleEngine  # noqa: E402
from nst_server.params import StyleParams  # noqa: E402
from nst_server.weights import resolve_weights  # noqa: E402

SHARED = Path(os.environ.get("NST_SHARED_IMAGES", REPO.parent / "shared" / "images"))
PHOTOS = {"tubingen": "content/tubingen.jpg", "golden_gate": "content/golden_gate.jpg"}
PAINTINGS = {"starry_night": "style/starry_night.jpg", "the_scream": "style/the_scream.jpg"}

#: name -> (photo, paintings, params overrides, mask, photo upscaled to this longer side)
RENDERS: dict[str, tuple[str, list[str], dict, str | None, int | None]] = {
    "tubingen_starry_512": ("tubingen", ["starry_night"], {"max_size": 512}, None, None),
    "tubingen_starry_1024": ("tubingen", ["starry_night"], {"max_size": 1024}, None, None),
    "golden_gate_scream_512": ("golden_gate", ["the_scream"], {"max_size": 512}, None, None),
    "tubingen_starry_colours": (
        "tubingen",
        ["starry_night"],
        {"preserve_colors": True},
        None,
        None,
    ),
    "tubingen_starry_masked": ("tubingen", ["starry_night"], {}, "sky", None),
    "tubingen_blend": (
        "tubingen",
        ["starry_night", "the_scream"],
        {"style_blend": [1, 1]},
        None,
        None,
    ),
    "golden_gate_scream_1024": ("golden_gate", ["the_scream"], {"max_size": 1024}, None, None),
    "tubingen_starry_2048": ("tubingen", ["starry_night"], {"max_size": 2048}, None, 2048),
}


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


def render(engine: StyleEngine, name: str, out: Path, timings: dict) -> None:
    photo_name, painting_names, overrides, mask_name, upscale = RENDERS[name]
    photo = load(SHARED / PHOTOS[photo_name], upscale)
    paintings = [load(SHARED / PAINTINGS[p]) for p in painting_names]
    mask = sky_mask(photo) if mask_name == "sky" else None
    params = StyleParams.from_mapping(overrides, engine.device)
    last: dict = {}

    def progress(event) -> None:
        if event.phase == "optimising":
            last.update(size=event.size, note=event.note)
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
    to_image(result).save(out / f"{name}.jpg", quality=90)
    timings[name] = {
        "seconds": round(seconds, 1),
        "output": f"{photo.shape[1]}x{photo.shape[0]}",
        "processed_at": "x".join(map(str, last.get("size", ()))),
        "params": overrides,
        "note": last.get("note"),
    }
    print(f"{name}: {seconds:.0f} s", flush=True)


def contact_sheet(out: Path, sheet: Path) -> None:
    """Rows of labelled tiles, 240 px high: the pairs, the controls, 512 vs 2048 px detail."""
    height, pad = 240, 6
    rows = [
        [
            ("photo", SHARED / PHOTOS["tubingen"]),
            ("painting", SHARED / PAINTINGS["starry_night"]),
            ("defaults, 512 px", out / "tubingen_starry_512.jpg"),
            ("defaults, 1024 px", out / "tubingen_starry_1024.jpg"),
        ],
        [
            ("photo", SHARED / PHOTOS["golden_gate"]),
            ("painting", SHARED / PAINTINGS["the_scream"]),
            ("defaults, 512 px", out / "golden_gate_scream_512.jpg"),
            ("defaults, 1024 px", out / "golden_gate_scream_1024.jpg"),
        ],
        [
            ("colours preserved", out / "tubingen_starry_colours.jpg"),
            ("masked: sky only", out / "tubingen_starry_masked.jpg"),
            ("two paintings blended", out / "tubingen_blend.jpg"),
        ],
        [
            ("512 px run, crop", out / "tubingen_starry_512.jpg"),
            ("2048 px run, same crop", out / "tubingen_starry_2048.jpg"),
        ],
    ]
    tiles = []
    for row in rows:
        line = []
        for label, path in row:
            if not path.exists():
                continue
            img = Image.open(path).convert("RGB")
            if "crop" in label:  # the same detail (the tower) of the 512 and 2048 px results
                w, h = img.size
                img = img.crop((int(w * 0.56), int(h * 0.12), int(w * 0.77), int(h * 0.40)))
            img = img.resize(
                (round(img.width * height / img.height), height), Image.Resampling.LANCZOS
            )
            ImageDraw.Draw(img).text(
                (6, 4), label, fill="white", stroke_width=2, stroke_fill="black"
            )
            line.append(img)
        tiles.append(line)
    width = max(sum(t.width for t in line) + pad * (len(line) - 1) for line in tiles if line)
    canvas = Image.new("RGB", (width, len(tiles) * (height + pad) - pad), "white")
    for r, line in enumerate(tiles):
        x = 0
        for img in line:
            canvas.paste(img, (x, r * (height + pad)))
            x += img.width + pad
    canvas.save(sheet, quality=85)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "gallery")
    ap.add_argument("--only", nargs="*", choices=sorted(RENDERS), default=None)
    ap.add_argument("--force", action="store_true", help="render again what exists")
    args = ap.parse_args()
    if not (SHARED / "content").is_dir():
        sys.exit(f"make_gallery: test images not found at {SHARED}")
    args.out.mkdir(parents=True, exist_ok=True)
    timings_path = args.out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    engine = StyleEngine(resolve_weights())
    engine.load()
    for name in args.only or RENDERS:
        if (args.out / f"{name}.jpg").exists() and not args.force:
            continue
        render(engine, name, args.out, timings)
        timings_path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    contact_sheet(args.out, REPO / "docs" / "gallery.jpg")
    print(f"wrote {REPO / 'docs' / 'gallery.jpg'}")


if __name__ == "__main__":
    main()
