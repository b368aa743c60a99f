"""Unit tests of the plug-in's GIMP-free package (gimp_plugin/neural_style/nst_client/).

Run on the host with plain Python: nst_client must import without ``gi``. The HTTP tests talk to
a small stdlib stand-in of the server (fake_server.py), one layer only; the real server is in
test_real_server.py and the GIMP end-to-end test.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "gimp_plugin" / "neural_style"))
sys.path.insert(0, str(HERE))

import fake_server  # noqa: E402
import nst_client  # noqa: E402
from nst_client import RawImage  # noqa: E402
from nst_client import png as png_codec  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fake() -> Iterator[tuple[str, fake_server.FakeState]]:
    state = fake_server.FakeState(steps=3)
    server = fake_server.serve(0, state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def gradient(width: int, height: int, channels: int, bit_depth: int) -> RawImage:
    """Every sample distinct-ish, so a byte-order or filter bug cannot hide."""
    top = 255 if bit_depth == 8 else 65535
    samples = [
        (x * 7 + y * 131 + c * 977) * 37 % (top + 1)
        for y in range(height)
        for x in range(width)
        for c in range(channels)
    ]
    code = "B" if bit_depth == 8 else "H"
    return RawImage(
        width, height, channels, bit_depth, struct.pack(f"={len(samples)}{code}", *samples)
    )


# ------------------------------------------------------------------ PNG


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_png_round_trip(channels: int, bit_depth: int) -> None:
    image = gradient(13, 7, channels, bit_depth)
    back = nst_client.decode_png(nst_client.encode_png(image))
    assert (back.width, back.height, back.channels, back.bit_depth) == (13, 7, channels, bit_depth)
    assert back.pixels == image.pixels


def test_png_16bit_is_big_endian_on_the_wire() -> None:
    # One RGB pixel (0x0102, 0x0304, 0x0506) in machine order must be stored as 01 02 03 04 05 06.
    image = RawImage(1, 1, 3, 16, struct.pack("=3H", 0x0102, 0x0304, 0x0506))
    png = nst_client.encode_png(image)
    idat_start = png.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", png[idat_start - 8 : idat_start - 4])
    raw = zlib.decompress(png[idat_start : idat_start + length])
    assert raw == b"\x00\x01\x02\x03\x04\x05\x06"


def test_png_readable_by_pillow_when_available() -> None:
    Image = pytest.importorskip("PIL.Image")  # noqa: N806 (module-like name)
    import io

    image = gradient(9, 5, 4, 8)
    with Image.open(io.BytesIO(nst_client.encode_png(image))) as img:
        assert img.mode == "RGBA" and img.size == (9, 5)
        assert img.tobytes() == image.pixels


def _filter_row(kind: int, line: bytes, prev: bytes, bpp: int) -> bytes:
    """The PNG specification's filters, written plainly as the reference for the decoder."""
    out = bytearray()
    for i, x in enumerate(line):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if kind == 0:
            pred = 0
        elif kind == 1:
            pred = a
        elif kind == 2:
            pred = b
        elif kind == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out.append((x - pred) & 0xFF)
    return bytes(out)


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_decoder_every_filter_type(kind: int, bit_depth: int) -> None:
    image = gradient(11, 6, 4, bit_depth)
    big_endian = png_codec._swap16(image.pixels) if bit_depth == 16 else image.pixels
    stride, bpp = image.row_bytes(), 4 * bit_depth // 8
    raw, prev = bytearray(), bytes(stride)
    for y in range(image.height):
        line = big_endian[y * stride : (y + 1) * stride]
        raw += bytes([kind]) + _filter_row(kind, line, prev, bpp)
        prev = line
    plain = nst_client.encode_png(image)
    start = plain.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", plain[start - 8 : start - 4])
    idat = zlib.compress(bytes(raw))
    png = (
        plain[: start - 8]
        + struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
        + plain[start + length + 4 :]
    )
    assert nst_client.decode_png(png).pixels == image.pixels


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_decoder_handles_pillow_filters(mode: str) -> None:
    """Pillow (the server's encoder) picks Sub/Up/Average/Paeth per row: decode all of them."""
    Image = pytest.importorskip("PIL.Image")  # noqa: N806
    import io
    import random

    rng = random.Random(4)
    width, height = 31, 23
    channels = len(mode)
    # Smooth content plus noise: adaptive filtering then uses a mix of filter types.
    data = bytes(
        (x * 3 + y * 5 + c * 40 + rng.randrange(12)) & 0xFF
        for y in range(height)
        for x in range(width)
        for c in range(channels)
    )
    buf = io.BytesIO()
    Image.frombytes(mode, (width, height), data).save(buf, "PNG", optimize=True)
    png = buf.getvalue()
    decoded = nst_client.decode_png(png)
    assert decoded.pixels == data
    # Make sure the test really covers more than filter 0.
    idat = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[idat - 4 : idat])
    raw = zlib.decompress(png[idat + 4 : idat + 4 + length])
    stride = width * channels + 1
    assert len({raw[i * stride] for i in range(height)}) > 1


def test_decoder_reads_16bit_from_pillow() -> None:
    Image = pytest.importorskip("PIL.Image")  # noqa: N806
    import io

    img = Image.new("I;16", (4, 3))
    values = [0, 1, 255, 256, 1000, 40000, 65535, 2, 3, 4, 5, 6]
    img.putdata(values)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    decoded = nst_client.decode_png(buf.getvalue())
    assert decoded.bit_depth == 16 and decoded.channels == 1
    assert list(struct.unpack("=12H", decoded.pixels)) == values


@pytest.mark.parametrize(
    "bad,needle",
    [
        (b"GIF89a", "not a PNG"),
        (nst_client.PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR\x00", "truncated"),
    ],
)
def test_decoder_rejects_garbage(bad: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        nst_client.decode_png(bad)


def test_decoder_rejects_truncated_image_data() -> None:
    png = nst_client.encode_png(gradient(8, 8, 3, 8))
    start = png.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", png[start - 8 : start - 4])
    short = zlib.compress(zlib.decompress(png[start : start + length])[:-10])
    broken = (
        png[: start - 8]
        + struct.pack(">I", len(short))
        + b"IDAT"
        + short
        + b"\0\0\0\0"
        + png[start + length + 4 :]
    )
    with pytest.raises(ValueError, match="truncated"):
        nst_client.decode_png(broken)


def _png_with_idat(width: int, height: int, idat: bytes) -> bytes:
    """An 8-bit RGB PNG header with arbitrary (e.g. hostile) image data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        nst_client.PNG_SIGNATURE
        + png_codec._chunk(b"IHDR", header)
        + png_codec._chunk(b"IDAT", idat)
        + png_codec._chunk(b"IEND", b"")
    )


def test_decoder_stops_a_decompression_bomb_at_the_pictures_size() -> None:
    # 64 MiB of zeros compress to ~64 KB; a 4x4 picture holds 4 * (1 + 12) = 52 bytes. Without
    # a bound, zlib.decompress would allocate all 64 MiB; with it, a few bytes more than 52.
    packer = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    bomb = b"".join(packer.compress(chunk) for _ in range(64)) + packer.flush()
    assert len(bomb) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more than a 4x4 picture holds"):
            nst_client.decode_png(_png_with_idat(4, 4, bomb))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"decoding allocated {peak} bytes"


def test_decoder_checks_the_expected_size_before_inflating() -> None:
    png = nst_client.encode_png(gradient(8, 6, 3, 8))
    assert nst_client.decode_png(png, expected_size=(8, 6)).width == 8
    with pytest.raises(ValueError, match="8x6 px, expected 80x60 px"):
        nst_client.decode_png(png, expected_size=(80, 60))


def test_decoder_refuses_absurd_dimensions() -> None:
    # A header claiming 100000 x 100000 pixels is refused before any allocation.
    with pytest.raises(ValueError, match="over the limit"):
        nst_client.decode_png(_png_with_idat(100_000, 100_000, zlib.compress(b"\0")))


# ------------------------------------------------------------------ parameters


def test_strength_mapping() -> None:
    assert nst_client.style_weight_for_strength(50, 20.0) == pytest.approx(20.0)
    assert nst_client.style_weight_for_strength(75, 20.0) == pytest.approx(200.0)
    assert nst_client.style_weight_for_strength(0, 20.0) == pytest.approx(0.2)
    assert nst_client.style_weight_for_strength(100, 20.0) == pytest.approx(2000.0)
    with pytest.raises(nst_client.NstError, match="between 0 and 100"):
        nst_client.style_weight_for_strength(101, 20.0)


def test_quality_presets_scale_the_server_defaults() -> None:
    schema = fake_server.PARAMS_SCHEMA  # CPU defaults: 150 steps at 256 px
    draft = nst_client.build_job_params(schema, {"quality": "draft"})
    standard = nst_client.build_job_params(schema, {"quality": "standard"})
    final = nst_client.build_job_params(schema, {"quality": "final"})
    assert (draft["max_size"], draft["iterations"]) == (128, 50)
    assert (standard["max_size"], standard["iterations"]) == (256, 150)
    assert (final["max_size"], final["iterations"]) == (512, 300)
    assert "style_weight" not in standard  # strength 50 = the server's own default


def test_explicit_values_override_presets_and_strength_sets_style_weight() -> None:
    settings = {
        "quality": "draft",
        "iterations": 10,
        "max-size": 96,
        "optimizer": "adam",
        "seed": 7,
        "strength": 75.0,
    }
    params = nst_client.build_job_params(fake_server.PARAMS_SCHEMA, settings)
    assert params == {
        "iterations": 10,
        "max_size": 96,
        "optimizer": "adam",
        "seed": 7,
        "style_weight": pytest.approx(200.0),  # the fake server predates `strength`
    }


def test_new_params_are_sent_only_when_not_the_servers_default() -> None:
    schema = fake_server.PARAMS_SCHEMA
    plain = nst_client.build_job_params(schema, {"preserve-colors": False, "style-scale": 1.0})
    assert not {"preserve_colors", "style_scale", "style_blend", "optimizer"} & set(plain)
    params = nst_client.build_job_params(
        schema, {"preserve-colors": True, "style-scale": 2.0, "style-blend": 30.0}, styles=2
    )
    assert params["preserve_colors"] is True
    assert params["style_scale"] == 2.0
    assert params["style_blend"] == [70.0, 30.0]
    # One style needs no blend: not sent, so any server takes it.
    one = nst_client.build_job_params(schema, {"style-blend": 30.0}, styles=1)
    assert "style_blend" not in one
    # Clamped to the server's range.
    assert nst_client.build_job_params(schema, {"style-scale": 9.0})["style_scale"] == 4.0


def test_new_params_on_an_older_server_say_what_to_do() -> None:
    old = {
        "params": {
            k: v
            for k, v in fake_server.PARAMS_SCHEMA["params"].items()
            if k not in ("preserve_colors", "style_scale", "style_blend")
        }
    }
    assert "preserve_colors" not in nst_client.build_job_params(old)  # defaults still work
    for settings, styles in (
        ({"preserve-colors": True}, 1),
        ({"style-scale": 2.0}, 1),
        ({"style-blend": 50.0}, 2),
        ({"style-loss": "sliced"}, 1),
        ({"upscale": "detail"}, 1),
    ):
        with pytest.raises(nst_client.ServerTooOld, match="does not support.*update it"):
            nst_client.build_job_params(old, settings, styles=styles)


def test_blend_for_share() -> None:
    assert nst_client.blend_for_share(30) == [70.0, 30.0]
    with pytest.raises(nst_client.NstError, match="between 0 and 100"):
        nst_client.blend_for_share(120)


@pytest.mark.parametrize(
    ("share", "use_file", "has_second", "expected"),
    [
        (0.0, False, True, ["style-layer"]),  # share 0: one style only
        (0.0, True, False, ["style-file"]),
        (40.0, False, True, ["style-layer", "style-layer-2"]),
        (40.0, True, True, ["style-file", "style-layer-2"]),
        (100.0, False, True, ["style-layer-2"]),  # the first would weigh nothing
        (100.0, False, False, ["style-layer"]),  # no second layer: the first, whatever share
    ],
)
def test_styles_to_send(share, use_file, has_second, expected) -> None:
    assert nst_client.styles_to_send(share, use_file, has_second) == expected


def test_unknown_quality_is_an_error() -> None:
    with pytest.raises(nst_client.NstError, match="quality"):
        nst_client.build_job_params(fake_server.PARAMS_SCHEMA, {"quality": "ultra"})


# ------------------------------------------------------------------ HTTP pieces


def test_multipart_body_parses_back() -> None:
    png = nst_client.encode_png(gradient(4, 4, 3, 8))
    body, ctype = nst_client.build_multipart(
        [
            ("content", "content.png", "image/png", png),
            ("style", "s0.png", "image/png", b"one"),
            ("style", "s1.png", "image/png", b"two"),
            ("params", None, "application/json", b'{"iterations": 3}'),
        ]
    )
    assert ctype.startswith("multipart/form-data; boundary=")
    parts = fake_server.parse_multipart(ctype, body)
    assert [(name, filename) for name, filename, _ in parts] == [
        ("content", "content.png"),
        ("style", "s0.png"),
        ("style", "s1.png"),
        ("params", None),
    ]
    assert parts[0][2] == png and parts[2][2] == b"two"
    assert json.loads(parts[3][2]) == {"iterations": 3}


def test_error_message_from_json_error() -> None:
    err = nst_client.error_message(
        413,
        b'{"error": {"code": "too_large", "message": "image over 40000000 pixels"}}',
        "http://x/v1/jobs",
    )
    assert isinstance(err, nst_client.ServerError)
    assert err.status == 413 and err.code == "too_large"
    assert "413 too_large" in str(err) and "image over 40000000 pixels" in str(err)


def test_error_message_from_non_json_body() -> None:
    err = nst_client.error_message(502, b"<html>Bad gateway</html>")
    assert "502" in str(err) and "Bad gateway" in str(err)


@pytest.mark.parametrize(
    "status,expected",
    [
        (
            {"state": "queued", "progress": {"phase": "queued"}},
            (None, "Neural style: waiting for the server"),
        ),
        (
            {
                "state": "running",
                "progress": {"phase": "optimising", "step": 30, "total": 120, "eta_s": 95.2},
            },
            (0.25, "Neural style: step 30/120, about 1 min 36 s left"),
        ),
        ({"state": "running", "progress": {"phase": "loading"}}, (None, "Neural style: loading")),
        (
            {
                "state": "running",
                "progress": {"step": 10, "total": 40, "scale": 2, "scales": 3, "eta_s": 5},
            },
            (0.25, "Neural style: pass 2/3, step 10/40, about 5 s left"),
        ),
        (  # one scale: no "pass 1/1" noise
            {"state": "running", "progress": {"step": 10, "total": 40, "scale": 1, "scales": 1}},
            (0.25, "Neural style: step 10/40"),
        ),
        (
            {
                "state": "running",
                "progress": {"phase": "preparing", "note": "processed at 1448x1086 px"},
            },
            (None, "Neural style: preparing (processed at 1448x1086 px)"),
        ),
    ],
)
def test_progress_text(status: dict, expected: tuple) -> None:
    assert nst_client.progress_text(status) == expected


def test_loopback_detection() -> None:
    assert nst_client.is_loopback_url("http://127.0.0.1:8765")
    assert nst_client.is_loopback_url("http://localhost:1")
    assert nst_client.is_loopback_url("http://[::1]:8765/")
    assert not nst_client.is_loopback_url("http://192.0.2.7:8765")
    assert not nst_client.is_loopback_url("https://example.org")


# ------------------------------------------------------------------ a job against the stand-in


def test_run_job_polls_reports_progress_and_returns_result(fake) -> None:
    url, state = fake
    client = nst_client.NstClient(url)
    content = gradient(10, 6, 3, 8)
    events: list[tuple[float | None, str]] = []
    png = nst_client.run_job(
        client,
        nst_client.encode_png(content),
        [nst_client.encode_png(gradient(5, 5, 3, 8))],
        {"iterations": 3},
        progress=lambda f, t: events.append((f, t)),
        poll_interval=0.01,
    )
    result = nst_client.decode_png(png)
    assert result.pixels == bytes(255 - b for b in content.pixels)  # the stand-in inverts
    assert state.uploads[0]["params"] == {"iterations": 3}
    texts = [t for _, t in events]
    assert "Neural style: step 1/3, about 2 s left" in texts
    assert texts[-1] == "Neural style: fetching the result"
    fractions = [f for f, _ in events if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_run_job_sends_mask_and_init_and_passes_notes_on_once(fake) -> None:
    url, state = fake
    state.progress_extra = {"note": "processed at 48x32 px instead of 96x64: memory"}
    notes: list[str] = []
    mask = nst_client.encode_png(gradient(10, 6, 1, 8))
    init = nst_client.encode_png(gradient(20, 12, 3, 8))
    nst_client.run_job(
        nst_client.NstClient(url),
        nst_client.encode_png(gradient(10, 6, 3, 8)),
        [nst_client.encode_png(gradient(5, 5, 3, 8))] * 2,
        {"style_blend": [1, 1]},
        poll_interval=0.01,
        mask_png=mask,
        init_png=init,
        on_note=notes.append,
    )
    fields = {name: data for name, _, data in state.uploads[0]["fields"] if name != "style"}
    assert fields["mask"] == mask and fields["init"] == init
    assert [n for n, _, _ in state.uploads[0]["fields"]].count("style") == 2
    assert notes == ["processed at 48x32 px instead of 96x64: memory"]  # 3 polls, one note


def _tiny_job(client: nst_client.NstClient | str, **kwargs) -> bytes:
    """run_job with a 4 x 4 photo and painting, default params, 10 ms polls."""
    if isinstance(client, str):
        client = nst_client.NstClient(client)
    tiny = nst_client.encode_png(gradient(4, 4, 3, 8))
    return nst_client.run_job(client, tiny, [tiny], None, **{"poll_interval": 0.01, **kwargs})


def _assert_lost_message(message: str) -> None:
    assert "stopped or restarted while working on this job" in message
    assert "the job was lost" in message
    assert "nst-server serve" in message and "retry" in message  # how to go on
    assert "Traceback" not in message


def test_run_job_server_restarted_mid_job_is_a_clear_error(fake) -> None:
    url, state = fake

    def restart(_seconds: float) -> None:  # a new server process knows no old job ids
        with state.lock:
            state.jobs.clear()

    with pytest.raises(nst_client.JobLost) as caught:
        _tiny_job(url, sleep=restart)
    _assert_lost_message(str(caught.value))
    assert "no longer knows the job" in str(caught.value)
    assert state.deleted == []  # nothing to cancel


def test_run_job_server_stopped_mid_job_is_a_clear_error() -> None:
    state = fake_server.FakeState(steps=100)
    server = fake_server.serve(0, state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def stop(_seconds: float) -> None:  # after the first poll, nothing listens any more
        if thread.is_alive():
            server.shutdown()
            server.server_close()
            thread.join()

    with pytest.raises(nst_client.JobLost) as caught:
        _tiny_job(url, sleep=stop)
    _assert_lost_message(str(caught.value))
    assert "Cannot reach" in str(caught.value)


def test_run_job_connection_reset_mid_job_is_a_clear_error(fake) -> None:
    """A server killed mid-answer: the connection closes with no (or half a) response."""
    url, _state = fake
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def slam() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
            conn.close()  # IncompleteRead on the client: not an OSError

    threading.Thread(target=slam, daemon=True).start()
    client = nst_client.NstClient(url)
    dead = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def switch(_seconds: float) -> None:  # the "server" now breaks every answer off
        client.base_url = dead

    try:
        with pytest.raises(nst_client.JobLost) as caught:
            _tiny_job(client, sleep=switch)
    finally:
        stop.set()
        listener.close()
    _assert_lost_message(str(caught.value))


def test_run_job_rides_over_one_refused_poll(fake) -> None:
    """A single failed poll is retried, not reported as a lost job."""
    url, _state = fake
    client = nst_client.NstClient(url)
    calls = {"n": 0}
    real_status = client.status

    def flaky(job_id: str, **long_poll: object) -> dict:
        calls["n"] += 1
        if calls["n"] == 2:
            raise nst_client.ServerUnreachable("Cannot reach: connection refused")
        return real_status(job_id, **long_poll)

    client.status = flaky  # type: ignore[method-assign]
    png = _tiny_job(client)
    assert nst_client.decode_png(png).width == 4


def test_run_job_failed_job_raises_the_servers_message(fake) -> None:
    url, state = fake
    state.fail_with = "out of memory at 4096 px; try a smaller max size"
    with pytest.raises(nst_client.ServerError, match="out of memory at 4096 px"):
        _tiny_job(url)


def test_run_job_cancels_the_job_on_its_own_timeout(fake) -> None:
    url, state = fake
    state.steps = 10_000
    with pytest.raises(nst_client.NstError, match="took longer"):
        _tiny_job(url, timeout=0.05)
    assert len(state.deleted) == 1  # it told the server, so the server is free at once


def test_http_error_becomes_readable_server_error(fake) -> None:
    url, _ = fake
    client = nst_client.NstClient(url)
    with pytest.raises(nst_client.ServerError, match="404 not_found.*no job nope"):
        client.status("nope")


def test_bearer_token_is_sent(fake) -> None:
    url, state = fake
    state.token = "s3cret"
    with pytest.raises(nst_client.ServerError, match="401"):
        nst_client.NstClient(url).params()
    assert nst_client.NstClient(url, token="s3cret").health()["backbone"] == "none"


def test_unreachable_server_message() -> None:
    client = nst_client.NstClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(nst_client.ServerUnreachable, match="Cannot reach the neural style server"):
        client.health()


# ------------------------------------------------------------------ settings and start-up


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "plugin.json"
    assert nst_client.load_config(path) == {}
    path.write_text('{"server_url": "http://127.0.0.1:9", "start_command": "x"}')
    assert nst_client.load_config(path)["start_command"] == "x"
    path.write_text("{broken")
    with pytest.raises(nst_client.NstError, match="re-run install/install_plugin.sh"):
        nst_client.load_config(path)
    # As Windows PowerShell 5 writes it (install.ps1): with a byte-order mark.
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"token_file": "C:/t"}).encode())
    assert nst_client.load_config(path) == {"token_file": "C:/t"}


def test_config_path_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NST_PLUGIN_CONFIG", str(tmp_path / "x.json"))
    assert nst_client.config_path() == tmp_path / "x.json"
    monkeypatch.delenv("NST_PLUGIN_CONFIG")
    plugin_folder = Path(nst_client.__file__).resolve().parents[1]  # beside neural_style.py
    assert nst_client.config_path() == plugin_folder / "plugin.json"


def test_ensure_server_starts_the_recorded_command() -> None:
    port = free_port()
    client = nst_client.NstClient(f"http://127.0.0.1:{port}")
    command = [sys.executable, str(HERE / "fake_server.py"), str(port)]
    texts: list[str] = []
    health, process = nst_client.ensure_server(client, command, timeout=30, report=texts.append)
    try:
        assert health["status"] == "ok" and process is not None and process.poll() is None
        assert texts == ["Neural style: starting the server (first start takes a while)"]
        # Already running: nothing is started the second time.
        assert nst_client.ensure_server(client, command)[1] is None
    finally:
        process.kill()
        process.wait(10)


def test_ensure_server_reports_a_command_that_dies() -> None:
    client = nst_client.NstClient(f"http://127.0.0.1:{free_port()}")
    command = f"{sys.executable} -c 'raise SystemExit(3)'"
    with pytest.raises(nst_client.ServerUnreachable) as info:
        nst_client.ensure_server(client, command, timeout=30)
    message = str(info.value)
    assert "exited with code 3" in message and "nst-server serve --port" in message


def test_ensure_server_gives_up_after_timeout_and_kills_the_process() -> None:
    client = nst_client.NstClient(f"http://127.0.0.1:{free_port()}")
    before = set(_children())
    with pytest.raises(nst_client.ServerUnreachable, match="did not answer within 1 s"):
        nst_client.ensure_server(
            client, [sys.executable, "-c", "import time; time.sleep(60)"], timeout=1
        )
    leftover = [pid for pid in set(_children()) - before if _alive(pid)]
    assert leftover == []


def test_ensure_server_without_command_says_how_to_start() -> None:
    port = free_port()
    with pytest.raises(nst_client.ServerUnreachable, match=f"nst-server serve --port {port}"):
        nst_client.ensure_server(nst_client.NstClient(f"http://127.0.0.1:{port}"), None)


def test_ensure_server_never_starts_for_a_remote_url(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    client = nst_client.NstClient("http://192.0.2.1:9", timeout=0.5)  # TEST-NET: never routed
    client.health = _refuse  # type: ignore[method-assign]  # no traffic off this machine
    with pytest.raises(nst_client.ServerUnreachable, match="not on this machine"):
        nst_client.ensure_server(client, f"touch {marker}")
    assert not marker.exists()


def _refuse(timeout: float | None = None) -> dict:
    raise nst_client.ServerUnreachable("Cannot reach the neural style server at remote")


def _children() -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(os.getpid())],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [int(pid) for pid in out.split()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"


def test_module_imports_without_gi() -> None:
    code = (
        "import sys; sys.modules['gi'] = None; "
        f"sys.path.insert(0, {str(Path(nst_client.__file__).parents[1])!r}); import nst_client"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_strength_is_sent_as_is_to_a_server_that_knows_it() -> None:
    schema = {
        "params": {
            **fake_server.PARAMS_SCHEMA["params"],
            "strength": {"type": "number", "default": 50.0, "minimum": 0.0, "maximum": 100.0},
            "style_weight": {"type": "number", "default": None, "nullable": True},
        }
    }
    assert nst_client.build_job_params(schema, {"strength": 75.0})["strength"] == 75.0
    standard = nst_client.build_job_params(schema, {"strength": 50.0})
    assert "strength" not in standard and "style_weight" not in standard


# ------------------------------------------------------------------ keep (finish) and preview


def _started_job(url: str) -> tuple[nst_client.NstClient, str]:
    client = nst_client.NstClient(url)
    photo = nst_client.encode_png(gradient(40, 30, 3, 8))
    job_id = client.submit(photo, [photo], {"max_size": 32})
    client.status(job_id)  # one step: now running, with a preview
    return client, job_id


def test_finish_keeps_the_picture_so_far(fake) -> None:
    url, state = fake
    state.steps = 100
    client, job_id = _started_job(url)
    client.finish(job_id)
    snapshot = client.status(job_id)
    assert snapshot["state"] == "done" and snapshot["progress"]["finished_early"] is True
    assert snapshot["progress"]["step"] < 100
    assert state.finished == [job_id]


def test_finish_on_a_server_too_old_for_it_says_to_update(fake) -> None:
    url, state = fake
    state.has_finish = False
    client, job_id = _started_job(url)
    with pytest.raises(nst_client.ServerTooOld) as info:
        client.finish(job_id)
    text = str(info.value)
    assert "too old" in text and "install/install.sh" in text and "Cancel still works" in text


def test_finish_of_an_unknown_job_is_not_mistaken_for_an_old_server(fake) -> None:
    url, _state = fake
    with pytest.raises(nst_client.ServerError) as info:
        nst_client.NstClient(url).finish("nope")
    assert not isinstance(info.value, nst_client.ServerTooOld)
    assert info.value.status == 404


def test_preview_asks_for_a_size(fake) -> None:
    url, state = fake
    client, job_id = _started_job(url)
    preview = nst_client.decode_png(client.preview(job_id, size=16))
    assert (preview.width, preview.height) == (16, 12)
    assert ("GET", f"/v1/jobs/{job_id}/preview?size=16") in state.requests
    # Larger than the processing size (32 px here): the server gives its processing size.
    assert nst_client.decode_png(client.preview(job_id, size=500)).width == 32
