"""The Neural Style window in real GIMP 3.0 and 3.2 (GUI under Xvfb), against the real server and
engine.

GIMP opens a photo (at an offset inside a larger canvas) with the painting as a hidden layer,
then the plug-in's real window; its test hook presses the window's buttons and logs every run,
preview and end with the image's layers (gui_harness.py, nst_gimp/script.py). The artist's own
edits and Ctrl+Z / Ctrl+Y are key presses in GIMP's image window (xdotool). Photos are small
(128 px) and runs short, so one session per GIMP takes about half a minute; the bad situations
are @slow.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import pytest
from gimp_harness import HERE, GimpRelease, RealServer
from gui_harness import GuiSession, make_profile

from tests.live_server import LiveServer

pytestmark = pytest.mark.gimp

PHOTO = (128, 96)  # the photo layer's size for NST_E2E_SIZE=128 (tubingen.jpg is 1024 x 768)
OFFSET = [7, 5]  # window_batch.py puts the photo there
#: Long enough to press Keep and Cancel in the middle (about 0.1 s a step at 128 px here);
#: Adam, which never stops before its last step (L-BFGS stops once it has converged).
LONG = {"max-size": 128, "iterations": 300, "quality": "standard", "seed": 1, "optimizer": "adam"}
SHORT = {"iterations": 25}


@pytest.fixture(scope="session")
def gui_release(gimp_release: GimpRelease) -> GimpRelease:
    """The GIMP chroot with Xvfb, xdotool and ImageMagick added (idempotent)."""
    build = subprocess.run(
        [
            "bash",
            str(HERE / "build_chroot.sh"),
            "--release",
            gimp_release.debian,
            str(gimp_release.root),
        ],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NST_GIMP_XVFB": "1"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"adding Xvfb to the GIMP chroot failed:\n{build.stdout}\n{build.stderr}")
    return gimp_release


@pytest.fixture(scope="session")
def gui_profile(gui_release: GimpRelease, real_server: RealServer) -> Iterator[tuple]:
    profile = make_profile(gui_release, real_server.client.token)
    yield profile
    subprocess.run(["rm", "-rf", str(profile[0])], check=False)


def names(layers: list[dict]) -> list[str]:
    return [layer["name"] for layer in layers]


def by_label(events: list[dict]) -> dict[str, dict]:
    return {e["label"]: e for e in events if e["event"] == "state"}


def undo_steps(count: int) -> list[dict]:
    steps = []
    for i in range(1, count + 1):
        steps += [{"signal": f"undo{i}"}, {"wait_file": f"undone{i}"}, {"log": f"undo{i}"}]
    return steps


def test_window_preview_keep_undo_cancel_history_presets(
    gui_release: GimpRelease, gui_profile: tuple, real_server: RealServer
) -> None:
    """A preview layer left behind is removed at the start; the preview appears over the photo
    and changes; the artist edits GIMP meanwhile; Keep
    gives the picture of that moment; the undo history holds the artist's three steps and one
    for the result; Cancel leaves layers and undo (redo too) as they were; a selection masks
    the preview as the result; history restores and reruns; the queue; presets; closing with a
    run pending and letting it finish; a clean image stays clean unless a result lands."""
    steps = [
        {"log": "opened"},
        {"set": LONG},
        {"run": True},
        {"wait_previews": 1},
        # The artist: duplicates the photo layer, inverts the selection (all), and again (none).
        # (Select > Invert, not Ctrl+A: the Layers list takes Ctrl+A when it has the focus.)
        {"signal": "edit"},
        {"wait_file": "edited"},
        {"log": "edited"},
        {"wait_previews": 3},
        {"log": "before-keep"},
        {"keep": True},
        {"wait_finished": 1},
        {"log": "kept"},
        *undo_steps(5),
        {"run": True},
        {"wait_previews": 2},
        {"log": "cancel-mid"},
        {"cancel": True},
        {"wait_finished": 2},
        {"log": "cancelled"},
        {"signal": "redo"},
        {"wait_file": "redone"},
        {"log": "redo"},
        # A selection: the left half of the photo; the preview and the result are masked.
        {"select": [0, 0, PHOTO[0] // 2, PHOTO[1]]},
        {"set": {"strength": 80.0}},
        {"run": True},
        {"wait_previews": 2},
        {"log": "masked-preview"},
        {"before_after": True},
        {"log": "before"},
        {"before_after": False},
        {"log": "after"},
        {"keep": True},
        {"wait_finished": 3},
        {"log": "masked-kept"},
        # History: selecting the result restores its settings; Again reruns with a new seed,
        # and a second Run waits behind it in the queue.
        {"set": {"strength": 20.0}},
        {"select_history": 0},
        {"log": "restored"},
        {"again": True},
        {"run": True},
        {"wait_previews": 1, "of": -2},  # Again's run; the Run after it waits
        {"log": "queue"},
        {"cancel": "last"},
        {"keep": "first"},
        {"wait_finished": 5},
        {"log": "again"},
        {"preset_save": "Test look"},
        {"log": "preset-saved"},
        {"preset_load": "Quick draft"},
        {"log": "preset-loaded"},
        {"preset_delete": "Test look"},
        {"log": "preset-deleted"},
        # Before Run: the processing size, the enlargement and what "Restore detail" costs.
        {"set": {"max-size": 64, "quality": "standard"}},
        {"wait_estimate": "enlarged ×2.0"},
        {"log": "estimate"},
        # A saved (clean) image: previews and a cancel leave it clean; a kept result (below) not.
        {"mark_clean": True},
        {"set": LONG},
        {"run": True},
        {"wait_previews": 2},
        {"log": "clean-preview"},
        {"cancel": True},
        {"wait_finished": 6},
        {"log": "clean-cancelled"},
        # Closing with a run pending: "Let them finish" - it lands after the window is gone.
        {"set": {**SHORT, "quality": "standard"}},
        {"run": True},
        {"wait_previews": 1},
        {"close": "finish"},
    ]
    started = time.monotonic()
    session = GuiSession.start(
        gui_release, gui_profile, real_server.url, {"Photo": steps}, stale_preview=True
    )
    try:
        session.open_window()
        session.wait_event("signal", name="edit")
        session.keys("shift+ctrl+d", "ctrl+i", "ctrl+i")
        session.touch("edited")
        titles = {}
        for i in range(1, 6):
            session.wait_event("signal", name=f"undo{i}", timeout=60)
            session.keys("ctrl+z")
            titles[i] = session.title(session.image_window())
            session.touch(f"undone{i}")
        session.wait_event("signal", name="redo", timeout=60)
        session.keys("ctrl+y")
        session.touch("redone")
        closed = session.wait_event("closed", timeout=120)
        events = session.events()
        markers = session.batch_markers()
    finally:
        session.stop()
    print(f"\nwindow test in GIMP {markers['gimp']['version']}: {time.monotonic() - started:.0f} s")
    assert markers["gimp"]["version"].startswith(gui_release.version + ".")
    states = by_label(events)
    previews = [e for e in events if e["event"] == "preview"]
    ends = {e["id"]: e for e in events if e["event"] == "finished"}

    # A preview layer a killed plug-in left behind was removed when the window opened.
    assert names(states["opened"]["layers"]) == ["Starry Night", "Photo"]

    # The preview: the photo's size and offsets, right above it, the artist's selection kept.
    first = previews[0]
    assert first["layer"]["name"] == "Neural Style preview"
    assert first["layer"]["size"] == list(PHOTO) and first["layer"]["offsets"] == OFFSET
    assert first["layer"]["position"] == first["photo_position"] - 1
    assert first["selected"] == ["Photo"]
    # It changes as the run goes: each picture further from the photo.
    run1 = [p["diff_to_photo"] for p in previews if p["id"] == 1]
    assert len(run1) >= 3 and run1[0] < run1[-1], run1
    assert len(set(run1)) == len(run1), run1
    assert sum(layer["preview"] for layer in states["before-keep"]["layers"]) == 1

    # Keep: a result from the picture of that moment - not the photo, not the whole run.
    assert ends[1]["state"] == "done"
    kept = states["kept"]["layers"]
    # Right above the photo (the artist's duplicate stays above it).
    assert names(kept) == ["Starry Night", "Photo copy", "Neural Style (Starry Night)", "Photo"]
    result = kept[2]
    assert not any(layer["preview"] for layer in kept)
    assert result["record"]["finished_early"] is True
    assert result["record"]["steps"] < LONG["iterations"]
    assert result["diff_to_photo"] > 5
    assert result["diff_to_kept_preview"]["1"] < 0.5 * result["diff_to_photo"], result

    # Undo: the result (one step), then the artist's three steps, then nothing more - the
    # preview's many updates left no steps.
    assert names(states["edited"]["layers"])[:2] == ["Starry Night", "Photo copy"]
    assert states["edited"]["selection"] is False
    assert names(states["undo1"]["layers"]) == ["Starry Night", "Photo copy", "Photo"]
    assert states["undo2"]["selection"] is True  # the second "invert" undone
    assert states["undo3"]["selection"] is False  # the first "invert" undone
    assert names(states["undo3"]["layers"]) == ["Starry Night", "Photo copy", "Photo"]
    assert names(states["undo4"]["layers"]) == ["Starry Night", "Photo"]
    assert names(states["undo5"]["layers"]) == ["Starry Night", "Photo"]
    assert "3 layers" in titles[3] and "2 layers" in titles[4] and "2 layers" in titles[5]

    # Cancel: the preview was there; after it the layers are as before, and the redo history
    # too (Ctrl+Y brings the artist's duplicate back).
    assert any(layer["preview"] for layer in states["cancel-mid"]["layers"])
    assert ends[2]["state"] == "cancelled"
    assert names(states["cancelled"]["layers"]) == ["Starry Night", "Photo"]
    assert names(states["redo"]["layers"]) == ["Starry Night", "Photo copy", "Photo"]

    # A selection: the preview has it as its mask, as the result does.
    masked = [p for p in previews if p["id"] == 3]
    assert masked and all(p["mask"] for p in masked), masked
    assert masked[-1]["mask"]["left"] > 0.9 and masked[-1]["mask"]["right"] < 0.1
    # Before/after: the preview hidden shows the photo, and back.
    toggled = [
        [layer["visible"] for layer in states[label]["layers"] if layer["preview"]]
        for label in ("before", "after")
    ]
    assert toggled == [[False], [True]], toggled
    masked_result = states["masked-kept"]["layers"][2]
    assert masked_result["has_mask"] and masked_result["record"]["strength"] == 80.0

    # History: selecting restores the settings; Again reruns them with a new seed.
    assert states["restored"]["settings"]["strength"] == 80.0
    queue = states["queue"]["runs"]
    running = [r for r in queue if r["state"] == "running"]
    waiting = [r for r in queue if r["state"] == "waiting"]
    assert len(running) == 1 and running[0]["keep"] and running[0]["cancel"], queue
    assert len(waiting) == 1 and waiting[0]["cancel"] and not waiting[0]["keep"], queue
    assert "waiting" in waiting[0]["text"], queue
    assert ends[4]["state"] == "done" and ends[5]["state"] == "cancelled"
    again = [layer for layer in states["again"]["layers"] if layer.get("record")]
    assert len(again) == 2
    assert again[0]["record"]["seed"] != LONG["seed"]  # the newest on top, where it shows
    seeds = {layer["record"]["seed"] for layer in again}
    assert len(seeds) == 2 and all(layer["record"]["strength"] == 80.0 for layer in again)
    assert len(states["again"]["history"]) == 2

    # Presets: saved, loaded (a built-in one), deleted.
    assert "Test look" in states["preset-saved"]["presets"]
    assert states["preset-loaded"]["settings"]["quality"] == "draft"
    assert "Test look" not in states["preset-deleted"]["presets"]

    # The estimate under the settings followed them: the layer's own size at 128 px, then
    # enlarged twice at 64 px, with what the detail pass would cost.
    estimates = [e["text"] for e in events if e["event"] == "estimate"]
    assert "Processed at the layer's own size, 128 px." in estimates, estimates
    assert re.search(
        r"Processed at 64 px, then enlarged ×2\.0 .* about \d+\.\d× as long",
        states["estimate"]["estimate"],
    ), states["estimate"]

    # A clean image stays clean through previews and a cancel (closing it asks nothing), the
    # preview was there; the result that landed last made it dirty.
    assert states["clean-preview"]["dirty"] is False
    assert any(layer["preview"] for layer in states["clean-preview"]["layers"])
    assert states["clean-cancelled"]["dirty"] is False and ends[6]["state"] == "cancelled"
    assert closed["dirty"] is True

    # Closed with a run pending, answered "let them finish": it landed after the window went.
    final = closed["layers"]
    assert final[-1] == "Photo" and "Neural Style preview" not in final, final
    assert sum(name.startswith("Neural Style (") for name in final) == 3, final


@pytest.fixture
def own_server(tmp_path) -> Iterator[LiveServer]:
    """A server of the test's own (it is stopped in the middle), with the real engine."""
    server = LiveServer(tmp_path / "server", abandon_after_s=None).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_server_stopping_mid_run(
    gui_release: GimpRelease, gui_profile: tuple, own_server: LiveServer
) -> None:
    """The server stops in the middle of a run: a readable message in the window, the preview
    gone, the layers as before; the window stays for the next try."""
    profile_token = gui_profile[0] / "token"
    real_token = profile_token.read_text()
    profile_token.write_text(own_server.token)
    steps = [
        {"set": LONG},
        {"run": True},
        {"wait_previews": 2},
        {"log": "mid"},
        {"signal": "stop-server"},
        {"wait_finished": 1},
        {"log": "after"},
        {"close": "cancel"},
    ]
    session = GuiSession.start(gui_release, gui_profile, own_server.url, {"Photo": steps})
    try:
        session.open_window()
        session.wait_event("signal", name="stop-server")
        own_server.kill9()
        closed = session.wait_event("closed", timeout=120)
        events = session.events()
    finally:
        session.stop()
        profile_token.write_text(real_token)
    states = by_label(events)
    end = next(e for e in events if e["event"] == "finished")
    assert any(layer["preview"] for layer in states["mid"]["layers"])
    assert end["state"] == "failed"
    assert "stopped or restarted" in end["error"], end
    assert "stopped or restarted" in states["after"]["message"]
    assert names(states["after"]["layers"]) == ["Starry Night", "Photo"]
    assert closed["layers"] == ["Starry Night", "Photo"]


@pytest.mark.slow
def test_style_layer_deleted_while_running(
    gui_release: GimpRelease, gui_profile: tuple, real_server: RealServer
) -> None:
    """The painting's layer is deleted during a run: the run goes on (its pixels were read at
    Run) and lands; the next Run says the style layer is gone instead of failing."""
    steps = [
        {"set": {**LONG, "iterations": 60}},
        {"run": True},
        {"wait_previews": 2},
        {"delete_layer": "Starry Night"},
        {"wait_finished": 1},
        {"log": "landed"},
        {"run": True},
        {"log": "refused"},
        {"close": "cancel"},
    ]
    session = GuiSession.start(gui_release, gui_profile, real_server.url, {"Photo": steps})
    try:
        session.open_window()
        closed = session.wait_event("closed", timeout=120)
        events = session.events()
    finally:
        session.stop()
    states = by_label(events)
    end = next(e for e in events if e["event"] == "finished")
    assert end["state"] == "done"
    assert names(states["landed"]["layers"]) == ["Neural Style (Starry Night)", "Photo"]
    assert "style layer was deleted" in states["refused"]["message"]
    assert sum(e["event"] == "run" for e in events) == 1  # the second Run queued nothing
    assert closed["layers"] == ["Neural Style (Starry Night)", "Photo"]


@pytest.mark.slow
def test_image_closed_while_running(
    gui_release: GimpRelease, gui_profile: tuple, real_server: RealServer
) -> None:
    """The artist closes the image during a run: GIMP does not ask to save (the preview changed
    nothing of the artist's), its job is cancelled on the server, the window goes with a
    message, nothing is left running."""
    log = real_server.log
    cancelled_before = log.read_text().count("cancelled by the client (while running)")
    steps = [{"set": LONG}, {"run": True}, {"wait_previews": 2}, {"signal": "close-image"}]
    session = GuiSession.start(gui_release, gui_profile, real_server.url, {"Photo": steps})
    try:
        session.open_window()
        session.wait_event("signal", name="close-image")
        # The preview left the image as it was (unchanged), so GIMP closes it without asking
        # whether to discard changes: a question would hold the image open and time this out.
        session.keys("ctrl+w")
        closed = session.wait_event("closed", timeout=60)
        message = session.wait_event("message", timeout=10)
    finally:
        session.stop()
    assert closed["image_closed"] is True
    assert message["text"] == "Neural Style: the image was closed, so its run was cancelled."
    deadline = time.monotonic() + 20
    while log.read_text().count("cancelled by the client (while running)") == cancelled_before:
        assert time.monotonic() < deadline, "the job was not cancelled on the server"
        time.sleep(0.2)


@pytest.mark.slow
def test_two_images_each_with_its_window(
    gui_release: GimpRelease, gui_profile: tuple, real_server: RealServer
) -> None:
    """Two images, a window each (the second opened from GIMP's own action search, while the
    first window is open): each run's preview and result go to its own image."""
    first = [
        {"set": {**LONG, "iterations": 40}},
        {"signal": "open-second"},
        {"wait_file": "second-open"},
        {"run": True},
        {"wait_finished": 1},
        {"log": "done"},
        {"wait_file": "second-done"},
        {"close": "cancel"},
    ]
    second = [
        {"set": {**LONG, "iterations": 40, "style-layer": "Starry Night"}},
        {"run": True},
        {"wait_finished": 1},
        {"log": "done"},
        {"close": "cancel"},
    ]
    session = GuiSession.start(
        gui_release, gui_profile, real_server.url, {"Photo": first, "Photo 2": second}, images=2
    )
    try:
        session.open_window(image=1, photo="Photo")
        session.wait_event("signal", name="open-second")
        session.open_window(image=2, photo="Photo 2")  # while the first window is open
        session.touch("second-open")
        session.wait_event("closed", photo="Photo 2", timeout=120)
        session.touch("second-done")
        session.wait_event("closed", photo="Photo", timeout=120)
        one, two = session.events("Photo"), session.events("Photo 2")
    finally:
        session.stop()
    for events, photo in ((one, "Photo"), (two, "Photo 2")):
        previews = [e for e in events if e["event"] == "preview"]
        assert previews, photo
        done = by_label(events)["done"]["layers"]
        assert names(done) == ["Starry Night", "Neural Style (Starry Night)", photo], done
        closed = next(e for e in events if e["event"] == "closed")
        assert closed["layers"] == ["Starry Night", "Neural Style (Starry Night)", photo]
