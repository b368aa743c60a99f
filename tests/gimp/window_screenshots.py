"""README pictures of the window, from real GIMP under Xvfb (not a test; by hand, root):

    /work/main/.venv/bin/python tests/gimp/window_screenshots.py [OUT_DIR] [--gimp 3.0]

A 640 px photo with the painting as a layer; two runs at Draft quality are kept, so the history
has entries; a second run at Standard quality is photographed in the middle: GIMP's window with the
preview on the canvas beside the Neural Style window (its run, progress and history). Every
preview of that run is exported as it landed on the canvas; the early ones and every 5th after
become an animated WebP (ImageMagick in the chroot). Writes window.png (and a JPEG of it),
preview.webp and the frames to OUT_DIR (default /tmp/nst-gimp-e2e/window); look at them before
they go into docs/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]

from gimp_harness import GIMP_RELEASES  # noqa: E402
from gui_harness import GuiSession, make_profile  # noqa: E402

from tests.live_server import LiveServer  # noqa: E402

SCREEN = (1940, 1050)
GIMP_WIDTH = 1150
SHOT_AFTER_PREVIEWS = 14
EARLY_FRAMES = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="/tmp/nst-gimp-e2e/window")
    parser.add_argument("--gimp", default="3.0")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    release = next(r for r in GIMP_RELEASES if r.version == args.gimp)
    subprocess.run(
        ["bash", str(HERE / "build_chroot.sh"), "--release", release.debian, str(release.root)],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NST_GIMP_XVFB": "1"},
        check=True,
    )
    work = Path(tempfile.mkdtemp(prefix="nst-shots-"))
    server = LiveServer(work / "server", abandon_after_s=None).start()
    profile = make_profile(release, server.token)
    steps = [
        {"set": {"quality": "draft", "iterations": 0, "max-size": 0, "seed": 3}},
        {"run": True},
        {"wait_finished": 1},
        {"set": {"seed": 4, "strength": 80.0}},
        {"run": True},
        {"wait_finished": 2},
        {"set": {"quality": "standard", "seed": 7, "strength": 60.0}},
        {"export_previews": "frames"},
        {"run": True},
        {"wait_previews": SHOT_AFTER_PREVIEWS},
        {"signal": "shoot"},
        {"wait_file": "shot"},
        {"wait_finished": 3},
        {"close": "cancel"},
    ]
    session = GuiSession.start(
        release, profile, server.url, {"Photo": steps}, size=640, screen=SCREEN
    )
    try:
        session.open_window()
        session.place(session.image_window(), 0, 0, GIMP_WIDTH, SCREEN[1])
        window = session.window("^Neural Style$")
        session.place(window, GIMP_WIDTH + 10, 0)
        width = int(
            session.x("xdotool", "getwindowgeometry", window).split("Geometry: ")[1].split("x")[0]
        )
        session.place(window, GIMP_WIDTH + 10, 0, width, SCREEN[1])  # the history gets the room
        session.x("xdotool", "mousemove", str(SCREEN[0] - 5), str(SCREEN[1] - 5))  # no tooltips
        session.wait_event("signal", name="shoot", timeout=900)
        # Right after a preview landed, before the next one (a second later) is being scaled.
        time.sleep(0.4)
        session.screenshot(out / "window.png")
        session.x(
            "convert",
            f"{session.inside}/shot.png",
            "-quality",
            "88",
            f"{session.inside}/window.jpg",
        )
        shutil.copy(session.outside / "window.jpg", out / "window.jpg")
        session.touch("shot")
        session.wait_event("closed", timeout=900)
        frames = session.outside / "frames"
        shutil.rmtree(out / "frames", ignore_errors=True)
        shutil.copytree(frames, out / "frames")
        # The picture changes most at first: every early frame, then every 5th, the last one
        # held; 480 px wide, lossy WebP keeps it small.
        names = sorted(p.name for p in frames.glob("frame-*.png"))
        names = names[:EARLY_FRAMES] + names[EARLY_FRAMES:-1:5] + names[-1:]
        session.x(
            "convert",
            "-delay",
            "35",
            "-loop",
            "0",
            *(f"{session.inside}/frames/{name}" for name in names[:-1]),
            "-delay",
            "250",
            f"{session.inside}/frames/{names[-1]}",
            "-resize",
            "440x",
            "-quality",
            "60",
            f"{session.inside}/preview.webp",
        )
        shutil.copy(session.outside / "preview.webp", out / "preview.webp")
        print(f"wrote {out}: window.png, window.jpg, preview.webp ({len(names)} frames)")
    finally:
        session.stop()
        shutil.rmtree(profile[0], ignore_errors=True)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
