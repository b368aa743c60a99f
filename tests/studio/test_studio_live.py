"""A studio for real: redis-server, two `nst-server worker` processes (the real VGG19, one
TensorFlow thread each) and a front (`serve --broker`) on 127.0.0.1, started once for the
module. Jobs are 64 px and two steps. The tests run in file order: the last ones stop and
kill parts of the studio."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from tests.live_server import job_form
from tests.reliability.helpers import identity_content, painting, result_identity
from tests.studio.cluster import LONG, SMALL, Studio, TlsProxy

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    studio = Studio(tmp_path_factory.mktemp("studio"), workers=2, worker_timeout_s=4.0)
    studio.env["NST_STOP_GRACE_S"] = "1"
    studio.start(
        front_env={
            "NST_QUEUE_SIZE": "40",
            "NST_ARTIST_QUEUE_CAP": "20",
            "NST_ALLOWED_HOSTS": "studio.test",  # the TLS proxy's name
        }
    )
    yield studio
    studio.stop()


def submit(studio: Studio, artist: str, content: bytes, params: dict) -> str:
    """POST /v1/jobs as ``artist``, waiting out 429s as a client should (Retry-After)."""
    body, content_type = _form(content, params)
    for _ in range(200):
        status, headers, data = studio.front.request(
            "POST",
            "/v1/jobs",
            body,
            {"Content-Type": content_type, **studio.auth(artist)},
        )
        if status == 202:
            return json.loads(data)["id"]
        assert status == 429, data
        time.sleep(float(headers["Retry-After"]))
    raise AssertionError("the queue stayed full")


def _form(content: bytes, params: dict) -> tuple[bytes, str]:
    from tests.live_server import multipart

    return multipart(job_form(content, painting(), params))


def get(studio: Studio, artist: str, path: str) -> tuple[int, dict | bytes]:
    status, _, data = studio.front.request("GET", path, headers=studio.auth(artist))
    if data[:1] == b"{":
        return status, json.loads(data)
    return status, data


def wait_job(studio: Studio, artist: str, job_id: str, states, timeout: float = 120.0) -> dict:
    """Long polls (as the plug-in does) until the job is in one of ``states``."""
    deadline = time.monotonic() + timeout
    query = ""
    while time.monotonic() < deadline:
        status, body = get(studio, artist, f"/v1/jobs/{job_id}{query}")
        assert status == 200, body
        if body["state"] in states:
            return body
        query = f"?since={body['version']}&wait=5"
    raise AssertionError(f"job {job_id} not {states} after {timeout} s: {body}")


def started_by(studio: Studio) -> dict[str, list[str]]:
    """job id -> the workers whose log says they started it."""
    out: dict[str, list[str]] = {}
    for worker in studio.workers:
        for job_id in re.findall(r"job ([0-9a-f]{32}) started", worker.log_text()):
            out.setdefault(job_id, []).append(worker.log_file.stem)
    return out


def test_twenty_clients_three_jobs_each_across_two_workers(studio: Studio) -> None:
    results: dict[int, list[tuple[str, tuple, str]]] = {}
    errors: list[BaseException] = []

    def client(index: int) -> None:
        artist = ("alice", "bob")[index % 2]
        content, size, alpha = identity_content(index)
        try:
            for _ in range(3):
                job_id = submit(studio, artist, content, SMALL)
                body = wait_job(studio, artist, job_id, ("done", "failed", "cancelled"))
                assert body["state"] == "done", body
                status, png = get(studio, artist, f"/v1/jobs/{job_id}/result")
                assert status == 200
                results.setdefault(index, []).append((job_id, result_identity(png), alpha))
                assert result_identity(png) == (size, alpha), f"client {index} got another's"
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors[:3]
    assert sum(len(r) for r in results.values()) == 60
    ids = [job_id for r in results.values() for job_id, _, _ in r]
    assert len(set(ids)) == 60
    # Each job started exactly once, on one worker; both workers took jobs.
    starts = started_by(studio)
    assert all(len(starts[job_id]) == 1 for job_id in ids), starts
    used = {starts[job_id][0] for job_id in ids}
    assert used == {"worker0", "worker1"}, used
    for worker in studio.workers:
        for job_id in re.findall(r"job ([0-9a-f]{32}) started", worker.log_text()):
            assert f"job {job_id} ended done" in worker.log_text()
    health = studio.health()
    assert health["queue"]["queued"] == 0 and health["queue"]["workers"] == 2
    assert sum(w["jobs_done"] for w in health["workers"]) >= 60


def test_an_artist_sees_and_cancels_only_their_own_jobs(studio: Studio) -> None:
    content, _, _ = identity_content(1)
    job_id = submit(studio, "alice", content, LONG)
    body = wait_job(studio, "alice", job_id, ("running",))
    assert body["state"] == "running"
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/preview", f"/v1/jobs/{job_id}/result"):
        status, answer = get(studio, "bob", path)
        assert status == 404 and answer["error"]["code"] == "not_found", (path, answer)
    for method, path in (("DELETE", ""), ("POST", "/finish")):
        status, _, data = studio.front.request(
            method, f"/v1/jobs/{job_id}{path}", headers=studio.auth("bob")
        )
        assert status == 404, data
    assert job_id not in [j["id"] for j in get(studio, "bob", "/v1/jobs")[1]["jobs"]]
    mine = get(studio, "alice", "/v1/jobs")[1]["jobs"]
    assert job_id in [j["id"] for j in mine] and all("owner" not in j for j in mine)
    # A preview at the processing size, and smaller on request.
    wait_until(lambda: get(studio, "alice", f"/v1/jobs/{job_id}/preview")[0] == 200)
    status, small = get(studio, "alice", f"/v1/jobs/{job_id}/preview?size=16")
    assert status == 200 and max(_png_size(small)) == 16
    # The admin sees everyone's jobs with their owners, and cancels any.
    everyone = {j["id"]: j for j in get(studio, "boss", "/v1/jobs")[1]["jobs"]}
    assert everyone[job_id]["owner"] == "alice"
    assert {j["owner"] for j in everyone.values()} >= {"alice", "bob"}
    status, _, data = studio.front.request(
        "DELETE", f"/v1/jobs/{job_id}", headers=studio.auth("boss")
    )
    assert status in (200, 202), data
    body = wait_job(studio, "alice", job_id, ("cancelled",), timeout=30)
    assert body["error_code"] == "cancelled"


def test_finish_ends_a_running_job_on_its_worker_with_its_picture(studio: Studio) -> None:
    content, size, alpha = identity_content(2)
    job_id = submit(studio, "bob", content, LONG)
    body = wait_job(studio, "bob", job_id, ("running",))
    wait_until(lambda: get(studio, "bob", f"/v1/jobs/{job_id}")[1]["progress"].get("step", 0) > 3)
    status, _, data = studio.front.request(
        "POST", f"/v1/jobs/{job_id}/finish", headers=studio.auth("bob")
    )
    assert status == 202, data
    body = wait_job(studio, "bob", job_id, ("done", "failed", "cancelled"), timeout=30)
    assert body["state"] == "done" and body["progress"]["finished_early"] is True, body
    status, png = get(studio, "bob", f"/v1/jobs/{job_id}/result")
    assert status == 200 and result_identity(png) == (size, alpha)


def test_the_plugins_client_needs_only_the_url_and_the_artists_token(studio: Studio) -> None:
    studio.front.token = studio.tokens["bob"]
    try:
        content, _, _ = identity_content(9)
        wall, engine = studio.front.timed_job(content, painting(), SMALL)  # nst_client.run_job
    finally:
        studio.front.token = studio.tokens["alice"]
    assert 0 < engine <= wall
    jobs = get(studio, "bob", "/v1/jobs")[1]["jobs"]
    assert jobs[-1]["state"] == "done" and jobs[-1]["size"] == [64 + 9, 48 + (9 * 7) % 13]


def test_stylize_waits_for_the_worker_and_answers_with_the_picture(studio: Studio) -> None:
    content, size, alpha = identity_content(10)
    body, content_type = _form(content, SMALL)
    status, headers, data = studio.front.request(
        "POST", "/v1/stylize", body, {"Content-Type": content_type, **studio.auth("bob")}
    )
    assert status == 200 and result_identity(data) == (size, alpha)
    assert get(studio, "alice", f"/v1/jobs/{headers['X-NST-Job-Id']}")[0] == 404


def test_behind_nginx_with_tls(studio: Studio, tmp_path) -> None:
    """install/studio/nginx.conf on 127.0.0.1 with a self-signed certificate for studio.test;
    the front admits that name (--allowed-hosts) and no other."""
    proxy = TlsProxy(tmp_path / "nginx", studio.front.port).start()
    try:
        status, data = proxy.request("GET", "/v1/health", studio.auth("alice"))
        assert status == 200 and json.loads(data)["status"] == "ok", data
        status, data = proxy.request("GET", "/v1/jobs", {})
        assert status == 401, data
        content, size, alpha = identity_content(8)
        body, content_type = _form(content, SMALL)
        status, data = proxy.request(
            "POST", "/v1/jobs", {"Content-Type": content_type, **studio.auth("alice")}, body
        )
        assert status == 202, data
        job_id = json.loads(data)["id"]
        deadline = time.monotonic() + 60
        while json.loads(proxy.request("GET", f"/v1/jobs/{job_id}", studio.auth("alice"))[1])[
            "state"
        ] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        status, png = proxy.request("GET", f"/v1/jobs/{job_id}/result", studio.auth("alice"))
        assert status == 200 and result_identity(png) == (size, alpha)
        # A name the front was not told of is refused, through the proxy too.
        status, data = proxy.request(
            "GET", "/v1/health", {"Host": "elsewhere.test", **studio.auth("alice")}
        )
        assert status == 403 and json.loads(data)["error"]["code"] == "forbidden_host", data
    finally:
        proxy.stop()


def test_a_worker_without_its_device_or_weights_takes_no_jobs_and_says_why(
    studio: Studio, tmp_path
) -> None:
    missing = tmp_path / "no-such-weights.h5"
    broken = [
        studio.add_worker("--device", "gpu:0", name="gpu-worker"),
        studio.add_worker("--weights", str(missing), name="weightless-worker"),
    ]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            failed = {w["device"]: w for w in studio.health()["workers"] if w["status"] == "error"}
            if len(failed) == 2:
                break
            time.sleep(0.5)
        assert len(failed) == 2, studio.health()
        assert "sees no GPU" in failed["gpu:0"]["error"]
        assert str(missing) in failed["auto"]["error"]
        assert studio.health()["status"] == "ok"  # the other workers still work
        content, _, _ = identity_content(4)
        job_id = submit(studio, "alice", content, SMALL)
        assert wait_job(studio, "alice", job_id, ("done", "failed"))["state"] == "done"
        for worker in broken:
            assert "started" not in worker.log_text()
            assert "takes no jobs" in worker.log_text()
    finally:
        for worker in broken:
            worker.stop()
            studio.workers.remove(worker)


def test_queued_jobs_survive_a_front_restart(studio: Studio) -> None:
    content, size, alpha = identity_content(5)
    blockers = [submit(studio, "bob", content, LONG) for _ in studio.workers]
    for job_id in blockers:
        wait_job(studio, "bob", job_id, ("running",))
    waiting = [submit(studio, "alice", content, SMALL) for _ in range(2)]
    positions = [get(studio, "alice", f"/v1/jobs/{j}")[1]["progress"]["position"] for j in waiting]
    assert positions == [0, 1]
    studio.front.kill9()
    studio.front.start(timeout=60)
    for job_id, position in zip(waiting, positions, strict=True):
        body = get(studio, "alice", f"/v1/jobs/{job_id}")[1]
        assert body["state"] == "queued" and body["progress"]["position"] == position, body
    for job_id in blockers:  # the running jobs went on meanwhile
        assert get(studio, "bob", f"/v1/jobs/{job_id}")[1]["state"] == "running"
        studio.front.request("DELETE", f"/v1/jobs/{job_id}", headers=studio.auth("bob"))
    for job_id in waiting:
        assert wait_job(studio, "alice", job_id, ("done", "failed"))["state"] == "done"
        status, png = get(studio, "alice", f"/v1/jobs/{job_id}/result")
        assert status == 200 and result_identity(png) == (size, alpha)


def test_redis_down_is_503_and_queued_jobs_survive_its_restart(studio: Studio) -> None:
    content, size, alpha = identity_content(6)
    blockers = [submit(studio, "bob", content, LONG) for _ in studio.workers]
    for job_id in blockers:
        wait_job(studio, "bob", job_id, ("running",))
    waiting = submit(studio, "alice", content, SMALL)
    studio.redis.stop()
    status, headers, data = studio.front.request(
        "GET", f"/v1/jobs/{waiting}", headers=studio.auth("alice")
    )
    assert status == 503 and int(headers["Retry-After"]) >= 1, data
    assert json.loads(data)["error"]["code"] == "queue_unavailable"
    assert "Redis" in json.loads(data)["error"]["message"]
    body, content_type = _form(content, SMALL)
    status, _, data = studio.front.request(
        "POST", "/v1/jobs", body, {"Content-Type": content_type, **studio.auth("alice")}
    )
    assert status == 503, data
    studio.redis.start()  # the same port and append-only file
    assert get(studio, "alice", f"/v1/jobs/{waiting}")[1]["state"] == "queued"
    for job_id in blockers:
        studio.front.request("DELETE", f"/v1/jobs/{job_id}", headers=studio.auth("bob"))
    assert wait_job(studio, "alice", waiting, ("done", "failed"), timeout=120)["state"] == "done"
    status, png = get(studio, "alice", f"/v1/jobs/{waiting}/result")
    assert status == 200 and result_identity(png) == (size, alpha)


def test_sigterm_of_a_busy_worker_hands_its_job_to_another_at_once(studio: Studio) -> None:
    """Stopping a worker (a studio's restart or upgrade) lets its job run --stop-grace seconds
    (1 here), then puts it back at the head of the queue: another worker runs it from the start,
    without waiting for the dead-worker timeout and without counting it as a death."""
    studio.wait_workers_ready(2)
    content, size, alpha = identity_content(11)
    job_id = submit(studio, "alice", content, LONG)
    wait_job(studio, "alice", job_id, ("running",))
    busy = next(w for w in studio.health()["workers"] if w["job"] == job_id)
    stopping = next(w for w in studio.workers if str(w.pid) in busy["id"])
    assert stopping.process is not None
    stopping.process.terminate()
    stopped_at = time.monotonic()
    assert stopping.process.wait(30) == 0
    assert f"job {job_id} handed back to the queue" in stopping.log_text()
    wait_until(lambda: any(w["job"] == job_id for w in studio.health()["workers"]), timeout=30)
    handed_over_after = time.monotonic() - stopped_at
    assert studio.redis.client().hget(f"nst:job:{job_id}", "attempts") == b"1"  # not a death
    assert len(started_by(studio)[job_id]) == 2  # started once on each worker
    keep_and_check(studio, job_id, (size, alpha))
    print(f"handed over to another worker {handed_over_after:.1f} s after SIGTERM")
    studio.add_worker(name="worker-after-sigterm")  # the next test needs two


def test_sigkill_of_a_busy_worker_restarts_its_job_once_on_another(studio: Studio) -> None:
    studio.wait_workers_ready(2)
    content, size, alpha = identity_content(7)
    job_id = submit(studio, "alice", content, LONG)
    wait_job(studio, "alice", job_id, ("running",))
    busy = next(w for w in studio.health()["workers"] if w["job"] == job_id)
    # A job longer than the worker timeout on a live worker is never handed to another.
    time.sleep(studio_timeout(studio) * 2)
    assert studio.redis.client().hget(f"nst:job:{job_id}", "attempts") == b"1"
    assert started_by(studio)[job_id] and len(started_by(studio)[job_id]) == 1
    victim = next(w for w in studio.workers if str(w.pid) in busy["id"])
    victim.kill9()
    killed_at = time.monotonic()
    body = get(studio, "alice", f"/v1/jobs/{job_id}")[1]
    assert body["state"] in ("running", "queued")  # never left "running" on a dead worker
    deadline = killed_at + 60
    while time.monotonic() < deadline:
        workers = studio.health()["workers"]
        running_on = [w for w in workers if w["job"] == job_id and w["id"] != busy["id"]]
        if running_on:
            break
        time.sleep(0.25)
    assert running_on, studio.health()
    restarted_after = time.monotonic() - killed_at
    assert studio.redis.client().hget(f"nst:job:{job_id}", "attempts") == b"2"
    body = wait_job(studio, "alice", job_id, ("running",))
    assert body["params"]["seed"] == 0  # the same job, from the start
    keep_and_check(studio, job_id, (size, alpha))
    print(f"restarted on another worker {restarted_after:.1f} s after SIGKILL")


def keep_and_check(studio: Studio, job_id: str, identity: tuple) -> None:
    """Finish alice's running job: it is done, with a result of her photo's identity."""
    studio.front.request("POST", f"/v1/jobs/{job_id}/finish", headers=studio.auth("alice"))
    body = wait_job(studio, "alice", job_id, ("done", "failed", "cancelled"), timeout=30)
    assert body["state"] == "done", body
    status, png = get(studio, "alice", f"/v1/jobs/{job_id}/result")
    assert status == 200 and result_identity(png) == identity


def studio_timeout(studio: Studio) -> float:
    return float(studio.env["NST_WORKER_TIMEOUT_S"])


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _png_size(data: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size
