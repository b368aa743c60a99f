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
        self.jobs: dict[str, dict[str, Any]] = {}
        self.uploads: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        #: merged into every running job's progress (e.g. scale/scales/note)
        self.progress_extra: dict[str, Any] = {}
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

        def _authorised(self) -> bool:
            if state.token and self.headers.get("Authorization") != f"Bearer {state.token}":
                self._error(401, "unauthorized", "missing or wrong bearer token")
                return False
            return True

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if not self._authorised():
                return
            parts = self.path.strip("/").split("/")
            if self.path == "/v1/health":
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
            elif self.path == "/v1/params":
                self._send(200, PARAMS_SCHEMA)
            elif len(parts) >= 3 and parts[:2] == ["v1", "jobs"]:
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
                    job["polls"] += 1
                    if job["state"] == "running" and job["polls"] > state.steps:
                        job["state"] = "failed" if state.fail_with else "done"
                        job["error"] = state.fail_with
                    step = min(job["polls"], state.steps)
                    self._send(
                        200,
                        {
                            "state": job["state"],
                            "error": job["error"],
                            "progress": {
                                "phase": "optimising",
                                "step": step,
                                "total": state.steps,
                                "eta_s": float(state.steps - step),
                                **state.progress_extra,
                            },
                        },
                    )
            else:
                self._error(404, "not_found", "no such path")

        def do_POST(self) -> None:  # noqa: N802
            if not self._authorised():
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
            with state.lock:
                state.uploads.append(upload)
                state.jobs[job_id] = {
                    "state": "running",
                    "polls": 0,
                    "error": None,
                    "result": nst_client.encode_png(inverted),
                }
            self._send(202, {"id": job_id})

        def do_DELETE(self) -> None:  # noqa: N802
            parts = self.path.strip("/").split("/")
            with state.lock:
                job = state.jobs.get(parts[-1])
                if job is None:
                    self._error(404, "not_found", "no such job")
                    return
                job["state"] = "cancelled"
                state.deleted.append(parts[-1])
            self._send(200, {"state": "cancelled"})

    return Handler


def serve(port: int, state: FakeState | None = None) -> ThreadingHTTPServer:
    return ThreadingHTTPServer(("127.0.0.1", port), make_handler(state or FakeState()))


if __name__ == "__main__":
    serve(int(sys.argv[1])).serve_forever()
