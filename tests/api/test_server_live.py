"""The whole server, for real: `python -m nst_server serve` (waitress, real VGG19 engine) in a
subprocess on a free loopback port, driven over HTTP with the standard library only.

One server for the module (TensorFlow import + network build take ~10-15 s); jobs are tiny
(64 px, a few steps) because this CPU does ~0.1 s per step at that size.
"""

from __future__ import annotations

import functools
import io
import json
import os
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from nst_server.images import encode_png
from tests.api.helpers import bomb_png, png_bytes, raw_png, rgb_image
from tests.live_server import LiveServer, job_form, multipart

UPLOAD_LIMIT = 2_000_000  # bytes, set through NST_MAX_UPLOAD_BYTES
ABANDON_AFTER_S = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    srv = LiveServer(
        tmp_path_factory.mktemp("live"),
        abandon_after_s=ABANDON_AFTER_S,
        env={"NST_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)},
    )
    try:
        try:
            srv.start()
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield srv
    finally:
        srv.stop()


@functools.cache
def photo_png(width: int = 64, height: int = 48) -> bytes:
    return png_bytes(rgb_image(width, height))


@functools.cache
def painting_png() -> bytes:
    y, x = np.mgrid[0:64, 0:64]
    stripes = (np.sin((x + y) / 4.0)[..., None] * [0.5, -0.5, 0.3] + 0.5) * 255
    return png_bytes(Image.fromarray(np.clip(stripes, 0, 255).astype(np.uint8)))


def assert_json_error(
    status: int, headers, data: bytes, expected: int, code: str, *words: str
) -> None:
    assert status == expected, data[:500]
    assert headers["Content-Type"].startswith("application/json")
    body = json.loads(data)
    assert body["error"]["code"] == code, body
    for word in words:
        assert word in body["error"]["message"], body
    assert "Traceback" not in body["error"]["message"]


def assert_healthy(server: LiveServer) -> None:
    status, body = server.get_json("/v1/health")
    assert status == 200 and body["status"] == "ok"


# --- tests ------------------------------------------------------------------------------------


def test_health_names_the_real_engine_and_the_log(server: LiveServer) -> None:
    status, body = server.get_json("/v1/health")
    assert status == 200
    assert body["backbone"] == "VGG19" and body["device"] in ("cpu", "gpu")
    assert "fake" not in body["weights"] and body["weights"]
    assert body["log"] == str(server.log_file)
    assert server.log_file.exists()
    status, params = server.get_json("/v1/params")
    assert status == 200 and params["params"]["iterations"]["default"] >= 1
    assert params["limits"]["max_upload_bytes"] == UPLOAD_LIMIT


def test_create_poll_result(server: LiveServer) -> None:
    status, headers, data = server.post_form("/v1/jobs", job_form(photo_png(), painting_png()))
    assert status == 202, data
    job_id = json.loads(data)["id"]
    assert headers["Location"] == f"/v1/jobs/{job_id}"
    body = server.wait_state(job_id, ("done", "failed", "cancelled"))
    assert body["state"] == "done", body
    assert body["progress"]["step"] == 3 and body["progress"]["total"] == 3
    assert set(body["progress"]["losses"]) >= {"content", "style", "tv", "total"}
    status, headers, png = server.request("GET", f"/v1/jobs/{job_id}/result")
    assert status == 200 and headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (64, 48) and image.mode == "RGB"
        result = np.asarray(image, np.float32)
    original = np.asarray(rgb_image(64, 48), np.float32)
    assert np.abs(result - original).mean() > 0.5  # the optimisation changed the picture


def test_16_bit_rgba_content_gives_16_bit_rgba_result_with_alpha_untouched(
    server: LiveServer,
) -> None:
    y, x = np.mgrid[0:48, 0:64].astype(np.float32)
    rgba = np.stack([x / 64, y / 48, (x + y) / 112, np.clip(x / 40, 0, 1)], axis=2)
    status, headers, png = server.post_form(
        "/v1/stylize", job_form(encode_png(rgba, bit_depth=16), painting_png())
    )
    assert status == 200, png[:300]
    assert png[24:26] == bytes([16, 6])  # IHDR: 16-bit RGBA
    from nst_server.images import decode_image

    result = decode_image(png, what="result", max_pixels=10**6)
    assert result.size == (64, 48) and result.bit_depth == 16
    np.testing.assert_allclose(result.pixels[..., 3], rgba[..., 3], atol=1 / 65535)


@pytest.mark.parametrize(("content_mode", "style_fmt"), [("P", "CMYK"), ("LA", "L")])
def test_palette_cmyk_la_and_greyscale_are_converted(
    server: LiveServer, content_mode: str, style_fmt: str
) -> None:
    content = png_bytes(rgb_image(64, 48).convert(content_mode))
    buf = io.BytesIO()
    rgb_image(64, 64, style_fmt).save(buf, "JPEG" if style_fmt == "CMYK" else "PNG")
    status, headers, png = server.post_form("/v1/stylize", job_form(content, buf.getvalue()))
    assert status == 200, png[:300]
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (64, 48)
        assert image.mode == ("RGBA" if content_mode == "LA" else "RGB")


def test_cancel_of_a_running_job_frees_the_worker(server: LiveServer) -> None:
    status, _, data = server.post_form(
        "/v1/jobs",
        job_form(
            photo_png(), painting_png(), {"iterations": 5000, "max_size": 64, "optimizer": "adam"}
        ),
    )
    job_id = json.loads(data)["id"]
    server.wait_state(job_id, ("failed", "cancelled", "done"), min_step=1)
    status, _, data = server.request("DELETE", f"/v1/jobs/{job_id}")
    assert status in (200, 202)
    body = server.wait_state(job_id, ("cancelled", "failed", "done"), timeout=15)
    assert body["state"] == "cancelled"
    assert body["progress"]["step"] < 200
    status, _, data = server.post_form("/v1/jobs", job_form(photo_png(), painting_png()))
    body = server.wait_state(json.loads(data)["id"], ("done", "failed", "cancelled"))
    assert body["state"] == "done"


def test_abandoned_job_is_cancelled(server: LiveServer) -> None:
    server.wait_idle()
    status, _, data = server.post_form(
        "/v1/jobs",
        job_form(
            photo_png(), painting_png(), {"iterations": 5000, "max_size": 64, "optimizer": "adam"}
        ),
    )
    job_id = json.loads(data)["id"]
    # No GET on the job from here: health does not count as polling it.
    deadline = time.monotonic() + ABANDON_AFTER_S + 15
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if server.get_json("/v1/health")[1]["queue"]["running"] == 0:
            break
    status, body = server.get_json(f"/v1/jobs/{job_id}")
    assert body["state"] == "cancelled" and "abandoned" in body["error"], body


def test_stylize_returns_a_png(server: LiveServer) -> None:
    status, headers, png = server.post_form("/v1/stylize", job_form(photo_png(), painting_png()))
    assert status == 200 and headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (64, 48)


def test_stylize_cancels_its_job_when_the_client_hangs_up(server: LiveServer) -> None:
    server.wait_idle()
    body, content_type = multipart(
        job_form(
            photo_png(), painting_png(), {"iterations": 5000, "max_size": 64, "optimizer": "adam"}
        )
    )
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        f"POST /v1/stylize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Authorization: Bearer {server.token}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    deadline = time.monotonic() + 30
    while server.get_json("/v1/health")[1]["queue"]["running"] == 0:
        assert time.monotonic() < deadline, "the stylize job never started"
        time.sleep(0.1)
    sock.close()
    server.wait_idle(timeout=15)  # 5000 steps would take minutes
    assert "client disconnected" in server.log_text() or "went away" in server.log_text()


BAD_INPUTS = {
    "not an image": (job_form(b"hello, not an image", painting_png()), 400, "bad_image"),
    "truncated png": (job_form(photo_png()[:200], painting_png()), 400, "bad_image"),
    "zero size": (job_form(raw_png(0, 16), painting_png()), 400, "bad_image"),
    "huge declared size": (job_form(photo_png(), raw_png(60_000, 60_000)), 413, "too_large"),
    "wrong param type": (
        job_form(photo_png(), painting_png(), {"iterations": "many"}),
        400,
        "bad_params",
    ),
    "out of range": (job_form(photo_png(), painting_png(), {"tv_weight": -3}), 400, "bad_params"),
    "not json": (job_form(photo_png(), painting_png(), "{iterations: 3"), 400, "bad_params"),
    "over max iterations": (
        job_form(photo_png(), painting_png(), {"iterations": 10**6}),
        400,
        "bad_params",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_4xx_json_and_the_server_keeps_serving(
    server: LiveServer, case: str
) -> None:
    fields, expected, code = BAD_INPUTS[case]
    status, headers, data = server.post_form("/v1/jobs", fields)
    assert_json_error(status, headers, data, expected, code)
    assert_healthy(server)


def test_decompression_bomb(server: LiveServer) -> None:
    status, headers, data = server.post_form("/v1/jobs", job_form(photo_png(), bomb_png()))
    assert_json_error(status, headers, data, 413, "too_large", "style")
    assert_healthy(server)


def test_oversized_upload_is_413_naming_the_limit(server: LiveServer) -> None:
    blob = os.urandom(UPLOAD_LIMIT + 100_000)
    status, headers, data = server.post_form("/v1/jobs", job_form(blob, painting_png()))
    assert_json_error(status, headers, data, 413, "too_large", str(UPLOAD_LIMIT))
    assert_healthy(server)


def test_unknown_id_and_route(server: LiveServer) -> None:
    for method, path in (
        ("GET", f"/v1/jobs/{'0' * 32}"),
        ("GET", f"/v1/jobs/{'0' * 32}/result"),
        ("DELETE", "/v1/jobs/nope"),
        ("GET", "/v2/whatever"),
    ):
        status, headers, data = server.request(method, path)
        assert_json_error(status, headers, data, 404, "not_found")
    assert_healthy(server)


def test_previews_and_finish_keep_the_picture_so_far(server: LiveServer) -> None:
    """The live window's server side, with the real engine: previews at the size asked while
    the job runs, long polls that wake on a new preview, Keep (finish) giving a result from the
    picture at that moment."""
    server.wait_idle()
    long_job = {"iterations": 5000, "max_size": 64, "coarse_to_fine": False, "optimizer": "adam"}
    status, _, data = server.post_form("/v1/jobs", job_form(photo_png(), painting_png(), long_job))
    job_id = json.loads(data)["id"]
    _, _, queued = server.post_form("/v1/jobs", job_form(photo_png(), painting_png(), long_job))
    queued_id = json.loads(queued)["id"]
    # At once: the queued job is not polled, so it would soon be cancelled as abandoned.
    status, headers, data = server.request("POST", f"/v1/jobs/{queued_id}/finish")
    assert_json_error(status, headers, data, 409, "not_started", "cancel")
    server.request("DELETE", f"/v1/jobs/{queued_id}")
    body = server.wait_state(job_id, ("done", "failed", "cancelled"), min_step=2)

    # long polls wake on each change; within a few, one brings a new preview (the engine
    # copies one at most every 0.5 s)
    later = body
    for _ in range(50):
        status, later = server.get_json(f"/v1/jobs/{job_id}?since={later['version']}&wait=10")
        assert status == 200
        if later["preview_step"] != body["preview_step"]:
            break
    assert later["preview"] and later["preview_step"] > body["preview_step"]
    for size, expected in ((32, (32, 24)), (None, (64, 48)), (5000, (64, 48))):
        query = f"?size={size}" if size else ""
        status, headers, png = server.request("GET", f"/v1/jobs/{job_id}/preview{query}")
        assert status == 200 and headers["Content-Type"] == "image/png"
        with Image.open(io.BytesIO(png)) as image:
            assert image.size == expected  # at most the processing size (64 px)
    status, headers, data = server.request("GET", f"/v1/jobs/{job_id}/preview?size=0")
    assert_json_error(status, headers, data, 400, "bad_query", "size")

    status, _, data = server.request("POST", f"/v1/jobs/{job_id}/finish")
    assert status == 202 and json.loads(data)["state"] == "running"
    body = server.wait_state(job_id, ("done", "failed", "cancelled"), timeout=30)
    assert body["state"] == "done", body
    assert body["progress"]["finished_early"] is True
    assert 2 <= body["progress"]["step"] < 100
    status, headers, png = server.request("GET", f"/v1/jobs/{job_id}/result")
    assert status == 200
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (64, 48)
        result = np.asarray(image, np.float32)
    assert np.abs(result - np.asarray(rgb_image(64, 48), np.float32)).mean() > 0.5
    status, headers, data = server.request("POST", f"/v1/jobs/{job_id}/finish")
    assert_json_error(status, headers, data, 409, "finished", "done")
    assert_healthy(server)


def test_without_the_token_only_a_brief_health(server: LiveServer) -> None:
    status, _, data = server.request("GET", "/v1/health", token=False)
    assert status == 200 and set(json.loads(data)) == {"status", "version"}
    status, headers, data = server.request("GET", "/v1/params", token=False)
    assert_json_error(status, headers, data, 401, "unauthorized", "nst-server token --show")
    assert "401 GET /v1/params from 127.0.0.1" in server.log_text()
