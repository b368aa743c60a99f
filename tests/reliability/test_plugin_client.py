"""The plug-in's client library (gimp_plugin/neural_style/nst_client.py) against servers that
misbehave: garbage answers, a wrong-size or broken result, silence, a server that vanishes or
restarts mid-job. Every case must end in a readable NstError (what GIMP shows), within the
timeout, and never in a "success" with a picture that is not the job's.

The servers are stdlib http.server stubs on 127.0.0.1 free ports, started and stopped here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.reliability.helpers import gradient, import_nst_client, png

nst_client = import_nst_client()

JOB_ID = "a" * 32
CONTENT = png(gradient(40, 32))


class Stub:
    """A server whose answer to each request is ``behave(handler)``."""

    def __init__(self, behave: Callable[[BaseHTTPRequestHandler], None]) -> None:
        stub = self
        self.behave = behave
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                stub.requests.append(f"{self.command} {self.path}")
                stub.behave(self)

            do_GET = do_POST = do_DELETE = _any  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Callable[..., Stub]]:
    stubs: list[Stub] = []

    def start(behave) -> Stub:
        stubs.append(Stub(behave))
        return stubs[-1]

    yield start
    for s in stubs:
        s.close()


def send(handler, status: int, body: bytes, ctype: str = "application/json") -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def protocol(result: Callable[[BaseHTTPRequestHandler], None], state: str = "done"):
    """A server that follows the protocol up to the result, which ``result`` answers."""

    def behave(h) -> None:
        if h.command == "POST":
            send(h, 202, json.dumps({"id": JOB_ID, "state": "queued"}).encode())
        elif h.path.endswith("/result"):
            result(h)
        elif h.command == "GET":
            send(h, 200, json.dumps({"state": state, "progress": {}, "error": "boom"}).encode())
        else:
            send(h, 200, b"{}")

    return behave


def run(url: str, timeout: float = 5.0) -> bytes:
    client = nst_client.NstClient(url, timeout=timeout)
    return nst_client.run_job(client, CONTENT, [CONTENT], {"iterations": 1}, poll_interval=0.01)


def assert_readable(exc: BaseException, *words: str) -> None:
    assert isinstance(exc, nst_client.NstError), repr(exc)
    text = str(exc)
    assert "Traceback" not in text and len(text) < 600, text
    for word in words:
        assert word.lower() in text.lower(), text


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"<html><body>Welcome to nginx</body></html>", "text/html", 200),
        (b"\x00\xff garbage \x89", "application/octet-stream", 200),
        (b"[1, 2, 3]", "application/json", 200),
        (b"<html>Bad Gateway</html>", "text/html", 502),
        (b"", "text/plain", 500),
    ],
)
def test_a_server_answering_garbage_gives_a_readable_error(stub, body, ctype, status) -> None:
    s = stub(lambda h: send(h, status, body, ctype))
    with pytest.raises(nst_client.NstError) as info:
        run(s.url)
    assert_readable(info.value)
    text = str(info.value).lower()
    assert "server" in text or s.url in text, text  # says who answered it


def test_a_garbage_result_is_not_a_picture(stub) -> None:
    s = stub(protocol(lambda h: send(h, 200, b"this is not a PNG", "image/png")))
    data = run(s.url)
    # the plug-in decodes it before making a layer: a ValueError it reports, no layer made
    with pytest.raises(ValueError, match="PNG"):
        nst_client.decode_png(data)


def test_a_wrong_size_result_is_detectable(stub) -> None:
    wrong = nst_client.encode_png(nst_client.RawImage(7, 5, 3, 8, bytes(7 * 5 * 3)))
    s = stub(protocol(lambda h: send(h, 200, wrong, "image/png")))
    image = nst_client.decode_png(run(s.url))
    # neural_style.py compares this with the layer's 40x32 and refuses before adding a layer
    assert (image.width, image.height) == (7, 5) != (40, 32)


def test_a_failed_job_reports_its_reason(stub) -> None:
    s = stub(protocol(lambda h: send(h, 500, b"{}"), state="failed"))
    with pytest.raises(nst_client.NstError) as info:
        run(s.url)
    assert_readable(info.value, "failed", "boom")


def test_an_unknown_state_is_an_error(stub) -> None:
    s = stub(protocol(lambda h: send(h, 500, b"{}"), state="exploded"))
    with pytest.raises(nst_client.NstError) as info:
        run(s.url)
    assert_readable(info.value, "exploded")


def test_a_silent_server_times_out_with_a_message(stub) -> None:
    release = threading.Event()
    s = stub(lambda h: release.wait(10))  # accepts, reads, never answers
    started = time.monotonic()
    try:
        with pytest.raises(nst_client.NstError) as info:
            run(s.url, timeout=1.0)
    finally:
        release.set()
    assert time.monotonic() - started < 5  # the timeout, not forever
    assert_readable(info.value, "server", "timed out")


def test_a_server_that_vanishes_mid_job_is_a_failure_not_a_success(stub) -> None:
    polls = {"n": 0}
    holder: dict = {}

    def behave(h) -> None:
        if h.command == "POST":
            send(h, 202, json.dumps({"id": JOB_ID}).encode())
            return
        polls["n"] += 1
        if polls["n"] >= 3:  # the server dies: close the listening socket and this connection
            threading.Thread(target=holder["stub"].close, daemon=True).start()
            h.close_connection = True
            h.connection.close()
            return
        send(h, 200, json.dumps({"state": "running", "progress": {"step": 1}}).encode())

    s = stub(behave)
    holder["stub"] = s
    with pytest.raises(nst_client.NstError) as info:
        run(s.url, timeout=2.0)
    assert_readable(info.value, "neural style server")


def test_a_server_restarted_mid_job_is_a_failure(stub) -> None:
    """After a restart the job id is unknown (404): the plug-in must fail, not wait or succeed."""
    polls = {"n": 0}

    def behave(h) -> None:
        if h.command == "POST":
            send(h, 202, json.dumps({"id": JOB_ID}).encode())
            return
        polls["n"] += 1
        if polls["n"] < 3:
            send(h, 200, json.dumps({"state": "running", "progress": {}}).encode())
        else:
            error = {"error": {"code": "not_found", "message": f"no job with id {JOB_ID!r}"}}
            send(h, 404, json.dumps(error).encode())

    s = stub(behave)
    with pytest.raises(nst_client.NstError) as info:
        run(s.url)
    assert isinstance(info.value, nst_client.JobLost)
    assert_readable(info.value, "restarted", "lost")
