"""Faults inside one server process: a cancel landing in every phase the status reports, clients
that stop polling or hang up, out-of-memory inside a job. Each time the worker must be free for
the next job within one optimisation step, and the failing job must say why.

Fake engines for the phases too quick to hit with the real one; the real VGG19 engine (with its
step made to run out of memory) for the OOM path. Kill -9 of a whole server is in test_live.py.
"""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import pytest

import nst_server.runner as jobs_module
from nst_server.api import get_queue
from nst_server.jobs import LocalQueue
from nst_server.params import StyleParams
from tests.api.helpers import TEST_TOKEN, as_json, job_inputs, make_test_app
from tests.fake_engine import FakeEngine, wait_for
from tests.live_server import multipart
from tests.reliability.helpers import gradient, painting, png

CONTENT = np.asarray(gradient(40, 32), np.float32) / 255
STYLE = np.asarray(gradient(24, 24), np.float32) / 255


def params(iterations: int) -> StyleParams:
    return StyleParams.from_mapping({"iterations": iterations, "max_size": 64}, "cpu")


def final(queue: LocalQueue, job_id: str) -> dict | None:
    snap = as_json(queue.snapshot(job_id))
    return snap if snap and snap["state"] in ("done", "failed", "cancelled") else None


@pytest.fixture
def queue_of():
    queues: list[LocalQueue] = []

    def make(engine, **kwargs) -> LocalQueue:
        kwargs.setdefault("tick_s", 0.02)
        queue = LocalQueue(engine, **kwargs)
        queues.append(queue)
        queue.start()
        wait_for(lambda: engine.loaded or queue.status == "ok", 10, "the engine loaded")
        return queue

    yield make
    for queue in queues:
        queue.close()


def assert_worker_free(queue: LocalQueue, engine: FakeEngine) -> None:
    """The next job runs and finishes: nothing was left holding the worker."""
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(2))
    snap = wait_for(lambda: final(queue, job.id), 10, "the next job")
    assert snap["state"] == "done", snap


# --- cancel in every phase --------------------------------------------------------------------


def test_cancel_while_queued(queue_of) -> None:
    engine = FakeEngine(step_s=0.01)
    queue = queue_of(engine)
    engine.hold("preparing")
    first = queue.submit(job_inputs(CONTENT, [STYLE]), params(2))
    assert engine.reached.wait(5)
    second = queue.submit(job_inputs(CONTENT, [STYLE]), params(2))
    assert as_json(queue.snapshot(second.id))["progress"]["phase"] == "queued"
    snap = as_json(queue.cancel(second.id))
    assert snap["state"] == "cancelled"  # at once: it never reaches the worker
    engine.release()
    # the other job is unharmed
    assert wait_for(lambda: final(queue, first.id), 10)["state"] == "done"
    assert engine.steps_done == 2
    assert_worker_free(queue, engine)


def test_cancel_while_loading(queue_of) -> None:
    engine = FakeEngine(step_s=0.01)
    queue = queue_of(engine)
    engine.loaded = False  # as after an idle unload: the next job loads the network first
    engine.hold("loading")
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(50))
    assert engine.reached.wait(5)
    assert as_json(queue.snapshot(job.id))["progress"]["phase"] == "loading"
    as_json(queue.cancel(job.id))
    engine.release()
    snap = wait_for(lambda: final(queue, job.id), 10)
    assert snap["state"] == "cancelled" and snap["error"] == "cancelled by the client"
    assert engine.steps_done == 0  # the optimisation never started
    assert_worker_free(queue, engine)


@pytest.mark.parametrize("phase", ["preparing", "optimising"])
def test_cancel_while_preparing_or_optimising_stops_within_one_step(queue_of, phase) -> None:
    engine = FakeEngine(step_s=0.01)
    queue = queue_of(engine)
    engine.hold(phase)
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(1000))
    assert engine.reached.wait(5)
    wait_for(lambda: as_json(queue.snapshot(job.id))["progress"]["phase"] == phase, 5, phase)
    steps_at_cancel = engine.steps_done
    as_json(queue.cancel(job.id))
    engine.release()
    snap = wait_for(lambda: final(queue, job.id), 10)
    assert snap["state"] == "cancelled"
    assert engine.steps_done <= steps_at_cancel + 1  # within one step
    assert_worker_free(queue, engine)


def test_cancel_while_encoding_discards_the_result(queue_of, monkeypatch) -> None:
    engine = FakeEngine(step_s=0.01)
    queue = queue_of(engine)
    reached, gate = threading.Event(), threading.Event()
    real_encode = jobs_module.encode_png

    def slow_encode(pixels, *, bit_depth=8):
        reached.set()
        assert gate.wait(10)
        return real_encode(pixels, bit_depth=bit_depth)

    monkeypatch.setattr(jobs_module, "encode_png", slow_encode)
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(2))
    assert reached.wait(5)
    assert as_json(queue.snapshot(job.id))["progress"]["phase"] == "encoding"
    as_json(queue.cancel(job.id))
    gate.set()
    snap = wait_for(lambda: final(queue, job.id), 10)
    assert snap["state"] == "cancelled" and job.result is None
    monkeypatch.setattr(jobs_module, "encode_png", real_encode)
    assert_worker_free(queue, engine)


# --- clients that go away ---------------------------------------------------------------------


def test_a_client_that_stops_polling_is_cancelled_and_frees_the_worker(queue_of) -> None:
    engine = FakeEngine(step_s=0.01)
    queue = queue_of(engine, abandon_after_s=0.3)
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(5000))
    started = time.monotonic()
    wait_for(lambda: queue.stats()["running"] == 0 and final(queue, job.id), 10, "abandonment")
    snap = as_json(queue.snapshot(job.id, touch=False))
    assert snap["state"] == "cancelled" and "abandoned" in snap["error"]
    assert time.monotonic() - started < 0.3 + 2.0  # abandon time + housekeeping tick + a step
    assert_worker_free(queue, engine)


def test_a_polling_client_is_not_cancelled_while_another_walks_away(queue_of) -> None:
    engine = FakeEngine(step_s=0.005)
    queue = queue_of(engine, abandon_after_s=0.3)
    walker = queue.submit(job_inputs(CONTENT, [STYLE]), params(5000))
    kept = queue.submit(job_inputs(CONTENT, [STYLE]), params(150))  # ~0.75 s once it runs
    deadline = time.monotonic() + 15
    while not final(queue, kept.id):  # snapshot() touches: this client keeps polling
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert as_json(queue.snapshot(walker.id, touch=False))["state"] == "cancelled"
    assert as_json(queue.snapshot(kept.id))["state"] == "done"


@pytest.fixture
def waitress_app():
    """The app under a real waitress server in this process, on a free 127.0.0.1 port."""
    import waitress

    engine = FakeEngine(step_s=0.01)
    app = make_test_app(engine, abandon_after_s=0)
    server = waitress.create_server(
        app, host="127.0.0.1", port=0, threads=4, channel_request_lookahead=4
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield server.effective_port, app, engine
    server.close()
    get_queue(app).close()
    thread.join(5)


def test_stylize_client_hanging_up_cancels_within_a_step(waitress_app) -> None:
    port, app, engine = waitress_app
    queue = get_queue(app)
    body, ctype = multipart(
        [
            ("content", "c.png", png(gradient(40, 32))),
            ("style", "s.png", painting()),
            ("params", None, b'{"iterations": 5000, "max_size": 64}'),
        ]
    )
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST /v1/stylize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
        f"Authorization: Bearer {TEST_TOKEN}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    wait_for(lambda: engine.steps_done > 3, 10, "the job started")
    sock.close()
    wait_for(lambda: queue.stats()["running"] == 0, 5, "the worker freed")
    steps = engine.steps_done
    time.sleep(0.1)
    assert engine.steps_done == steps  # nothing runs any more
    assert steps < 1000  # it stopped long before 5000 steps
    assert_worker_free(queue, engine)


# --- out of memory ----------------------------------------------------------------------------


def test_raw_resource_exhausted_fails_the_job_and_the_server_keeps_serving(queue_of) -> None:
    tf = pytest.importorskip("tensorflow")
    engine = FakeEngine(step_s=0.01)
    queue = queue_of(engine)
    engine.fail_with = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating")
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(5))
    snap = wait_for(lambda: final(queue, job.id), 10)
    assert snap["state"] == "failed" and snap["error_code"] == "out_of_memory"
    assert "out of memory" in snap["error"] and "max_size" in snap["error"]
    engine.fail_with = None
    assert_worker_free(queue, engine)


def test_out_of_memory_through_the_api_is_a_readable_failure(monkeypatch) -> None:
    engine = FakeEngine(step_s=0.01)
    engine.fail_with = MemoryError()
    app = make_test_app(engine)
    client = app.test_client()
    try:
        data = {
            "content": (io.BytesIO(png(gradient(40, 32))), "c.png"),
            "style": (io.BytesIO(painting()), "s.png"),
        }
        response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
        assert response.status_code == 202
        job_id = response.get_json()["id"]
        body = wait_for(
            lambda: (b := client.get(f"/v1/jobs/{job_id}").get_json())["state"] == "failed" and b,
            10,
        )
        assert "out of memory" in body["error"]
        result = client.get(f"/v1/jobs/{job_id}/result")
        assert result.status_code == 503  # the failure table: this server cannot, right now
        assert "out of memory" in result.get_json()["error"]["message"]
        assert client.get("/v1/health").get_json()["status"] == "ok"
    finally:
        get_queue(app).close()


def test_real_engine_out_of_memory_in_a_step_fails_the_job_then_serves_again(
    engine, queue_of, monkeypatch
) -> None:
    """The real VGG19 engine, its optimisation made to run out of memory mid-job."""
    import tensorflow as tf

    real_optimise = engine._optimise
    calls = {"n": 0}

    def oom_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real_optimise(*args, **kwargs)

    monkeypatch.setattr(engine, "_optimise", oom_once)
    queue = queue_of(engine)
    content = np.asarray(gradient(64, 48), np.float32) / 255
    style = np.asarray(gradient(48, 48), np.float32) / 255
    job = queue.submit(job_inputs(content, [style]), params(2))
    snap = wait_for(lambda: final(queue, job.id), 60)
    assert snap["state"] == "failed" and "out of memory" in snap["error"], snap
    nxt = queue.submit(job_inputs(content, [style]), params(2))
    snap = wait_for(lambda: final(queue, nxt.id), 60)
    assert snap["state"] == "done", snap
