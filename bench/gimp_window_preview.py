"""Time to the first preview on the canvas, and the refresh interval, in real GIMP at default
settings: the window's Run pressed on a 1024 x 768 photo (quality Standard: the server's CPU
defaults, 384 px and 150 steps), the real server and engine on this machine.

    /work/main/.venv/bin/python bench/gimp_window_preview.py [--gimp 3.0,3.2] [--runs 4]
                                                             [--previews 12]

Root only (GIMP runs in the chroots tests/gimp/build_chroot.sh builds, under Xvfb). Each GIMP
gets one session; in it the window's Run is pressed ``--runs`` times, each run cancelled after
``--previews`` previews; the GIMP versions and the same job sent without GIMP (the plug-in's
client on the host, long polls: the server's own time to its first preview) alternate run by
run. The clock is the window's own (gimp_plugin/neural_style/
nst_gimp/script.py logs the press of Run and each preview as it lands on the canvas). Prints
one line per run and the medians.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "gimp")]

from gimp_harness import GIMP_RELEASES, SHARED_IMAGES  # noqa: E402
from gui_harness import GuiSession, make_profile  # noqa: E402

from tests.live_server import LiveServer  # noqa: E402

DEFAULTS = {"quality": "standard", "iterations": 0, "max-size": 0, "seed": 0, "strength": 50.0}


def run_steps(run: int, previews: int) -> list[dict]:
    return [
        {"signal": f"go{run}"},
        {"wait_file": f"go{run}"},
        {"run": True},
        {"wait_previews": previews},
        {"cancel": True},
        {"wait_finished": run},
        {"signal": f"done{run}"},
    ]


def timings(events: list[dict], run: int) -> tuple[float, list[float]]:
    """(seconds from pressing Run to the first preview, intervals between previews)."""
    presses = [e["t"] for e in events if e["event"] == "press" and e["what"] == "run"]
    runs = [e["id"] for e in events if e["event"] == "run"]
    pressed, run_id = presses[run - 1], runs[run - 1]
    shown = [e["t"] for e in events if e["event"] == "preview" and e["id"] == run_id]
    return shown[0] - pressed, [b - a for a, b in zip(shown, shown[1:], strict=False)]


def png_of(path: Path) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def direct(client, content: bytes, style: bytes) -> tuple[float, float]:
    """The same job without GIMP: (seconds from submitting to the server's first preview,
    to having its PNG), with the plug-in's client and long polls; then cancelled."""
    started = time.perf_counter()
    job_id = client.submit(content, [style], {})
    version = None
    while True:
        status = client.status(job_id, since=version, wait=5.0)
        version = status.get("version")
        if status.get("preview_step") is not None:
            break
    announced = time.perf_counter() - started
    client.preview(job_id, size=4096)
    fetched = time.perf_counter() - started
    client.cancel(job_id)
    while client.status(job_id)["state"] not in ("cancelled", "done", "failed"):
        time.sleep(0.1)
    return announced, fetched


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gimp", default="3.0,3.2", help="GIMP versions, comma-separated")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--previews", type=int, default=12)
    args = parser.parse_args()
    releases = [r for r in GIMP_RELEASES if r.version in args.gimp.split(",")]
    work = Path(tempfile.mkdtemp(prefix="nst-bench-window-"))
    server = LiveServer(work / "server", abandon_after_s=None).start()
    sessions, profiles = {}, []
    try:
        for release in releases:
            profile = make_profile(release, server.token)
            profiles.append(profile)
            steps = [{"set": DEFAULTS}]
            for run in range(1, args.runs + 1):
                steps += run_steps(run, args.previews)
            steps.append({"close": "cancel"})
            session = GuiSession.start(release, profile, server.url, {"Photo": steps}, size=0)
            sessions[release.version] = session
            session.open_window()
        results: dict[str, list[tuple[float, list[float]]]] = {v: [] for v in sessions}
        client = server.plugin_client()
        content = png_of(SHARED_IMAGES / "content" / "tubingen.jpg")
        style = png_of(SHARED_IMAGES / "style" / "starry_night.jpg")
        without_gimp = []
        for run in range(1, args.runs + 1):
            without_gimp.append(direct(client, content, style))
            print(
                f"no GIMP run {run}: the server's first preview {without_gimp[-1][0]:.2f} s after "
                f"submitting, its PNG at {without_gimp[-1][1]:.2f} s",
                flush=True,
            )
            for version, session in sessions.items():  # one version's run, then the other's
                session.touch(f"go{run}")
                session.wait_event("signal", name=f"done{run}", timeout=600)
                first, intervals = timings(session.events(), run)
                results[version].append((first, intervals))
                print(
                    f"GIMP {version} run {run}: first preview {first:.2f} s after Run; "
                    f"refresh median {statistics.median(intervals):.2f} s, "
                    f"max {max(intervals):.2f} s ({len(intervals) + 1} previews)",
                    flush=True,
                )
        announced = [a for a, _ in without_gimp]
        print(
            f"no GIMP: the server's first preview median {statistics.median(announced):.2f} s "
            f"after submitting (runs: {', '.join(f'{a:.2f}' for a in announced)})"
        )
        for version, rows in results.items():
            firsts = [first for first, _ in rows]
            intervals = [gap for _, gaps in rows for gap in gaps]
            print(
                f"GIMP {version}: first preview median {statistics.median(firsts):.2f} s "
                f"(runs: {', '.join(f'{f:.2f}' for f in firsts)}); refresh interval median "
                f"{statistics.median(intervals):.2f} s, 90th percentile "
                f"{statistics.quantiles(intervals, n=10)[-1]:.2f} s, max {max(intervals):.2f} s"
            )
    finally:
        for session in sessions.values():
            session.stop()
        for outside, _inside in profiles:
            shutil.rmtree(outside, ignore_errors=True)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
