"""The HTTP front in this process: real waitress on 127.0.0.1 with nst_server.front's channel and
parser, on the fake engine (fast, and its phases can be held). What it must keep: a polling
client is not taken for gone while its poll waits for a thread; headers that never finish are
cut off; beyond the connection limit the slowest connection goes; a refused body is read and
thrown away, never stored. The same front with the real engine: test_limits_live.py."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from nst_server.api import get_queue
from nst_server.front import create_front
from nst_server.server import headers_hook
from nst_server.settings import ServerSettings
from tests.api.helpers import TEST_TOKEN, as_json, job_inputs, make_test_app
from tests.fake_engine import FakeEngine, wait_for
from tests.reliability.test_faults import CONTENT, STYLE, params

AUTH = f"Authorization: Bearer {TEST_TOKEN}\r\n"


@pytest.fixture
def front() -> Iterator[Callable[..., tuple]]:
    """front(engine, hook=True, **settings) -> (port, app): the app behind a running front."""
    running: list[tuple] = []

    def start(engine: FakeEngine, *, hook: bool = True, **values: object) -> tuple:
        settings = ServerSettings(host="127.0.0.1", port=0, **values)
        app = make_test_app(engine, **vars(settings))

        @app.get("/v1/test-slow")
        def slow() -> str:  # a request that holds a thread (a stand-in for heavy work)
            time.sleep(float(app.config.get("SLOW_S", 3.0)))
            return "slept"

        on_headers = headers_hook(app, settings) if hook else (lambda *args: False)
        server = create_front(app, settings, on_headers)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, app, thread))
        return server.effective_port, app

    yield start
    for server, app, thread in running:
        server.close()
        get_queue(app).close()
        thread.join(5)


def send(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(request)
    return sock


def answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[0].startswith(b"HTTP/1.1"):
            head, body = data.split(b"\r\n\r\n", 1)
            length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")]
            if length and len(body) >= int(length[0].split(b":")[1]):
                break
    sock.close()
    return data


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{AUTH}Connection: close\r\n\r\n".encode()


@pytest.mark.parametrize("hook", [True, False], ids=["front", "without-the-front's-hook"])
def test_a_poll_waiting_for_a_thread_keeps_its_job_alive(front, hook: bool) -> None:
    """Both threads busy for 3 s, the job's client polling every 0.3 s, abandonment after 1 s:
    the polls wait in waitress' queue. With the front's hook they count from the moment their
    headers arrive; without it (the control) the job is cancelled as abandoned."""
    engine = FakeEngine()
    engine.hold("optimising")  # the job stays running until released
    port, app = front(engine, hook=hook, threads=2, max_blocking_requests=1, abandon_after_s=1.0)
    app.config["SLOW_S"] = 3.0
    queue = get_queue(app)
    job = queue.submit(job_inputs(CONTENT, [STYLE]), params(2), owner="owner")
    assert engine.reached.wait(5)
    busy = [send(port, get("/v1/test-slow")) for _ in range(2)]  # every thread taken
    time.sleep(0.2)
    polls = []
    for _ in range(10):
        polls.append(send(port, get(f"/v1/jobs/{job.id}")))
        time.sleep(0.3)
    for sock in busy:
        assert b"slept" in answer(sock)
    for sock in polls:
        assert answer(sock).startswith(b"HTTP/1.1 200")
    snapshot = as_json(queue.snapshot(job.id))
    engine.release()
    if hook:
        assert snapshot["state"] == "running", snapshot
        assert wait_for(lambda: as_json(queue.snapshot(job.id))["state"] == "done", 5)
    else:  # the control: the same client, taken for gone
        assert "abandoned" in (snapshot["error"] or ""), snapshot


def test_headers_that_never_finish_are_cut_off(front) -> None:
    port, _ = front(FakeEngine(), header_timeout_s=1.0)
    sock = send(port, b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    for _ in range(20):  # a byte every 0.2 s: never idle, never finished
        try:
            sock.sendall(b"X")
        except OSError:
            break
        time.sleep(0.2)
        sock.settimeout(0.01)
        try:
            if sock.recv(1) == b"":
                break
        except TimeoutError:
            pass
        except OSError:
            break
    assert time.monotonic() - started < 3.0, "a dripping client was not cut off"


def test_beyond_the_connection_limit_the_slowest_goes(front) -> None:
    port, _ = front(FakeEngine(), connection_limit=8, header_timeout_s=60)
    drippers = [send(port, b"GET /v1/health HTTP/1.1\r\n") for _ in range(20)]
    started = time.monotonic()
    reply = answer(send(port, get("/v1/health")))
    assert reply.startswith(b"HTTP/1.1 200") and time.monotonic() - started < 2.0
    time.sleep(0.5)
    closed = 0
    for sock in drippers:
        sock.settimeout(0.2)
        with contextlib.suppress(TimeoutError, OSError):
            closed += sock.recv(1) == b""
        sock.close()
    assert closed >= 12  # the oldest ones went, so there are at most ~8 left


def test_a_refused_body_is_discarded_not_stored(front) -> None:
    """A 40 MB body without the token: read and thrown away (nothing buffered, in memory or in
    a file), then a JSON 401. The app never saw a body."""
    port, app = front(FakeEngine())
    body = b"x" * (40 * 2**20)
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
        f"boundary=b\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = send(port, head)
    sock.sendall(body)
    reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 401") and b'"unauthorized"' in reply
    assert get_queue(app).stats()["queued"] == 0


def test_a_refused_client_waiting_to_send_its_body_is_answered_at_once(front) -> None:
    """curl sends "Expect: 100-continue" before a large body: a refused request gets its 401
    straight away (no "100 Continue", the body never sent) and the connection is closed."""
    port, app = front(FakeEngine())
    started = time.monotonic()
    sock = send(
        port,
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 99999999\r\n\r\n",
    )
    reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 401") and b"100 Continue" not in reply
    assert b"Connection: close" in reply and time.monotonic() - started < 2.0
