"""Security in one process: the token on every route (health answering briefly without it),
401s logged with the client's address, jobs visible to their owner only, no client-named paths,
uploads never on disk, no pickle/eval of input, no CORS, no image data in logs. The real server
and a real browser: test_security_live.py and tests/browser.

File and code events are observed with a CPython audit hook (PEP 578) while requests with hostile
file names, paths in params and big uploads are handled.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_server.api import create_app, get_queue
from nst_server.auth import Authenticator, Principal
from nst_server.settings import ServerSettings
from tests.api.helpers import TEST_TOKEN, make_test_app
from tests.fake_engine import FakeEngine
from tests.live_server import multipart
from tests.reliability.helpers import REPO, gradient, painting, png

ROUTES = [
    ("GET", "/v1/params"),
    ("POST", "/v1/jobs"),
    ("GET", f"/v1/jobs/{'0' * 32}"),
    ("DELETE", f"/v1/jobs/{'0' * 32}"),
    ("GET", f"/v1/jobs/{'0' * 32}/result"),
    ("GET", f"/v1/jobs/{'0' * 32}/preview"),
    ("POST", f"/v1/jobs/{'0' * 32}/finish"),
    ("POST", "/v1/stylize"),
    ("GET", "/no/such/route"),
]


@pytest.fixture
def make():
    apps = []

    def build(**settings):
        app = make_test_app(FakeEngine(), **{"abandon_after_s": 0, **settings})
        apps.append(app)
        return app.test_client()

    yield build
    for app in apps:
        get_queue(app).close()


def form(content: bytes | None = None, name: str = "content.png", params: str | None = None):
    data = {
        "content": (io.BytesIO(content or png(gradient(40, 32))), name),
        "style": (io.BytesIO(painting(48)), name),
    }
    if params is not None:
        data["params"] = params
    return data


def raw_post(client, path: str, content: bytes | None = None, name: str = "c.png", params=None):
    """POST a body encoded here: the test client's own encoder spools big bodies to /tmp."""
    fields = [("content", name, content or png(gradient(40, 32))), ("style", name, painting(48))]
    if params is not None:
        fields.append(("params", None, params.encode()))
    body, ctype = multipart(fields)
    return client.post(path, data=body, headers={"Content-Type": ctype})


# --- the token --------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_the_token(make, method, path) -> None:
    client = make()
    client.environ_base.pop("HTTP_AUTHORIZATION")
    for header in (None, "Bearer wrong", f"Basic {TEST_TOKEN}", f"Bearer {TEST_TOKEN}x", "Bearer "):
        headers = {"Authorization": header} if header else {}
        response = client.open(path, method=method, headers=headers)
        assert response.status_code == 401, (header, response.data)
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert TEST_TOKEN not in response.get_data(as_text=True)
    response = client.open(path, method=method, headers={"Authorization": f"Bearer {TEST_TOKEN}"})
    assert response.status_code != 401


def test_health_without_the_token_says_only_status_and_version(make) -> None:
    client = make()
    full = client.get("/v1/health").get_json()
    client.environ_base.pop("HTTP_AUTHORIZATION")
    brief = client.get("/v1/health").get_json()
    assert set(brief) == {"status", "version"} and brief["version"] == full["version"]
    assert {"weights", "log", "queue"} <= set(full)


def test_401s_are_logged_with_the_clients_address(make, caplog) -> None:
    client = make()
    client.environ_base.pop("HTTP_AUTHORIZATION")
    with caplog.at_level(logging.WARNING, logger="nst_server.api"):
        client.get("/v1/params", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert any("401" in r.getMessage() and "203.0.113.9" in r.getMessage() for r in caplog.records)


class TwoArtists(Authenticator):
    """Two tokens, two people, neither an admin (the studio's tokens file will do this)."""

    TOKENS = {"a" * 40: Principal("ann"), "b" * 40: Principal("bob")}

    def __init__(self) -> None:
        super().__init__("a" * 40)

    def identify(self, authorization: str | None) -> Principal | None:
        return self.TOKENS.get((authorization or "").removeprefix("Bearer "))


def test_a_job_is_seen_only_by_who_made_it() -> None:
    app = create_app(ServerSettings(), engine=FakeEngine(step_s=0.05), authenticator=TwoArtists())
    try:
        client = app.test_client()
        ann = {"Authorization": f"Bearer {'a' * 40}"}
        bob = {"Authorization": f"Bearer {'b' * 40}"}
        params = '{"iterations": 100, "max_size": 64}'
        job_id = client.post("/v1/jobs", data=form(params=params), headers=ann).get_json()["id"]
        for method, suffix in (
            ("GET", ""),
            ("GET", "/result"),
            ("GET", "/preview"),
            ("POST", "/finish"),
            ("DELETE", ""),
        ):
            response = client.open(f"/v1/jobs/{job_id}{suffix}", method=method, headers=bob)
            assert response.status_code == 404, (method, suffix)
        assert client.get(f"/v1/jobs/{job_id}", headers=ann).status_code == 200
        assert client.delete(f"/v1/jobs/{job_id}", headers=ann).status_code in (200, 202)
    finally:
        get_queue(app).close()


# --- what request handling touches ------------------------------------------------------------

_WATCHED = (
    "open",
    "os.remove",
    "os.rename",
    "os.mkdir",
    "shutil.copyfile",
    "tempfile.mkstemp",
    "tempfile.mkdtemp",
    "pickle.find_class",
    "marshal.loads",
    "exec",
    "compile",
    "subprocess.Popen",
    "os.system",
)
_events: list[tuple[str, tuple]] = []
_recording = threading.Event()


def _hook(event: str, args: tuple, recording=_recording, events=_events, watched=_WATCHED) -> None:
    # Bound at definition: the hook outlives this module's globals at interpreter exit.
    if recording.is_set() and event in watched:
        events.append((event, args))


_hook_installed = False


def _record():
    global _hook_installed
    if not _hook_installed:  # audit hooks cannot be removed: one, switched by an Event
        sys.addaudithook(_hook)
        _hook_installed = True
    _events.clear()
    _recording.set()


def _is_module_read(event: str, args: tuple) -> bool:
    """Python importing a module file (lazy imports in Pillow etc.) is not request handling."""
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return False
    path = os.fsdecode(args[0])
    mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
    return path.endswith((".py", ".pyc", ".so")) and not set(mode) & set("wax+")


def test_requests_touch_no_file_no_pickle_no_eval_and_uploads_stay_in_memory(make) -> None:
    client = make()
    hostile_names = ["../../../../tmp/nst-owned.png", "/etc/passwd", "..\\..\\boot.ini"]
    # > 500 KB: werkzeug's default would spool this part to a file in the system temp dir
    noise = np.random.default_rng(0).integers(0, 256, (480, 480, 3), dtype=np.uint8)
    big = png(Image.fromarray(noise))
    assert len(big) > 500 * 1024
    requests = [
        lambda: raw_post(client, "/v1/stylize", big, hostile_names[0]),
        lambda: raw_post(client, "/v1/jobs", name=hostile_names[1]),
        lambda: raw_post(client, "/v1/jobs", name=hostile_names[2]),
        lambda: raw_post(client, "/v1/jobs", params='{"weights": "/etc/passwd"}'),
        lambda: raw_post(client, "/v1/jobs", params='{"content_layers": "/etc/passwd"}'),
        lambda: raw_post(
            client, "/v1/jobs", params="__import__('os').system('touch /tmp/nst-owned')"
        ),
        lambda: raw_post(client, "/v1/jobs", b"\x80\x04\x95cos\nsystem\n", "x.pkl"),
        lambda: client.get("/v1/jobs/..%2F..%2Fetc%2Fpasswd/result"),
        lambda: client.get("/v1/jobs/%2Fetc%2Fpasswd"),
    ]
    for send in requests:  # warm up lazy imports first
        send()
    _record()
    try:
        statuses = [send().status_code for send in requests]
    finally:
        _recording.clear()
    assert statuses[0] == 200 and all(s < 500 for s in statuses), statuses
    seen = [(e, a) for e, a in _events if not _is_module_read(e, a)]
    assert seen == [], seen
    assert not os.path.exists("/tmp/nst-owned.png") and not os.path.exists("/tmp/nst-owned")


def test_large_upload_parts_are_kept_in_memory(make, monkeypatch) -> None:
    """Regression: werkzeug spooled parts over 500 KB to a file in the shared temp dir."""
    import werkzeug.formparser

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload part went to a temporary file")

    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", no_disk)
    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", no_disk)
    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    client = make()
    noise = np.random.default_rng(1).integers(0, 256, (500, 500, 3), dtype=np.uint8)
    response = raw_post(client, "/v1/jobs", png(Image.fromarray(noise)))
    assert response.status_code == 202, response.data


def test_no_pickle_eval_or_exec_in_the_request_path() -> None:
    for name in ("api.py", "jobs.py", "images.py", "server.py"):
        source = (REPO / "nst_server" / name).read_text()
        for word in (r"\bpickle\b", r"\beval\(", r"\bexec\(", r"\bmarshal\b", r"yaml\.load\("):
            assert not re.search(word, source), f"{name} uses {word}"


# --- CORS and logs ----------------------------------------------------------------------------


def test_no_cors_headers_by_default(make) -> None:
    client = make()
    origin = {"Origin": "https://evil.example"}
    responses = [
        client.get("/v1/health", headers=origin),
        client.options(
            "/v1/jobs",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        ),
        client.post("/v1/jobs", data=form(), headers=origin),
    ]
    for response in responses:
        names = [name.lower() for name, _ in response.headers.items()]
        assert not [n for n in names if n.startswith("access-control")], names


def test_logs_carry_no_image_data(make, caplog) -> None:
    client = make()
    marker = b"NSTMARKER" * 30
    with caplog.at_level(logging.DEBUG):
        client.post("/v1/stylize", data=form(png(gradient(40, 32)) + marker))
        client.post("/v1/jobs", data=form(b"\x89PNG\r\n\x1a\n" + marker))
        client.post("/v1/jobs", data=form(params='{"x": "' + "NSTMARKER" * 10 + '"}'))
    text = caplog.text
    assert "job" in text  # the log did record the requests
    assert "NSTMARKER" * 2 not in text
    assert "\\x89PNG" not in text and "iVBORw0KGgo" not in text
    assert max(len(record.getMessage()) for record in caplog.records) < 2000


def test_job_ids_are_random_128_bit(make) -> None:
    client = make()
    ids = [client.post("/v1/jobs", data=form()).get_json()["id"] for _ in range(4)]
    assert len(set(ids)) == 4 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len({int(i, 16) % 1000 for i in ids}) > 1  # not sequential


def test_openapi_says_no_cors_and_loopback() -> None:
    text = Path(REPO / "nst_server" / "openapi.yaml").read_text()
    assert "No CORS headers" in text and "127.0.0.1" in text and "bearer" in text
