"""A tiny stdlib stand-in for nst_server's HTTP API, for the one-layer tests of nst_client.

Only the client's side of the contract is exercised with it (request shapes, polling, errors,
starting a server process); the real server is tested against in test_real_server.py and the
GIMP end-to-end test. Run as a script it serves until killed:
``python fake_server.py PORT`` (used to test ensure_server's start-up path).

The "stylised" result is the content PNG with its colours inverted, so a test can tell that the
content went up and the result came back.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "gimp_plugin" / "neural_style"))
import nst_client  # noqa: E402

PARAMS_SCHEMA: dict[str, Any] = {
    "params": {
        "iterations": {"type": "integer", "default": 150, "minimum": 1, "maximum": 5000},
        "max_size": {"type": "integer", "default": 256, "minimum": 0, "maximum": 8192},
        "optimizer": {"type": "string", "default": "lbfgs", "choices": ["lbfgs", "adam"]},
        "seed": {"type": "integer", "default": 0, "minimum": 0, "maximum": 2**31 - 1},
        "content_weight": {"type": "number", "default": 1.0, "minimum": 0.0, "maximum": 1e6},
        "style_weight": {"type": "number", "default": 20.0, "minimum": 0.0, "maximum": 1e6},
        "preserve_colors": {"type": "boolean", "default": False},
        "style_scale": {"type": "number", "default": 1.0, "minimum": 0.1, "maximum": 4.0},
        "style_blend": {"type": "array", "default": [], "minimum": 0.0, "maximum": 1e6},
    },
    "limits": {},
}


class FakeState:
    def __init__(
        self, steps: int = 3, fail_with: str | None = None, token: str | None = None
    ) -> None:
        self.steps = steps  # polls a job stays "running" before it is done
        self.fail_with = fail_with
        self.token = token
        self.tokens_seen: list[str | None] = []  # the Authorization header of each request
        self.jobs: dict[str, dict[str, Any]] = {}
        self.uploads: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        #: merged into every running job's progress (e.g. scale/scales/note)
        self.progress_extra: dict[str, Any] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of each request
        self.queued_polls = 0  # polls a new job stays "queued" before it runs
        self.has_finish = True  # False: a server from before POST /v1/jobs/<id>/finish
        self.finished: list[str] = []  # ids a finish was asked for
        self.previews: list[tuple[str, int, int]] = []  # (job id, width, height) served
        self.status_delay = 0.0  # seconds each status answer takes
        self.status_active = 0
        self.status_max_active = 0  # most status requests in flight at once
        self.lock = threading.Lock()


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str | None, bytes]]:
    """(name, filename, data) of each part, with the standard library's MIME parser."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return [
        (
            part.get_param("name", header="content-disposition"),
            part.get_filename(),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    ]


def make_handler(state: FakeState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _send(
            self,
            status: int,
            doc: Any = None,
            body: bytes | None = None,
            ctype: str = "application/json",
        ) -> None:
            data = body if body is not None else json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, {"error": {"code": code, "message": message}})

        def _has_token(self) -> bool:
            state.tokens_seen.append(self.headers.get("Authorization"))
            return self.headers.get("Authorization") == f"Bearer {state.token}"

        def _authorised(self) -> bool:
            if state.token and not self._has_token():
                self._error(
                    401, "unauthorized", "missing or wrong token: run nst-server token --show"
                )
                return False
            return True

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path, _, query = self.path.partition("?")
            state.requests.append(("GET", self.path))
            if path == "/v1/health" and state.token and not self._has_token():
                # As the real server: without a valid token, health says only this much.
                self._send(200, {"status": "ok", "version": "fake"})
                return
            if not self._authorised():
                return
            parts = path.strip("/").split("/")
            if path == "/v1/health":
                self._send(
                    200,
                    {
                        "status": "ok",
                        "version": "fake",
                        "backbone": "none",
                        "weights": "none",
                        "device": "cpu",
                        "queue": 0,
                        "log": "",
                    },
                )
            elif path == "/v1/params":
                self._send(200, PARAMS_SCHEMA)
            elif len(parts) >= 3 and parts[:2] == ["v1", "jobs"]:
                self._job_get(parts, urllib.parse.parse_qs(query))
            else:
                self._error(404, "not_found", "no such path")

        def _job_get(self, parts: list[str], query: dict[str, list[str]]) -> None:
            with state.lock:
                job = state.jobs.get(parts[2])
            if job is None:
                self._error(404, "not_found", f"no job {parts[2]}")
                return
            if len(parts) == 4 and parts[3] == "result":
                if job["state"] != "done":
                    self._error(409, "not_done", "job is not done")
                else:
                    self._send(200, body=job["result"], ctype="image/png")
                return
            if len(parts) == 4 and parts[3] == "preview":
                self._preview(job, int(query.get("size", ["256"])[0]))
                return
            with state.lock:
                state.status_active += 1
                state.status_max_active = max(state.status_max_active, state.status_active)
            try:
                time.sleep(state.status_delay)
                self._send(200, _advance(state, job))
            finally:
                with state.lock:
                    state.status_active -= 1

        def _preview(self, job: dict[str, Any], size: int) -> None:
            if job["step"] == 0:
                self._error(409, "no_preview", "no preview yet")
                return
            width, height = job["size"]
            scale = min(1.0, size / max(width, height))
            w, h = max(1, round(width * scale)), max(1, round(height * scale))
            grey = job["step"] * 40 % 256  # each step's picture differs
            state.previews.append((job["id"], w, h))
            png = nst_client.encode_png(
                nst_client.RawImage(w, h, 3, 8, bytes([grey]) * (w * h * 3))
            )
            self._send(200, body=png, ctype="image/png")

        def do_POST(self) -> None:  # noqa: N802
            state.requests.append(("POST", self.path))
            if not self._authorised():
                return
            parts = self.path.strip("/").split("/")
            if len(parts) == 4 and parts[:2] == ["v1", "jobs"] and parts[3] == "finish":
                self._finish(parts[2])
                return
            if self.path != "/v1/jobs":
                self._error(404, "not_found", "no such path")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            fields = parse_multipart(self.headers.get("Content-Type", ""), body)
            names = [name for name, _, _ in fields]
            if "content" not in names or "style" not in names:
                self._error(400, "bad_request", "content and style are required")
                return
            upload = {"fields": fields}
            params_raw = next((d for n, _, d in fields if n == "params"), b"{}")
            upload["params"] = json.loads(params_raw)
            content = nst_client.decode_png(next(d for n, _, d in fields if n == "content"))
            inverted = nst_client.RawImage(
                content.width,
                content.height,
                content.channels,
                8,
                bytes(
                    255 - b
                    for b in (content.pixels if content.bit_depth == 8 else content.pixels[1::2])
                ),
            )
            job_id = uuid.uuid4().hex
            max_size = upload["params"].get("max_size") or max(content.width, content.height)
            scale = min(1.0, max_size / max(content.width, content.height))
            with state.lock:
                state.uploads.append(upload)
                state.jobs[job_id] = {
                    "id": job_id,
                    "state": "queued" if state.queued_polls else "running",
                    "polls": 0,
                    "step": 0,
                    "error": None,
                    "finish": False,
                    "finished_early": False,
                    "size": [round(content.width * scale), round(content.height * scale)],
                    "result": nst_client.encode_png(inverted),
                }
            self._send(202, {"id": job_id})

        def _finish(self, job_id: str) -> None:
            if not state.has_finish:  # a server from before `finish`: no such route
                self._error(404, "not_found", "no such path")
                return
            with state.lock:
                job = state.jobs.get(job_id)
                if job is None:
                    self._error(404, "not_found", f"no job {job_id}")
                    return
                if job["state"] != "running":
                    self._error(409, "not_running", f"job {job_id} is {job['state']}")
                    return
                job["finish"] = True
                state.finished.append(job_id)
            self._send(202, {"id": job_id, "state": "running"})

        def do_DELETE(self) -> None:  # noqa: N802
            state.requests.append(("DELETE", self.path))
            if not self._authorised():
                return
            parts = self.path.strip("/").split("/")
            with state.lock:
                job = state.jobs.get(parts[-1])
                if job is None:
                    self._error(404, "not_found", "no such job")
                    return
                if job["state"] in ("queued", "running"):
                    job["state"] = "cancelled"
                state.deleted.append(parts[-1])
            self._send(200, {"state": job["state"]})

    return Handler


def _advance(state: FakeState, job: dict[str, Any]) -> dict[str, Any]:
    """One poll of ``job``: it moves one step per poll (queued for ``queued_polls`` polls, then
    ``steps`` steps), or ends at once when a finish was asked for."""
    with state.lock:
        job["polls"] += 1
        if job["state"] == "queued" and job["polls"] > state.queued_polls:
            job["state"] = "running"
        elif job["state"] == "running":
            if job["finish"]:
                job["state"], job["finished_early"] = "done", True
            elif job["step"] >= state.steps:
                job["state"] = "failed" if state.fail_with else "done"
                job["error"] = state.fail_with
            else:
                job["step"] += 1
        step = job["step"]
        progress = {
            "phase": "optimising" if job["state"] == "running" else job["state"],
            "step": step,
            "total": state.steps,
            "eta_s": float(state.steps - step),
            "size": job["size"],
            **state.progress_extra,
        }
        if job["finished_early"]:
            progress["finished_early"] = True
        doc = {
            "id": job["id"],
            "state": job["state"],
            "error": job["error"],
            "progress": progress,
            "engine_version": 1,
        }
        if step:
            doc["preview_step"] = step
        return doc


def serve(port: int, state: FakeState | None = None) -> ThreadingHTTPServer:
    return ThreadingHTTPServer(("127.0.0.1", port), make_handler(state or FakeState()))


if __name__ == "__main__":
    serve(int(sys.argv[1])).serve_forever()
