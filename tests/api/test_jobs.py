"""nst_server.jobs on a fake engine: states, progress, cancellation, abandonment, failures."""

from __future__ import annotations

import io
import logging
import re
import threading
import time

import numpy as np
import pytest
from PIL import Image

from nst_server.jobs import LocalQueue, QueueFull
from nst_server.params import StyleParams
from tests.api.helpers import as_json, job_inputs
from tests.fake_engine import FakeEngine, wait_for

CONTENT = np.full((12, 16, 3), 0.25, np.float32)
STYLE = np.full((8, 8, 3), 0.75, np.float32)


def params(iterations: int = 3) -> StyleParams:
    return StyleParams(iterations=iterations, max_size=64)


@pytest.fixture
def make_queue():
    queues: list[LocalQueue] = []

    def make(engine: FakeEngine, **kwargs) -> LocalQueue:
        kwargs.setdefault("tick_s", 0.02)
        queue = LocalQueue(engine, **kwargs)
        queues.append(queue)
        queue.start()
        return queue

    yield make
    for queue in queues:
        queue.close()


def finished(queue: LocalQueue, job_id: str):
    snap = as_json(queue.snapshot(job_id))
    return snap if snap and snap["state"] in ("done", "failed", "cancelled") else None


def test_worker_loads_the_network_at_start_not_at_the_first_job(make_queue) -> None:
    engine = FakeEngine(load_s=0.05)
    queue = make_queue(engine)
    assert queue.status in ("loading", "ok")
    wait_for(lambda: queue.status == "ok", what="network loaded")
    assert engine.loaded and engine.loads == 1 and not engine.calls


def test_job_runs_to_done_with_progress_and_a_png_result(make_queue) -> None:
    engine = FakeEngine()
    queue = make_queue(engine)
    job = queue.submit(job_inputs(CONTENT, [STYLE, STYLE]), params(4))
    assert re.fullmatch(r"[0-9a-f]{32}", job.id)
    snap = wait_for(lambda: finished(queue, job.id))
    assert snap["state"] == "done" and snap["error"] is None
    assert snap["progress"]["phase"] == "done"
    assert snap["progress"]["step"] == 4 and snap["progress"]["total"] == 4
    assert snap["progress"]["losses"]["total"] == pytest.approx(0.25)
    assert snap["size"] == [16, 12] and snap["styles"] == 2
    assert len(engine.calls[0]["styles"]) == 2
    with Image.open(io.BytesIO(job.result)) as image:
        assert image.size == (16, 12)
        assert image.getpixel((0, 0)) == (191, 64, 64)  # the fake inverts red: 1 - 0.25
    assert job.inputs is None  # inputs freed once finished


def test_ids_are_random_not_sequential(make_queue) -> None:
    queue = make_queue(FakeEngine())
    ids = {queue.submit(job_inputs(CONTENT, [STYLE]), params(1)).id for _ in range(5)}
    assert len(ids) == 5 and all(len(i) == 32 for i in ids)
    numbers = sorted(int(i, 16) for i in ids)
    assert max(b - a for a, b in zip(numbers, numbers[1:], strict=False)) > 2**64


def test_16_bit_input_gives_a_16_bit_result(make_queue) -> None:
    queue = make_queue(FakeEngine())
    job = queue.submit(job_inputs(CONTENT, [STYLE], bit_depth=16), params(1))
    wait_for(lambda: finished(queue, job.id))
    assert job.result[24] == 16  # PNG IHDR bit depth


def test_queued_jobs_report_their_position_and_a_full_queue_refuses(make_queue) -> None:
    engine = FakeEngine(step_s=0.05)
    queue = make_queue(engine, capacity=2)
    running = queue.submit(job_inputs(CONTENT, [STYLE]), params(100))
    wait_for(lambda: as_json(queue.snapshot(running.id))["state"] == "running")
    first = queue.submit(job_inputs(CONTENT, [STYLE]), params(1))
    second = queue.submit(job_inputs(CONTENT, [STYLE]), params(1))
    assert as_json(queue.snapshot(second.id))["progress"] == {"phase": "queued", "position": 1}
    assert as_json(queue.snapshot(first.id))["progress"]["position"] == 0
    assert queue.stats() == {"queued": 2, "running": 1, "capacity": 2}
    with pytest.raises(QueueFull, match="2 job"):
        queue.submit(job_inputs(CONTENT, [STYLE]), params(1))


def test_cancelling_a_running_job_stops_it_within_a_step_and_frees_the_worker(make_queue) -> None:
    engine = FakeEngine(step_s=0.02)
    queue = make_queue(engine)
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(5000))
    wait_for(lambda: engine.steps_done >= 2, what="job running")
    assert as_json(queue.cancel(job.id))["state"] == "running"  # asked; stops at the next step
    snap = wait_for(lambda: finished(queue, job.id))
    assert snap["state"] == "cancelled" and "cancelled by the client" in snap["error"]
    assert engine.steps_done < 50
    engine.step_s = 0.0  # the next job runs at full speed
    nxt = queue.submit(job_inputs(CONTENT, [STYLE]), params(2))
    assert wait_for(lambda: finished(queue, nxt.id))["state"] == "done"


def test_cancelling_a_queued_job_removes_it_without_running(make_queue) -> None:
    engine = FakeEngine(step_s=0.02)
    queue = make_queue(engine)
    blocker = queue.submit(job_inputs(CONTENT, [STYLE]), params(5000))
    wait_for(lambda: as_json(queue.snapshot(blocker.id))["state"] == "running")
    waiting = queue.submit(job_inputs(CONTENT, [STYLE]), params(3))
    snap = as_json(queue.cancel(waiting.id))
    assert snap["state"] == "cancelled" and queue.stats()["queued"] == 0
    as_json(queue.cancel(blocker.id))
    wait_for(lambda: finished(queue, blocker.id))
    time.sleep(0.05)
    assert len(engine.calls) == 1  # only the blocker ever reached the engine


def test_cancel_of_a_finished_job_leaves_it_done(make_queue) -> None:
    queue = make_queue(FakeEngine())
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(1))
    wait_for(lambda: finished(queue, job.id))
    assert as_json(queue.cancel(job.id))["state"] == "done"
    assert as_json(queue.cancel("0" * 32)) is None


def test_abandoned_running_and_queued_jobs_are_cancelled(make_queue) -> None:
    engine = FakeEngine(step_s=0.02)
    queue = make_queue(engine, abandon_after_s=0.3)
    running = queue.submit(job_inputs(CONTENT, [STYLE]), params(5000))
    waiting = queue.submit(job_inputs(CONTENT, [STYLE]), params(5))
    # Nobody polls: both are cancelled; the running one within a step.
    wait_for(lambda: as_json(queue.snapshot(waiting.id, touch=False))["state"] == "cancelled", 3)
    wait_for(lambda: as_json(queue.snapshot(running.id, touch=False))["state"] == "cancelled", 3)
    assert "abandoned" in as_json(queue.snapshot(running.id))["error"]
    assert len(engine.calls) == 1


def test_polling_keeps_a_job_alive(make_queue) -> None:
    engine = FakeEngine(step_s=0.02)
    queue = make_queue(engine, abandon_after_s=0.3)
    job = queue.submit(
        job_inputs(CONTENT, [STYLE]), params(40)
    )  # ~0.8 s, longer than abandon_after_s
    snap = wait_for(lambda: finished(queue, job.id), 5)  # finished() polls, with touch
    assert snap["state"] == "done"


@pytest.mark.parametrize(
    ("mode", "message", "code"),
    [
        ("engine_error", "out of memory at 64x64 px: try a smaller max_size", "engine_error"),
        ("value_error", "content: image must be H x W x 3", "bad_input"),
    ],
)
def test_engine_errors_fail_the_job_with_their_message(make_queue, mode, message, code) -> None:
    queue = make_queue(FakeEngine(mode=mode))
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(2))
    snap = wait_for(lambda: finished(queue, job.id))
    assert snap["state"] == "failed" and snap["error"] == message and snap["error_code"] == code


def test_a_bug_fails_the_job_without_leaking_details_and_the_worker_survives(
    make_queue, caplog
) -> None:
    engine = FakeEngine(mode="crash")
    queue = make_queue(engine, log_path="/tmp/nst-test.log")
    with caplog.at_level(logging.ERROR, logger="nst_server.jobs"):
        job = queue.submit(job_inputs(CONTENT, [STYLE]), params(2))
        snap = wait_for(lambda: finished(queue, job.id))
    assert snap["state"] == "failed"
    assert snap["error"] == "internal error (see the server log at /tmp/nst-test.log)"
    assert "secret" not in snap["error"]
    assert "secret internal detail" in caplog.text  # the traceback went to the log
    engine.mode = "ok"
    nxt = queue.submit(job_inputs(CONTENT, [STYLE]), params(1))
    assert wait_for(lambda: finished(queue, nxt.id))["state"] == "done"


@pytest.mark.parametrize("mode", ["oom", "memory_error"])
def test_out_of_memory_fails_the_job_with_a_message_and_the_worker_survives(
    make_queue, mode
) -> None:
    # Regression: a raw ResourceExhaustedError / MemoryError used to be an "internal error".
    if mode == "oom":
        pytest.importorskip("tensorflow")  # imported here, not inside the 5 s wait below
    engine = FakeEngine(mode=mode)
    queue = make_queue(engine)
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(2))
    snap = wait_for(lambda: finished(queue, job.id))
    assert snap["state"] == "failed" and snap["error_code"] == "out_of_memory"
    assert "out of memory" in snap["error"] and "max_size" in snap["error"]
    assert f"{CONTENT.shape[1]}x{CONTENT.shape[0]}" in snap["error"]
    engine.mode = "ok"
    nxt = queue.submit(job_inputs(CONTENT, [STYLE]), params(1))
    assert wait_for(lambda: finished(queue, nxt.id))["state"] == "done"


def test_the_mask_reaches_the_engine(make_queue) -> None:
    engine = FakeEngine()
    queue = make_queue(engine)
    mask = np.linspace(0, 1, CONTENT.shape[0] * CONTENT.shape[1], dtype=np.float32).reshape(
        CONTENT.shape[:2]
    )
    job = queue.submit(job_inputs(CONTENT, [STYLE], mask=mask), params(1))
    assert wait_for(lambda: finished(queue, job.id))["state"] == "done"
    # decoded by the worker from the uploaded PNG (8 bits: within half a level)
    np.testing.assert_allclose(engine.calls[0]["mask"], mask, atol=0.5 / 255 + 1e-6)
    assert job.inputs is None  # inputs are dropped once the job is finished


def test_a_failing_load_is_reported_and_retried_for_the_next_job(make_queue) -> None:
    engine = FakeEngine()
    calls = {"n": 0}
    real_load = engine.load

    def flaky_load() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("weights file unreadable")
        real_load()

    engine.load = flaky_load
    queue = make_queue(engine)
    wait_for(lambda: queue.status == "error")
    assert "weights file unreadable" in queue.status_error
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(1))
    assert wait_for(lambda: finished(queue, job.id))["state"] == "done"
    assert queue.status == "ok"


def test_preview_is_a_png_of_the_latest_iterate_at_the_size_asked(make_queue) -> None:
    engine = FakeEngine()
    engine.hold("optimising")  # the job waits after step 1 until released
    queue = make_queue(engine)
    big = np.zeros((300, 600, 3), np.float32)
    job = queue.submit(job_inputs(big, [STYLE]), params(2))
    assert engine.reached.wait(5)
    assert as_json(queue.snapshot(job.id))["preview_step"] == 1
    png = queue.preview_png(job.id)
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (256, 128)  # the default: 256 px on the longer side
        assert image.getpixel((0, 0)) == (128, 128, 128)  # step 1 of 2 -> 0.5
    assert queue.preview_png(job.id) is png  # cached until the next step
    with Image.open(io.BytesIO(queue.preview_png(job.id, 100))) as image:
        assert image.size == (100, 50)
    with Image.open(io.BytesIO(queue.preview_png(job.id, 5000))) as image:
        assert image.size == (600, 300)  # at most the processing size
    engine.release()
    wait_for(lambda: finished(queue, job.id))
    assert queue.preview_png(job.id) is None  # ended: its result is the picture


def test_no_preview_before_the_first_step(make_queue) -> None:
    engine = FakeEngine(step_s=0.02)
    queue = make_queue(engine)
    blocker = queue.submit(job_inputs(CONTENT, [STYLE]), params(5000))
    waiting = queue.submit(job_inputs(CONTENT, [STYLE]), params(1))
    assert queue.preview_png(waiting.id) is None
    as_json(queue.cancel(blocker.id))


def test_finished_jobs_are_forgotten_after_the_ttl(make_queue) -> None:
    queue = make_queue(FakeEngine(), ttl_s=0.2)
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(1))
    wait_for(lambda: finished(queue, job.id))
    wait_for(lambda: queue.get(job.id) is None, 3, "job forgotten")


def test_idle_unload_and_reload_before_the_next_job(make_queue) -> None:
    engine = FakeEngine()
    queue = make_queue(engine, idle_unload_s=0.2)
    wait_for(lambda: engine.unloads == 1, 3, "idle unload")
    assert not engine.loaded
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(1))
    assert wait_for(lambda: finished(queue, job.id))["state"] == "done"
    assert engine.loads == 2


def test_no_unload_when_idle_unload_is_zero(make_queue) -> None:
    engine = FakeEngine()
    make_queue(engine, idle_unload_s=0)
    time.sleep(0.2)
    assert engine.unloads == 0 and engine.loaded


def test_submit_is_thread_safe(make_queue) -> None:
    queue = make_queue(FakeEngine(), capacity=1000, max_finished=1000)
    ids: list[str] = []

    def submit_many() -> None:
        for _ in range(20):
            ids.append(queue.submit(job_inputs(CONTENT, [STYLE]), params(1)).id)

    threads = [threading.Thread(target=submit_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 80
    for job_id in ids:
        assert wait_for(lambda job_id=job_id: finished(queue, job_id))["state"] == "done"


def test_finished_jobs_beyond_the_limit_are_forgotten_oldest_first(make_queue) -> None:
    queue = make_queue(FakeEngine(), max_finished=3)
    jobs = []
    for _ in range(5):
        jobs.append(queue.submit(job_inputs(CONTENT, [STYLE]), params(1)))
        wait_for(lambda: finished(queue, jobs[-1].id))
    forgotten = [queue.snapshot(j.id) is None for j in jobs]
    assert forgotten == [True, True, False, False, False]
    assert queue.budget.used() == sum(len(j.result) for j in jobs[2:])  # results, nothing else


def test_a_long_poll_answers_at_the_next_change_not_at_its_timeout(make_queue) -> None:
    engine = FakeEngine()
    engine.hold("optimising")
    queue = make_queue(engine)
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(3))
    assert engine.reached.wait(5)
    seen = as_json(queue.snapshot(job.id))
    started = time.monotonic()
    # Nothing changes while the job is held: the poll waits its full timeout.
    same = as_json(queue.wait_snapshot(job.id, seen["version"], 0.3))
    assert same["version"] == seen["version"] and time.monotonic() - started >= 0.29
    threading.Timer(0.2, engine.release).start()
    started = time.monotonic()
    changed = as_json(queue.wait_snapshot(job.id, seen["version"], 5.0))
    waited = time.monotonic() - started
    assert changed["version"] > seen["version"] and 0.15 < waited < 2.0
    final = wait_for(lambda: finished(queue, job.id))
    # A finished job's version no longer moves, so a stale 'since' answers at once.
    started = time.monotonic()
    assert as_json(queue.wait_snapshot(job.id, seen["version"], 5.0))["state"] == "done"
    assert time.monotonic() - started < 0.5
    assert as_json(queue.wait_snapshot("no-such-job", 0, 0.1)) is None
    assert final["version"] >= seen["version"] + 3  # steps 2, 3, encoding, done


def test_long_polls_pace_progress_but_answer_the_end_at_once(make_queue) -> None:
    from nst_server.jobs import LONG_POLL_GAP_S

    queue = make_queue(FakeEngine(step_s=0.03))
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(30))  # about 0.9 s of steps
    version, answers = -1, []
    while True:
        started = time.monotonic()
        snap = as_json(queue.wait_snapshot(job.id, version, 5.0))
        answers.append((time.monotonic() - started, snap["state"]))
        version = snap["version"]
        if snap["state"] in ("done", "failed", "cancelled"):
            break
    assert answers[-1][1] == "done"
    progress = [t for t, state in answers[1:-1] if state == "running"]
    assert len(progress) >= 2 and all(t >= LONG_POLL_GAP_S - 0.01 for t in progress), answers
    assert len(answers) < 15  # paced: not one answer per step
    assert answers[-1][0] < LONG_POLL_GAP_S + 0.1  # the end is not held back further


def test_the_worker_never_starts_a_job_abandoned_between_housekeeping_ticks(make_queue) -> None:
    # The housekeeper ticks once a minute here: only the worker itself can notice that nobody
    # asked about the waiting job while the first one ran.
    engine = FakeEngine(step_s=0.02)
    queue = make_queue(engine, abandon_after_s=0.3, tick_s=60)
    running = queue.submit(job_inputs(CONTENT, [STYLE]), params(40))  # ~0.8 s, polled
    waiting = queue.submit(job_inputs(CONTENT, [STYLE]), params(5))  # never polled
    assert wait_for(lambda: finished(queue, running.id), 10)["state"] == "done"
    wait_for(lambda: as_json(queue.snapshot(waiting.id, touch=False))["state"] != "queued", 5)
    snap = as_json(queue.snapshot(waiting.id, touch=False))
    assert snap["state"] == "cancelled" and "abandoned" in snap["error"], snap
    assert len(engine.calls) == 1
