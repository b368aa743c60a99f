"""End to end in real GIMP 3.0 (Debian 13 chroot) and GIMP 3.2 (Debian testing chroot) against
the real server on the host.

A GIMP batch script (e2e_batch.py) builds a two-layer image from ../shared/images (photo at an
offset inside a larger canvas, painting above it), calls python-fu-neural-style
non-interactively with tiny settings, and prints what it finds as "NST-E2E" markers.

Run:  pytest -m gimp tests/gimp        (root; builds /var/cache/nst-gimp3-root and
                                        /var/cache/nst-gimp32-root on first use, NST_GIMP_ROOT
                                        and NST_GIMP32_ROOT override; skipped loudly when it
                                        cannot run, failed instead when CI=true)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest
from gimp_harness import (
    ABANDON_AFTER_S,
    EXPORT_DIR,
    REPO,
    GimpRelease,
    GimpSession,
    RealServer,
    nst_client,
)

from tests.live_server import free_port

pytestmark = pytest.mark.gimp


def test_stylise_in_gimp(gimp: GimpSession, real_server: RealServer) -> None:
    """Success; a masked result for a selection; 16-bit precision kept; a style file instead of
    a layer; preserved colours; two styles; continuing from a result; a clean error and no new
    layer when no server answers; the token read from the file the installer recorded, and a
    wrong token's message."""
    (gimp.outside / "token").write_text(real_server.client.token)
    rc, found = gimp.run(
        "basic,selection,unreachable,deep,float,style-file,grey,preserve,two-styles,continue,"
        "badtoken",
        {"NST_E2E_URL": real_server.url, "NST_E2E_DEAD_URL": f"http://127.0.0.1:{free_port()}"},
    )
    assert rc == 0, found
    assert "end" in found, "the batch script did not run to its end"
    version = found["gimp"]["version"]
    print(f"\nGIMP end-to-end test ran in GIMP {version} ({gimp.release.debian} chroot)")
    assert version.startswith(gimp.release.version + "."), version

    basic = found["basic"]
    assert basic["status"] == "success", basic["message"]
    assert basic["layers_after"] == basic["layers_before"] + 1
    assert basic["new_layers"] == 1
    # The photo (112 px) was processed at 96 px and enlarged: the name says so.
    enlarged = f"96 px ×{max(basic['photo_size']) / 96:.1f}"
    assert basic["name"] == f"Neural Style (Starry Night) {enlarged}"
    assert basic["size"] == basic["photo_size"]
    assert basic["offsets"] == basic["photo_offsets"] == [7, 5]
    # Directly above the photo: the photo's old position now holds the new layer.
    assert basic["position"] == basic["photo_position"] - 1
    assert not basic["has_mask"]
    # The pixels changed, and towards the painting: the mean colour got closer to its.
    assert basic["diff_to_photo"] > 5.0
    assert basic["result_to_painting_colour"] < 0.9 * basic["photo_to_painting_colour"], basic
    assert basic["exported"]
    # The result layer records (version 2) its photo (for "continue"), its painting, the
    # settings and params, and the facts of the run.
    record = basic["record"]
    assert record["version"] == 2
    assert record["source_id"] == basic["photo_id"]
    assert record["source_name"] == "Photo"
    assert record["paintings"] == [{"name": "Starry Night", "layer_id": basic["style_id"]}]
    assert record["params"]["iterations"] == 20
    assert record["settings"]["quality"] == "draft" and record["settings"]["seed"] == 1
    assert (record["processing_size"], record["steps"], record["seed"]) == (96, 20, 1)
    assert record["strength"] == 50.0 and record["finished_early"] is False
    assert record["engine_version"] == real_server.client.health()["engine_version"]
    assert 0 < record["time_s"] < 240
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(gimp.outside / "side_by_side.png", EXPORT_DIR / "side_by_side.png")

    selection = found["selection"]
    assert selection["status"] == "success", selection["message"]
    assert selection["new_layers"] == 1 and selection["has_mask"]
    assert selection["mask_inside"] == 255 and selection["mask_outside"] == 0
    # The selection was the job's mask too: the layer's own pixels outside it are the photo
    # (8-bit rounding of the server's float composite: a level or two), inside they changed.
    assert selection["outside_max_diff"] <= 3, selection
    assert selection["outside_mean_diff"] < 0.5, selection
    assert selection["inside_mean_diff"] > 5.0, selection

    # Preserve colours: the picture's overall colour (mean chroma) stays the photo's, where the
    # basic run cast it toward the painting's blues (about 5.6 levels here, against 1.4 with
    # preserve on); the picture itself still changed.
    preserve = found["preserve"]
    assert preserve["status"] == "success", preserve["message"]
    assert preserve["record"]["params"]["preserve_colors"] is True
    assert preserve["diff_to_photo"] > 3.0, preserve
    assert preserve["chroma_shift"] < 2.5, preserve
    assert preserve["chroma_shift"] < 0.5 * basic["chroma_shift"], (preserve, basic)

    # Two styles blended 50/50: both named, the blend sent, and the colours moved toward the
    # second painting (The Scream's oranges) compared with the Starry-Night-only basic run.
    two = found["two-styles"]
    assert two["status"] == "success", two["message"]
    assert two["name"] == f"Neural Style (Starry Night + The Scream) {enlarged}"
    assert two["record"]["params"]["style_blend"] == [50.0, 50.0]
    assert two["result_to_scream_colour"] < basic_to_scream(found), (two, found["basic"])

    # Continue from a result: the second run (2 steps only) starts from the first result, so it
    # stays near it and far from the photo (2 steps from the photo cannot get there); the photo
    # is still its content (recorded source) and its layer sits above the first result.
    cont = found["continue"]
    assert cont["status1"] == "success" and cont["first_is_result"], cont
    assert cont["status"] == "success", cont["message"]
    assert cont["new_layers"] == 1
    assert cont["position"] == cont["first_position"] - 1
    assert cont["size"] == cont["photo_size"] and cont["offsets"] == cont["photo_offsets"]
    assert cont["record"]["source_id"] == cont["photo_id"]
    assert cont["record"]["source_name"] == "Photo"
    assert cont["first_to_photo"] > 5.0, cont
    assert cont["second_to_first"] < 0.5 * cont["second_to_photo"], cont

    # 16-bit image: sent as a 16-bit PNG; the server answers in 16 bits, so the layer keeps
    # that precision and carries no "[8-bit result]" note (the plug-in adds one otherwise).
    deep = found["deep"]
    assert deep["status"] == "success", deep["message"]
    assert deep["precision"] == "u16-non-linear"
    assert deep["name"] == f"Neural Style (Starry Night) {enlarged}"
    assert deep["fine_samples"] > 0.5, deep

    # 32-bit float: only 16 bits come back, and the layer name says so (never silent loss).
    float_run = found["float"]
    assert float_run["status"] == "success", float_run["message"]
    assert float_run["name"] == f"Neural Style (Starry Night) {enlarged} [16-bit result]"

    style_file = found["style-file"]
    assert style_file["status"] == "success", style_file["message"]
    assert style_file["name"] == f"Neural Style (style.jpg) {enlarged}"
    assert style_file["diff_to_photo"] > 5.0

    grey = found["grey"]
    assert grey["status"] == "calling-error"
    assert "RGB" in (grey["message"] or "")
    assert grey["layers_after"] == grey["layers_before"]

    if real_server.client.token:  # the server needs one: it came from the token file
        bad = found["badtoken"]
        assert bad["status"] == "execution-error"
        assert bad["layers_after"] == bad["layers_before"]
        assert "refused the plug-in's token (from the Server token setting)" in bad["message"]
        assert "install/install.sh" in bad["message"]
        assert "nst-server token --show" in bad["message"]

    unreachable = found["unreachable"]
    assert unreachable["status"] == "execution-error"
    assert unreachable["layers_after"] == unreachable["layers_before"]
    message = unreachable["message"] or ""
    assert "Cannot reach the neural style server" in message
    assert "nst-server serve" in message  # says how to start it
    assert "Traceback" not in message


def basic_to_scream(found: dict) -> float:
    """Distance of the single-style (Starry Night) result's mean colour to The Scream's."""
    return found["basic"]["result_to_scream_colour"]


def _queue_busy(server: RealServer) -> int:
    queue = server.client.health()["queue"]
    if isinstance(queue, dict):
        return int(queue.get("running", 0)) + int(queue.get("queued", 0))
    return int(queue)


def test_killed_plugin_frees_the_server(gimp: GimpSession, real_server: RealServer) -> None:
    """GIMP kills a plug-in whose user presses Cancel: the server must drop the job itself."""
    (gimp.outside / "token").write_text(real_server.client.token)
    proc = gimp.start("long", {"NST_E2E_URL": real_server.url})
    try:
        deadline = time.monotonic() + 120
        while _queue_busy(real_server) == 0:
            assert proc.poll() is None, "GIMP ended before the job started"
            assert time.monotonic() < deadline, "the long job never reached the server"
            time.sleep(0.3)
        pids = gimp.plugin_pids()
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)  # what GIMP's Cancel does to a plug-in
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    found = GimpSession.markers(out, err)
    assert proc.returncode == 0 and "end" in found
    assert found["long"]["status"] != "success"
    assert found["long"]["layers_after"] == found["long"]["layers_before"]

    killed_at = time.monotonic()
    while _queue_busy(real_server):
        assert time.monotonic() - killed_at < ABANDON_AFTER_S + 20, "the job was never dropped"
        time.sleep(0.3)
    assert "abandoned" in real_server.log.read_text()

    # The server is free: a small job goes straight through.
    started = time.monotonic()
    png = nst_client.run_job(
        real_server.client,
        nst_client.encode_png(nst_client.RawImage(64, 48, 3, 8, bytes(range(256)) * 36)),
        [nst_client.encode_png(nst_client.RawImage(64, 64, 3, 8, bytes(range(192)) * 64))],
        {"iterations": 3, "max_size": 64},
    )
    assert nst_client.decode_png(png).width == 64
    assert time.monotonic() - started < 60


def test_a_new_user_installs_then_starts_gimp(gimp_release: GimpRelease) -> None:
    """As a new user would: no GIMP profile yet, so the installer creates GIMP/3.0 (and no
    other); GIMP then finds the plug-in: 3.0 in that profile, 3.2 by copying it on its first
    start. A second install then reaches every profile that exists."""
    name = f"nst-home-{uuid.uuid4().hex[:8]}"
    home = gimp_release.root / "tmp" / name
    home.mkdir(parents=True)
    try:
        install = [str(REPO / "install" / "install_plugin.sh"), "--start-command", "/no/server"]
        environ = {"PATH": os.environ["PATH"], "HOME": str(home)}
        first = subprocess.run(
            ["bash", *install], env=environ, capture_output=True, text=True, check=True
        ).stdout
        gimp_dir = home / ".config" / "GIMP"
        assert "no GIMP 3 profile found" in first
        assert sorted(p.name for p in gimp_dir.iterdir()) == ["3.0"]

        session = GimpSession(gimp_release, f"/tmp/{name}", home)
        rc, found = session.run(
            "registered", {"HOME": f"/tmp/{name}", "GIMP3_DIRECTORY": None}, timeout=180
        )
        assert rc == 0 and found["registered"]["registered"], found
        profile = f"/tmp/{name}/.config/GIMP/{gimp_release.version}"
        assert found["gimp"]["directory"] == profile
        assert (gimp_dir / gimp_release.version / "plug-ins" / "neural_style").is_dir()

        again = subprocess.run(
            ["bash", *install], env=environ, capture_output=True, text=True, check=True
        ).stdout
        for version in sorted({"3.0", gimp_release.version}):
            assert f"installed {gimp_dir / version / 'plug-ins' / 'neural_style'}" in again
    finally:
        shutil.rmtree(home, ignore_errors=True)
