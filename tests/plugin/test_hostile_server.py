"""The plug-in's client against a hostile or squatting server on its port (real sockets):
answers of any size are bounded, timeouts are totals, the token never goes to another host or
port, and every malformed answer becomes the client's own readable error."""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "gimp_plugin" / "neural_style"))
sys.path.insert(0, str(HERE))

import nst_client  # noqa: E402
from hostile_server import HostileServer, answer, drip, endless  # noqa: E402

MB = 1 << 20
PLAN = {"processing_size": [64, 48], "enlargement": 2.0, "steps": 150, "work_vs_plain": 2.5}
TIMEOUT = 1.5


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileServer]]:
    servers: list[HostileServer] = []

    def start(behave) -> HostileServer:
        servers.append(HostileServer(behave))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def readable(exc: BaseException, *words: str) -> str:
    assert isinstance(exc, nst_client.NstError), repr(exc)
    text = str(exc)
    assert "Traceback" not in text and len(text) < 700, text
    for word in words:
        assert word.lower() in text.lower(), text
    return text


def peak_memory_of(call: Callable[[], object]) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    error = None
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
        error = exc
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return error, peak


# ------------------------------------------------------------------ size


@pytest.mark.parametrize("declare", [300 * MB, None], ids=["announced", "unannounced"])
def test_a_300_mb_answer_is_refused_with_bounded_memory(hostile, declare) -> None:
    server = hostile(endless(declare))
    client = nst_client.NstClient(server.url, timeout=30)
    started = time.monotonic()
    error, peak = peak_memory_of(client.health)
    assert time.monotonic() - started < 5  # refused, not read to the end
    readable(error, "bytes", "really the neural style server")
    assert peak < 4 * MB, f"the client held {peak / MB:.1f} MB"


def test_a_huge_result_is_refused_at_the_pictures_size(hostile) -> None:
    server = hostile(endless(None, chunk=b"\x89PNG" * 16384))
    client = nst_client.NstClient(server.url, timeout=30)
    error, peak = peak_memory_of(lambda: client.result("a" * 32, size=(40, 32)))
    readable(error, "more than")
    assert peak < 6 * MB, f"the client held {peak / MB:.1f} MB"


def test_a_huge_error_answer_still_gives_a_short_message(hostile) -> None:
    server = hostile(endless(None, chunk=b'{"error": "' + b"z" * 65536, status=500))
    client = nst_client.NstClient(server.url, timeout=30)
    error, peak = peak_memory_of(client.health)
    text = readable(error, "500")
    assert len(text) < 700
    assert peak < 4 * MB, f"the client held {peak / MB:.1f} MB"


# ------------------------------------------------------------------ time


@pytest.mark.parametrize(
    "behave",
    [
        drip(b"HTTP/1.1 200 OK\r\nX-Slow: "),  # headers that never end
        drip(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{"),  # a body that drips
        drip(b"HTTP/1.1 200 OK\r\n\r\n{"),  # no length, never closed
        drip(b"", byte=b"H", every=0.2),  # the status line itself
    ],
    ids=["headers", "body", "unended-body", "status-line"],
)
def test_a_dripping_server_cannot_stretch_the_timeout(hostile, behave) -> None:
    """A byte every 50 ms keeps any per-read timeout from firing; the deadline is total."""
    server = hostile(behave)
    client = nst_client.NstClient(server.url, timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(nst_client.NstError) as info:
        client.health()
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + 1.0, f"{elapsed:.1f} s for a {TIMEOUT} s timeout"
    readable(info.value, "timed out", server.url)


def test_a_silent_upload_target_is_bounded_too(hostile) -> None:
    """A server that never reads the upload: sending blocks, and the deadline still holds."""

    def never_read(send, _request) -> None:
        time.sleep(30)

    server = hostile(never_read)
    client = nst_client.NstClient(server.url, timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(nst_client.NstError) as info:
        client.submit(b"\0" * (8 * MB), [b"\0" * 1024])
    assert time.monotonic() - started < TIMEOUT + 1.0
    readable(info.value, "timed out")


# ------------------------------------------------------------------ the token stays home


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_token_never_follows_a_redirect(hostile, status) -> None:
    elsewhere = hostile(answer(200, b'{"status": "ok"}'))
    squatter = hostile(
        answer(status, b"", Location=f"{elsewhere.url}/v1/health", X_Note="take the token")
    )
    client = nst_client.NstClient(squatter.url, token="s3cret-token", timeout=5)
    with pytest.raises(nst_client.ServerError) as info:
        client.health()
    readable(info.value, "redirect", str(status), "check the server url")
    assert elsewhere.requests == []  # nothing at all went to the other port
    assert squatter.requests[0].headers["authorization"] == "Bearer s3cret-token"


def test_the_token_goes_to_the_configured_port_only(hostile) -> None:
    server = hostile(answer(200, b'{"status": "ok", "version": "x"}'))
    other = hostile(answer(200, b'{"status": "ok"}'))
    nst_client.NstClient(server.url, token="t0ken", timeout=5).health()
    assert [r.headers.get("authorization") for r in server.requests] == ["Bearer t0ken"]
    assert other.requests == []


# ------------------------------------------------------------------ malformed answers


GOOD = {"state": "running", "version": 3, "progress": {"step": 1, "total": 10}}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"state": "running", "progress": {"step": NaN, "total": 10}}', ["JSON", "NaN"]),
        (b'{"state": "running", "progress": {"eta_s": Infinity}}', ["JSON", "Infinity"]),
        (b'{"state": "running", "progress": {"eta_s": -Infinity}}', ["JSON"]),
        (json.dumps({**GOOD, "progress": "half"}).encode(), ["progress"]),
        (json.dumps({**GOOD, "progress": {"step": "3", "total": 10}}).encode(), ["step"]),
        (json.dumps({**GOOD, "progress": {"step": True, "total": 10}}).encode(), ["step"]),
        (json.dumps({**GOOD, "progress": {"step": 1, "total": [10]}}).encode(), ["total"]),
        (json.dumps({**GOOD, "progress": {"size": [1, "2"]}}).encode(), ["size"]),
        (json.dumps({**GOOD, "progress": {"note": {"x": 1}}}).encode(), ["note"]),
        (json.dumps({**GOOD, "state": 7}).encode(), ["state"]),
        (json.dumps({**GOOD, "version": "3"}).encode(), ["version"]),
        (json.dumps({**GOOD, "error": ["boom"]}).encode(), ["error"]),
        (b'{"state": "running", "progress": {"step": 1' + b"0" * 5000 + b"}}", ["JSON"]),
        (b"[" * 50_000 + b"]" * 50_000, ["JSON"]),
        (b"\xff\xfe{}", ["JSON"]),
        (b"", ["JSON"]),
        (b"null", ["Unexpected answer"]),
    ],
)
def test_a_malformed_status_is_the_clients_own_readable_error(hostile, body, words) -> None:
    server = hostile(answer(200, body))
    client = nst_client.NstClient(server.url, timeout=5)
    with pytest.raises(nst_client.ServerError) as info:
        client.status("a" * 32)
    readable(info.value, *words)


def test_run_job_ends_in_its_own_error_on_a_malformed_progress(hostile) -> None:
    """Through the whole polling loop, not just one call: no TypeError from deep inside."""

    def behave(send, request) -> None:
        if request.method == "POST":
            answer(202, b'{"id": "' + b"a" * 32 + b'"}')(send, request)
        elif request.method == "GET":
            doc = {"state": "running", "version": 1, "progress": {"step": 2, "total": "ten"}}
            answer(200, json.dumps(doc).encode())(send, request)
        else:
            answer(200, b"{}")(send, request)

    server = hostile(behave)
    tiny = nst_client.encode_png(nst_client.RawImage(4, 4, 3, 8, bytes(48)))
    with pytest.raises(nst_client.NstError) as info:
        nst_client.run_job(nst_client.NstClient(server.url, timeout=5), tiny, [tiny], None)
    readable(info.value, "progress.total")
    assert any(r.method == "DELETE" for r in server.requests)  # it freed the job


@pytest.mark.parametrize(
    ("call", "body", "words"),
    [
        ("health", b'{"status": NaN}', ["JSON"]),
        ("health", b'{"version": "1"}', ["without a status"]),
        ("params", b'{"params": {"iterations": 3}}', ["description"]),
        ("params", b'{"params": []}', ["description"]),
        ("submit", b'{"id": 42}', ["no usable id"]),
        ("submit", json.dumps({"id": "x" * 1000}).encode(), ["no usable id"]),
        ("plan", b'{"processing_size": [64, 48], "enlargement": 2}', ["/v1/plan"]),
        ("plan", json.dumps(PLAN | {"work_vs_plain": "many"}).encode(), ["/v1/plan"]),
        ("plan", json.dumps(PLAN | {"processing_size": [64, -1]}).encode(), ["/v1/plan"]),
        ("plan", json.dumps(PLAN).replace("2.5", "Infinity").encode(), ["JSON"]),
    ],
)
def test_other_malformed_answers_are_readable_errors(hostile, call, body, words) -> None:
    server = hostile(answer(200, body))
    client = nst_client.NstClient(server.url, timeout=5)
    args = {"submit": (b"png", [b"png"]), "plan": ((128, 96),)}.get(call, ())
    with pytest.raises(nst_client.ServerError) as info:
        getattr(client, call)(*args)
    readable(info.value, *words)


def test_a_server_without_plan_is_too_old_not_broken(hostile) -> None:
    server = hostile(answer(404, b'{"error": {"code": "not_found", "message": "no route"}}'))
    with pytest.raises(nst_client.ServerTooOld) as info:
        nst_client.NstClient(server.url, timeout=5).plan((128, 96))
    readable(info.value, "too old", "install.sh")
