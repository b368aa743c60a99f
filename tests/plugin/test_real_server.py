"""nst_client against the REAL server (real VGG19 weights, tiny sizes), on the host.

Covers the plug-in's start-up path for real: nothing listens on the port, so ensure_server runs
the start command (as the installer records it), waits for /v1/health, and the job then goes
through submit -> poll -> result exactly as in GIMP.
"""

from __future__ import annotations

import math
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "gimp_plugin" / "neural_style"))

import nst_client  # noqa: E402
from nst_client import RawImage, options  # noqa: E402

from tests.live_server import free_port, serve_command, session_token  # noqa: E402


@pytest.fixture(scope="module")
def started_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nst_client.NstClient]:
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    client = nst_client.NstClient(f"http://127.0.0.1:{port}", session_token())
    command = serve_command(port, log)
    health, process = nst_client.ensure_server(client, command, timeout=180)
    assert process is not None, "something already listened on a fresh port"
    assert health["backbone"] and health["weights"]
    try:
        yield client
    finally:
        process.terminate()
        try:
            process.wait(30)
        except Exception:
            process.kill()
            process.wait(10)


def _photo(width: int, height: int, bit_depth: int = 8) -> RawImage:
    top = 255 if bit_depth == 8 else 65535
    samples = []
    for y in range(height):
        for x in range(width):
            disc = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (height * 0.3) ** 2
            samples += [
                round(top * x / width),
                round(top * y / height),
                top if disc else round(top * 0.2),
            ]
    code = "B" if bit_depth == 8 else "H"
    return RawImage(width, height, 3, bit_depth, struct.pack(f"={len(samples)}{code}", *samples))


def _stripes(size: int) -> RawImage:
    data = bytearray()
    for y in range(size):
        for x in range(size):
            on = math.sin((x + y) * 0.8) > 0
            data += bytes((230, 200, 30) if on else (20, 40, 160))
    return RawImage(size, size, 3, 8, bytes(data))


def test_job_through_the_started_real_server(started_server: nst_client.NstClient) -> None:
    client = started_server
    schema = client.params()
    assert {"iterations", "max_size", "style_weight"} <= set(schema["params"])
    params = nst_client.build_job_params(
        schema, {"quality": "draft", "iterations": 6, "max-size": 64}
    )
    content = _photo(80, 60)
    events: list[str] = []
    png = nst_client.run_job(
        client,
        nst_client.encode_png(content),
        [nst_client.encode_png(_stripes(64))],
        params,
        progress=lambda fraction, text: events.append(text),
    )
    result = nst_client.decode_png(png)
    assert (result.width, result.height) == (80, 60)
    assert result.channels in (3, 4)
    step = 4 if result.channels == 4 else 3
    rgb = bytes(b for i, b in enumerate(result.pixels) if i % step < 3)
    diff = sum(abs(a - b) for a, b in zip(rgb, content.pixels, strict=True)) / len(rgb)
    assert diff > 2.0, "the result is the photo unchanged"
    assert any(text.startswith("Neural style: step ") for text in events), events


def test_16bit_upload_is_accepted(started_server: nst_client.NstClient) -> None:
    content = _photo(64, 48, bit_depth=16)
    png = nst_client.run_job(
        started_server,
        nst_client.encode_png(content),
        [nst_client.encode_png(_stripes(64))],
        {"iterations": 2, "max_size": 64},
    )
    result = nst_client.decode_png(png)
    assert (result.width, result.height) == (64, 48)


def test_bad_params_give_a_readable_message(started_server: nst_client.NstClient) -> None:
    with pytest.raises(nst_client.ServerError) as info:
        started_server.submit(
            nst_client.encode_png(_photo(20, 20)),
            [nst_client.encode_png(_stripes(20))],
            {"iterations": 0},
        )
    assert info.value.status == 400
    assert "iterations" in str(info.value)
    assert "Traceback" not in str(info.value)


def test_polls_are_long_polls_that_hear_each_step(started_server: nst_client.NstClient) -> None:
    """The client waits on the server instead of sleeping between polls, so it hears of steps
    (and the end) as they happen; a fallback to plain polling would sleep ``poll_interval``."""
    client = started_server
    asked: list[int | None] = []
    real_status = client.status

    def status(job_id: str, **long_poll):
        asked.append(long_poll.get("since"))
        return real_status(job_id, **long_poll)

    client.status = status  # type: ignore[method-assign]
    sleeps: list[float] = []
    steps: list[str] = []
    try:
        nst_client.run_job(
            client,
            nst_client.encode_png(_photo(128, 96)),
            [nst_client.encode_png(_stripes(64))],
            {"iterations": 30, "max_size": 128},
            progress=lambda fraction, text: steps.append(text),
            poll_interval=5.0,
            sleep=sleeps.append,
        )
    finally:
        del client.status
    assert asked[0] is None and all(isinstance(v, int) for v in asked[1:]), asked
    assert asked[1:] == sorted(asked[1:]) and len(asked) >= 3
    assert max(sleeps, default=0.0) == 0.0, sleeps  # never the 5 s plain-poll sleep
    seen = {text for text in steps if text.startswith("Neural style: step ")}
    assert len(seen) >= 4, steps  # 30 steps (2-3 s): a plain 5 s poll would see one


def test_the_options_table_fits_what_the_server_says(started_server: nst_client.NstClient):
    """Every option that sets a server parameter: its range, choices and default fit the real
    server's ``GET /v1/params`` (the PDB arguments are declared without a server to ask)."""
    described = started_server.params()["params"]
    for option in options.OPTIONS:
        if option.field is None:
            continue
        server = described[option.field]
        if option.kind in (options.INT, options.DOUBLE):
            # The plug-in's "auto" value (0: from the quality) is never sent as it is.
            low = option.minimum if option.auto is None else option.minimum + 1
            assert server["minimum"] <= low, option.name
            assert option.maximum <= server["maximum"], option.name
        if option.kind == options.CHOICE:
            assert set(option.choice_nicks()) <= set(server["choices"]), option.name
        if option.auto is None and server["type"] != "array":
            assert option.default == server["default"], option.name


def test_the_window_estimate_from_the_real_servers_plan(started_server: nst_client.NstClient):
    """Before Run the window says the processing size, the enlargement and what "Restore
    detail" costs; the controller asks the server's /v1/plan off the main loop."""
    events: list[nst_client.Event] = []
    arrived = threading.Event()

    def notify(event: nst_client.Event) -> None:
        if event.kind == "estimate":
            events.append(event)
            arrived.set()

    settings = {"max-size": 512, "quality": "standard"}
    controller = nst_client.StudioController(started_server, notify=notify)
    try:
        controller.estimate((2048, 1536), settings)
        assert arrived.wait(30)
    finally:
        controller.close(cancel_pending=True)
    text = events[-1].message
    params = nst_client.build_job_params(started_server.params(), settings)
    plan = started_server.plan((2048, 1536), {**params, "upscale": "detail"})
    assert plan["processing_size"] == [512, 384] and plan["enlargement"] == 4.0
    assert plan["work_vs_plain"] > 2  # 2048 x 1536 in tiles against 150 steps at 512 px
    assert text == nst_client.plan_text(plan)
    assert "Processed at 512 px, then enlarged ×4.0" in text
    assert f"about {plan['work_vs_plain']:.1f}× as long" in text
    # A photo no larger than the processing size: nothing is enlarged.
    own = started_server.plan((300, 200), {"max_size": 512, "upscale": "detail"})
    assert nst_client.plan_text(own) == "Processed at the layer's own size, 300 px."
    with pytest.raises(nst_client.ServerError) as info:
        started_server.plan((12000, 40), {"max_size": 64})
    assert info.value.status == 400 and "thin" in str(info.value)
