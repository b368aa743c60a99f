"""The Flask API through its test client, on the fake engine (one layer; the live test proves
the whole stack)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

import nst_server
from nst_server.api import get_queue
from nst_server.params import StyleParams
from nst_server.settings import ServerSettings
from tests.api.helpers import TEST_TOKEN, as_json, make_test_app, png_bytes, raw_png, rgb_image
from tests.fake_engine import FakeEngine, wait_for

PNG = png_bytes(rgb_image(40, 32))
STYLE_PNG = png_bytes(rgb_image(24, 24))


def form(content: bytes = PNG, style: bytes | list[bytes] = STYLE_PNG, params=None, **extra):
    data: dict = {"content": (io.BytesIO(content), "content.png")}
    styles = style if isinstance(style, list) else [style]
    data["style"] = [(io.BytesIO(s), f"style{i}.png") for i, s in enumerate(styles)]
    if params is not None:
        data["params"] = params if isinstance(params, str) else json.dumps(params)
    for key, value in extra.items():
        data[key] = (io.BytesIO(value), f"{key}.png")
    return data


def post_job(client, **kwargs):
    return client.post("/v1/jobs", data=form(**kwargs), content_type="multipart/form-data")


def assert_error(response, status: int, code: str, *words: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    message = body["error"]["message"]
    for word in words:
        assert word in message, message
    assert "Traceback" not in message and 'File "' not in message
    return message


def wait_done(client, job_id: str) -> dict:
    def poll():
        body = client.get(f"/v1/jobs/{job_id}").get_json()
        return body if body["state"] in ("done", "failed", "cancelled") else None

    return wait_for(poll, 5, f"job {job_id}")


# --- factory and read-only endpoints ----------------------------------------------------------


def test_factory_takes_its_limits_from_the_settings(monkeypatch, fake_engine) -> None:
    monkeypatch.setenv("NST_MAX_PIXELS", "1234")
    monkeypatch.setenv("NST_QUEUE_SIZE", "3")
    app = make_test_app(
        fake_engine, start_worker=False, **vars(ServerSettings.load({"queue_size": 5}))
    )
    try:
        body = app.test_client().get("/v1/params").get_json()["limits"]
        assert body["max_pixels"] == 1234  # from the environment
        assert body["max_iterations"] == 5000  # default
        assert get_queue(app).capacity == body["queue_size"] == 5  # a flag wins over env
        assert get_queue(app) is get_queue(app)
    finally:
        get_queue(app).close()


def test_health(client, fake_engine) -> None:
    wait_for(lambda: client.get("/v1/health").get_json()["status"] == "ok")  # built in background
    assert fake_engine.loaded
    body = client.get("/v1/health").get_json()
    assert body["version"] == nst_server.__version__
    assert body["backbone"] == "VGG19"
    assert body["weights"] == "fake weights (tests)"
    assert body["device"] == "cpu"
    assert body["queue"] == {"queued": 0, "running": 0, "capacity": 16}
    assert body["log"] is None


def test_health_reports_loading(make_app) -> None:
    engine = FakeEngine(load_s=1.0)
    client = make_app(engine, log_file="/var/log/x.log").test_client()
    body = client.get("/v1/health").get_json()
    assert body["status"] == "loading" and body["log"] == "/var/log/x.log"


def test_params_describes_every_field_with_this_servers_limits(make_app) -> None:
    client = make_app(max_iterations=300, max_processing_size=1024).test_client()
    body = client.get("/v1/params").get_json()
    p = body["params"]
    for name in (
        "iterations",
        "max_size",
        "seed",
        "optimizer",
        "content_weight",
        "style_weight",
        "tv_weight",
    ):
        assert {"type", "default", "help"} <= set(p[name])
    assert p["iterations"]["default"] == 150 and p["iterations"]["maximum"] == 300
    cpu = StyleParams.for_device("cpu")
    assert p["max_size"]["default"] == cpu.max_size and p["max_size"]["maximum"] == 1024
    assert p["optimizer"]["choices"] == ["lbfgs", "adam"]
    assert body["limits"]["max_iterations"] == 300
    assert body["limits"]["max_upload_bytes"] == 100 * 1024 * 1024
    assert body["limits"]["max_pixels"] == 40_000_000


def post_plan(client, doc):
    body = doc if isinstance(doc, (bytes, str)) else json.dumps(doc)
    return client.post("/v1/plan", data=body, content_type="application/json")


def test_plan_says_processing_size_enlargement_and_what_detail_costs(client) -> None:
    cpu = StyleParams.for_device("cpu")
    plain = post_plan(client, {"width": 4000, "height": 3000})
    assert plain.status_code == 200, plain.get_data(as_text=True)
    doc = plain.get_json()
    long_side = cpu.max_size
    assert doc["processing_size"] == [long_side, long_side * 3 // 4]
    assert doc["result_size"] == [4000, 3000]
    assert doc["enlargement"] == pytest.approx(4000 / long_side, abs=1e-3)
    assert doc["steps"] == cpu.iterations and doc["work_vs_plain"] == 1.0
    assert [p[0] for p in doc["passes"]][-1] == long_side
    detail = post_plan(client, {"width": 4000, "height": 3000, "params": {"upscale": "detail"}})
    doc = detail.get_json()
    # The detail pass covers the 4000 px layer in tiles: many times a plain job's work.
    assert doc["steps"] > cpu.iterations and doc["work_vs_plain"] > 10
    small = post_plan(client, {"width": 200, "height": 150, "params": {"upscale": "detail"}})
    assert small.get_json()["enlargement"] == 1.0 and small.get_json()["work_vs_plain"] == 1.0


@pytest.mark.parametrize(
    ("doc", "status", "code", "words"),
    [
        ({"height": 10}, 400, "bad_params", ("photo", "width and height")),
        ({"width": 10.5, "height": 10}, 400, "bad_params", ("photo",)),
        ({"width": True, "height": 10}, 400, "bad_params", ("photo",)),
        ({"width": 10**6, "height": 10**6}, 400, "bad_params", ("max_pixels",)),
        ({"width": 12000, "height": 40, "params": {"max_size": 64}}, 400, "bad_params", ("thin",)),
        (
            {"width": 64, "height": 64, "params": {"max_size": 10**5}},
            400,
            "bad_params",
            ("max_size",),
        ),
        (
            {"width": 64, "height": 64, "params": {"upscale": "huge"}},
            400,
            "bad_params",
            ("upscale",),
        ),
        ({"width": 64, "height": 64, "paintings": []}, 400, "bad_params", ("paintings",)),
        (
            {"width": 64, "height": 64, "paintings": [{"width": 5}]},
            400,
            "bad_params",
            ("painting",),
        ),
        ([1, 2], 400, "bad_params", ("JSON object",)),
        ("{not json", 400, "bad_params", ("not valid JSON",)),
        ("[" * 20_000 + "]" * 20_000, 400, "bad_params", ("nested",)),
    ],
)
def test_plan_refuses_what_a_job_would_be_refused(client, doc, status, code, words) -> None:
    assert_error(post_plan(client, doc), status, code, *words)


def test_plan_body_over_the_params_limit_is_413(client) -> None:
    doc = {"width": 64, "height": 64, "pad": "x" * (ServerSettings().max_params_bytes + 1)}
    assert_error(post_plan(client, doc), 413, "too_large", "max_params_bytes")


# --- the job lifecycle ------------------------------------------------------------------------


def test_create_poll_result(client, fake_engine) -> None:
    response = post_job(client, params={"iterations": 3, "seed": 7})
    assert response.status_code == 202
    job_id = response.get_json()["id"]
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert response.headers["Location"] == f"/v1/jobs/{job_id}"
    body = wait_done(client, job_id)
    assert body["state"] == "done" and body["error"] is None
    assert body["progress"]["step"] == 3 and body["progress"]["total"] == 3
    assert body["params"]["seed"] == 7 and body["params"]["iterations"] == 3
    assert isinstance(body["created"], float)
    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200 and result.mimetype == "image/png"
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (40, 32)
    assert fake_engine.calls[0]["params"].iterations == 3
    assert fake_engine.calls[0]["content"].shape == (32, 40, 3)
    # previews live while the job runs; once it has ended, its result is the picture
    assert_error(client.get(f"/v1/jobs/{job_id}/preview"), 409, "no_preview", "done")


def test_jobs_lists_the_jobs_oldest_first(client, fake_engine) -> None:
    ids = [post_job(client, params={"iterations": 1}).get_json()["id"] for _ in range(2)]
    for job_id in ids:
        wait_done(client, job_id)
    listed = client.get("/v1/jobs").get_json()["jobs"]
    assert [j["id"] for j in listed] == ids
    # the per-install token is the owner of everything, an admin: the list names owners
    assert {j["owner"] for j in listed} == {"owner"} and listed[0]["state"] == "done"
    assert listed[0] == {**wait_done(client, ids[0]), "owner": "owner"}


def test_several_styles_and_a_mask_are_accepted(client, fake_engine) -> None:
    response = post_job(
        client,
        style=[STYLE_PNG, png_bytes(rgb_image(10, 10))],
        mask=png_bytes(rgb_image(40, 32, "L")),
        params={"iterations": 1},
    )
    assert response.status_code == 202
    wait_done(client, response.get_json()["id"])
    assert len(fake_engine.calls[0]["styles"]) == 2


def test_a_mask_reaches_the_engine_as_greyscale_luminance_times_alpha(client, fake_engine):
    grey = rgb_image(40, 32, "L")
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (32, 1)))
    rgba = Image.merge("RGBA", (grey, grey, grey, alpha))
    response = post_job(client, mask=png_bytes(rgba), params={"iterations": 1})
    assert response.status_code == 202, response.get_data(as_text=True)
    wait_done(client, response.get_json()["id"])
    mask = fake_engine.calls[0]["mask"]
    assert mask.shape == (32, 40) and mask.dtype == np.float32
    expected = np.asarray(grey, np.float32) / 255 * np.asarray(alpha, np.float32) / 255
    np.testing.assert_allclose(mask, expected, atol=1e-5)


def test_no_mask_means_none_for_the_engine(client, fake_engine) -> None:
    wait_done(client, post_job(client, params={"iterations": 1}).get_json()["id"])
    assert fake_engine.calls[0]["mask"] is None


def test_an_init_image_reaches_the_engine_at_its_own_size(client, fake_engine) -> None:
    start = rgb_image(20, 16)
    response = post_job(client, init=png_bytes(start), params={"iterations": 1})
    assert response.status_code == 202, response.get_data(as_text=True)
    wait_done(client, response.get_json()["id"])
    init = fake_engine.calls[0]["init_image"]
    assert init.shape == (16, 20, 3)
    np.testing.assert_allclose(init, np.asarray(start, np.float32) / 255, atol=1e-6)
    assert fake_engine.calls[0]["mask"] is None


def test_style_blend_needs_one_weight_per_style(client, fake_engine) -> None:
    response = post_job(client, params={"style_blend": [1, 2]})
    assert_error(response, 400, "bad_params", "style_blend has 2 weight(s) but 1 style")
    assert fake_engine.calls == []


def test_a_mask_of_another_size_is_refused_naming_both_sizes(client, fake_engine) -> None:
    response = post_job(client, mask=png_bytes(rgb_image(20, 16, "L")))
    assert_error(response, 400, "bad_image", "mask", "20x16", "40x32")
    assert fake_engine.calls == []


@pytest.mark.parametrize(
    "params",
    [
        '{"style_weight": 1' + "0" * 400 + "}",  # float() of a 400-digit int overflows
        "[" * 30_000 + "]" * 30_000,  # deeper than the JSON parser's recursion limit
    ],
    ids=["overflowing-number", "deep-nesting"],
)
def test_pathological_params_json_is_a_400_not_a_500(client, params) -> None:
    assert_error(post_job(client, params=params), 400, "bad_params", "params")


def test_stylize_engine_error_is_a_422_and_oom_a_503(make_app) -> None:
    # Regression: an EngineError (e.g. an image too small for VGG19) was answered with a 500.
    client = make_app(FakeEngine(mode="engine_error")).test_client()
    response = client.post("/v1/stylize", data=form(), content_type="multipart/form-data")
    assert_error(response, 422, "job_failed", "max_size")
    client = make_app(FakeEngine(mode="memory_error")).test_client()
    response = client.post("/v1/stylize", data=form(), content_type="multipart/form-data")
    assert_error(response, 503, "job_failed", "out of memory")


def test_params_may_come_as_a_file_part(client, fake_engine) -> None:
    data = form()
    data["params"] = (io.BytesIO(b'{"iterations": 2}'), "params.json")
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202
    wait_done(client, response.get_json()["id"])
    assert fake_engine.calls[0]["params"].iterations == 2


def test_default_params_are_the_devices(client, fake_engine) -> None:
    wait_done(client, post_job(client).get_json()["id"])
    assert fake_engine.calls[0]["params"].iterations == 150


def test_result_while_running_is_409_and_delete_cancels(make_app) -> None:
    engine = FakeEngine(step_s=0.02)
    client = make_app(engine).test_client()
    job_id = post_job(client, params={"iterations": 5000}).get_json()["id"]
    wait_for(lambda: engine.steps_done >= 1)
    assert_error(client.get(f"/v1/jobs/{job_id}/result"), 409, "not_ready", "running")
    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 202 and response.get_json()["state"] == "running"
    body = wait_done(client, job_id)
    assert body["state"] == "cancelled"
    assert_error(client.get(f"/v1/jobs/{job_id}/result"), 409, "job_cancelled", "cancelled")
    again = client.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 200 and again.get_json()["state"] == "cancelled"


def test_failed_job_result_names_the_error(make_app) -> None:
    client = make_app(FakeEngine(mode="engine_error")).test_client()
    job_id = post_job(client).get_json()["id"]
    body = wait_done(client, job_id)
    assert body["state"] == "failed" and "out of memory" in body["error"]
    # the failure table: an engine error is the client's to fix, the same from /result as
    # from /v1/stylize
    assert_error(client.get(f"/v1/jobs/{job_id}/result"), 422, "job_failed", "out of memory")


def test_preview_before_the_first_step_is_409(make_app) -> None:
    engine = FakeEngine(step_s=0.05)
    client = make_app(engine).test_client()
    first = post_job(client, params={"iterations": 5000}).get_json()["id"]
    second = post_job(client).get_json()["id"]
    assert_error(client.get(f"/v1/jobs/{second}/preview"), 409, "no_preview", "queued")
    client.delete(f"/v1/jobs/{first}")


def test_abandoned_job_is_cancelled(make_app) -> None:
    engine = FakeEngine(step_s=0.02)
    client = make_app(engine, abandon_after_s=0.3).test_client()
    job_id = post_job(client, params={"iterations": 5000}).get_json()["id"]
    queue = get_queue(client.application)
    wait_for(lambda: as_json(queue.snapshot(job_id, touch=False))["state"] == "cancelled", 3)
    body = client.get(f"/v1/jobs/{job_id}").get_json()
    assert "abandoned" in body["error"]


def test_full_queue_is_429_with_retry_after(make_app) -> None:
    engine = FakeEngine(step_s=0.05)
    client = make_app(engine, queue_size=1, retry_after_s=7).test_client()
    running = post_job(client, params={"iterations": 5000}).get_json()["id"]
    wait_for(lambda: engine.steps_done >= 1)
    waiting = post_job(client).get_json()["id"]
    response = post_job(client)
    assert_error(response, 429, "queue_full", "busy")
    assert response.headers["Retry-After"] == "7"
    for job_id in (waiting, running):
        client.delete(f"/v1/jobs/{job_id}")


def test_stylize_blocks_and_returns_the_png(client) -> None:
    response = client.post(
        "/v1/stylize", data=form(params={"iterations": 2}), content_type="multipart/form-data"
    )
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-NST-Job-Id"])
    with Image.open(io.BytesIO(response.data)) as image:
        assert image.size == (40, 32)
        # the fake inverts red: the result really is the engine's output
        assert image.getpixel((0, 0))[0] == 255 - rgb_image(40, 32).getpixel((0, 0))[0]


def test_stylize_failure_is_json(make_app) -> None:
    client = make_app(FakeEngine(mode="value_error")).test_client()
    response = client.post("/v1/stylize", data=form(), content_type="multipart/form-data")
    assert_error(response, 422, "job_failed", "H x W x 3")


def test_stylize_cancels_its_job_when_the_client_disconnects(make_app) -> None:
    engine = FakeEngine(step_s=0.02)
    client = make_app(engine).test_client()
    gone = {"now": False}

    def disconnected() -> bool:
        if engine.steps_done >= 3:
            gone["now"] = True
        return gone["now"]

    response = client.post(
        "/v1/stylize",
        data=form(params={"iterations": 5000}),
        content_type="multipart/form-data",
        environ_base={"waitress.client_disconnected": disconnected},
    )
    assert_error(response, 409, "cancelled", "disconnected")
    job_id = response.headers["X-NST-Job-Id"]
    queue = get_queue(client.application)
    wait_for(lambda: queue.stats()["running"] == 0, 3, "worker freed")
    body = as_json(queue.snapshot(job_id))
    assert body["state"] == "cancelled" and "disconnected" in body["error"]
    assert engine.steps_done < 100


# --- bad input --------------------------------------------------------------------------------


def test_unknown_job_is_404_json(client) -> None:
    for method, path in (("get", ""), ("get", "/result"), ("get", "/preview"), ("delete", "")):
        response = getattr(client, method)(f"/v1/jobs/{'ab' * 16}{path}")
        assert_error(response, 404, "not_found", "no job with id")


def test_unknown_route_and_wrong_method_are_json(client) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    response = client.put("/v1/jobs")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"iterations": "ten"}, ["iterations", "integer"]),
        ({"iterations": 0}, ["iterations", "between"]),
        ({"iterations": True}, ["iterations"]),
        ({"optimizer": "sgd"}, ["optimizer", "lbfgs"]),
        ({"content_weight": -1}, ["content_weight"]),
        ({"max_size": 10}, ["max_size"]),
        ({"bogus": 1}, ["unknown parameter", "bogus"]),
        ([1, 2], ["JSON object"]),
        ("{not json", ["not valid JSON"]),
    ],
)
def test_bad_params_are_400_naming_the_field(client, params, words) -> None:
    assert_error(post_job(client, params=params), 400, "bad_params", *words)


def test_iterations_over_the_server_limit(make_app) -> None:
    client = make_app(max_iterations=100).test_client()
    assert_error(
        post_job(client, params={"iterations": 101}),
        400,
        "bad_params",
        "iterations",
        "limit of 100",
        "max_iterations",
    )
    # The device's default (150 steps on a CPU) is held to the same limit, and so is a plan.
    assert_error(post_job(client), 400, "bad_params", "limit of 100")
    assert_error(post_plan(client, {"width": 64, "height": 48}), 400, "bad_params", "limit of 100")


def test_processing_size_over_the_server_limit(make_app) -> None:
    client = make_app(max_processing_size=128).test_client()
    assert_error(post_job(client, params={"max_size": 256}), 400, "bad_params", "limit of 128")
    big = png_bytes(rgb_image(200, 100))
    assert_error(
        post_job(client, content=big, params={"max_size": 0}),
        400,
        "bad_params",
        "full size",
        "200 px",
    )


def test_missing_files(client) -> None:
    response = client.post(
        "/v1/jobs",
        data={"style": (io.BytesIO(STYLE_PNG), "s.png")},
        content_type="multipart/form-data",
    )
    assert_error(response, 400, "missing_field", "content")
    response = client.post(
        "/v1/jobs", data={"content": (io.BytesIO(PNG), "c.png")}, content_type="multipart/form-data"
    )
    assert_error(response, 400, "missing_field", "style")
    assert_error(
        client.post("/v1/jobs", data=b"x", content_type="text/plain"), 400, "missing_field"
    )


def test_too_many_styles(make_app) -> None:
    client = make_app(max_styles=2).test_client()
    assert_error(post_job(client, style=[STYLE_PNG] * 3), 400, "too_many_styles", "limit of 2")


@pytest.mark.parametrize(
    ("field", "data", "status", "code", "words"),
    [
        ("style", b"this is not an image", 400, "bad_image", ["style: not an image"]),
        ("content", PNG[: len(PNG) // 2], 400, "bad_image", ["content:"]),
        ("content", raw_png(0, 5), 400, "bad_image", ["content:"]),
        ("style", raw_png(9000, 9000), 413, "too_large", ["style:", "megapixels", "limit"]),
        ("mask", b"\x89PNG\r\n\x1a\n garbage", 400, "bad_image", ["mask:"]),
    ],
)
def test_bad_images(client, field, data, status, code, words) -> None:
    kwargs = {"mask": data} if field == "mask" else {field: data}
    assert_error(post_job(client, **kwargs), status, code, *words)


def test_upload_over_the_upload_limit_is_413_naming_the_limit(make_app) -> None:
    client = make_app(max_upload_bytes=50_000).test_client()
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8))
    assert_error(
        post_job(client, content=png_bytes(noisy)),
        413,
        "too_large",
        "50000 bytes",
        "max_upload_bytes",
    )


def test_converted_inputs_reach_the_engine_as_rgb_or_rgba(client, fake_engine) -> None:
    grey = png_bytes(rgb_image(40, 32, "L"))
    job_id = post_job(client, content=grey, params={"iterations": 1}).get_json()["id"]
    wait_done(client, job_id)
    content = fake_engine.calls[0]["content"]
    assert content.shape == (32, 40, 3) and content.dtype == np.float32


def test_server_keeps_serving_after_bad_input(client) -> None:
    post_job(client, content=b"junk")
    post_job(client, params="{")
    response = post_job(client, params={"iterations": 1})
    assert response.status_code == 202
    assert wait_done(client, response.get_json()["id"])["state"] == "done"


# --- token ------------------------------------------------------------------------------------


def test_token_is_required_on_every_route(client) -> None:
    client.environ_base.pop("HTTP_AUTHORIZATION")
    for path in ("/v1/params", f"/v1/jobs/{'a' * 32}", "/nope"):
        response = client.get(path)
        assert_error(response, 401, "unauthorized", "Bearer", "nst-server token --show")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(
            client.get(path, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized"
        )
    assert_error(post_job(client), 401, "unauthorized")
    assert set(client.get("/v1/health").get_json()) == {"status", "version"}
    ok = client.get("/v1/health", headers={"Authorization": f"Bearer {TEST_TOKEN}"})
    assert ok.status_code == 200 and "weights" in ok.get_json()


def test_no_cors_headers(client) -> None:
    response = client.get("/v1/health", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


# --- unhandled errors -------------------------------------------------------------------------


def test_unhandled_exception_is_a_json_500_without_traceback(make_app, caplog) -> None:
    app = make_app()
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production (TESTING would re-raise)

    def boom():
        raise RuntimeError("private detail")

    app.add_url_rule("/v1/boom", "boom", boom)
    response = app.test_client().get("/v1/boom")
    message = assert_error(response, 500, "internal_error", "server log")
    assert "private detail" not in message
    assert "private detail" in caplog.text  # logged server-side


def test_long_poll_query_is_validated_and_answers_with_a_newer_version(client) -> None:
    job_id = post_job(client, params={"iterations": 3}).get_json()["id"]
    for query in ("wait=11", "wait=-1", "wait=nan", "wait=soon", "since=1.5", "since=-2"):
        response = client.get(f"/v1/jobs/{job_id}?{query}")
        assert_error(response, 400, "bad_query", query.split("=")[0], "between 0 and")
    body = wait_done(client, job_id)
    assert isinstance(body["version"], int) and body["version"] > 0
    older = client.get(f"/v1/jobs/{job_id}?since=0&wait=5")
    assert older.status_code == 200 and older.get_json()["version"] == body["version"]
