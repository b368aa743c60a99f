"""Shared by the reliability tests and bench/reliability_*.py: test images, multipart bodies,
a real server in a subprocess (real VGG19 engine, waitress, a free 127.0.0.1 port), its memory,
and a fake engine whose phases can be held open so a cancel can land in each one.

Standard library + numpy/Pillow only; nothing here talks to anything but 127.0.0.1 servers it
started itself.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nst_server.engine import Progress
from nst_server.params import StyleParams

REPO = Path(__file__).resolve().parents[2]
TINY = {"iterations": 3, "max_size": 64}

Field = tuple[str, "str | None", bytes]


# --- images -----------------------------------------------------------------------------------


def png(image: Image.Image, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **save)
    return out.getvalue()


def gradient(width: int = 64, height: int = 48, mode: str = "RGB") -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x * y) % 256], axis=2
    ).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def painting(side: int = 64) -> bytes:
    y, x = np.mgrid[0:side, 0:side]
    stripes = (np.sin((x + y) / 4.0)[..., None] * [0.5, -0.5, 0.3] + 0.5) * 255
    return png(Image.fromarray(np.clip(stripes, 0, 255).astype(np.uint8)))


def identity_content(client: int) -> tuple[bytes, tuple[int, int], str]:
    """A content PNG that identifies ``client``: its own size and its own alpha pattern.

    The engine carries the alpha channel through untouched and keeps the size, so a result
    whose (size, alpha hash) is not its own client's was someone else's. Returns the PNG, the
    (width, height) and the SHA-256 of the alpha plane.
    """
    width, height = 64 + client, 48 + (client * 7) % 13
    rng = np.random.default_rng(client)
    rgba = np.asarray(gradient(width, height, "RGBA")).copy()
    rgba[..., 3] = rng.integers(0, 256, (height, width), dtype=np.uint8)
    return png(Image.fromarray(rgba, "RGBA")), (width, height), alpha_hash(rgba[..., 3])


def alpha_hash(alpha: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(alpha, dtype=np.uint8).tobytes()).hexdigest()


def result_identity(data: bytes) -> tuple[tuple[int, int], str]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGBA", image.mode
        return image.size, alpha_hash(np.asarray(image)[..., 3])


# --- HTTP -------------------------------------------------------------------------------------


def multipart(fields: Sequence[Field], boundary: str | None = None) -> tuple[bytes, str]:
    """multipart/form-data: (name, filename or None for a plain field, bytes)."""
    boundary = boundary or uuid.uuid4().hex
    out = io.BytesIO()
    for name, filename, data in fields:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(disposition.encode("utf-8", "surrogatepass") + b"\r\n")
        if filename is not None:
            out.write(b"Content-Type: application/octet-stream\r\n")
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def job_form(content: bytes, style: bytes, params: dict | str | None = None) -> list[Field]:
    fields: list[Field] = [("content", "content.png", content), ("style", "style.png", style)]
    if params is not None:
        text = params if isinstance(params, str) else json.dumps(params)
        fields.append(("params", None, text.encode()))
    return fields


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """``python -m nst_server serve`` on 127.0.0.1:<free port> with the real engine."""

    def __init__(
        self,
        workdir: Path,
        *,
        queue_size: int = 16,
        abandon_after_s: float = 2.0,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_file = self.workdir / "server.log"
        self.queue_size = queue_size
        self.abandon_after_s = abandon_after_s
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "NST_RETRY_AFTER_S": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.peak_rss_kb_seen = 0

    # lifecycle

    def start(self, timeout: float = 180.0) -> LiveServer:
        command = [
            sys.executable,
            "-m",
            "nst_server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-file",
            str(self.log_file),
            "--abandon-after",
            str(self.abandon_after_s),
            "--queue-size",
            str(self.queue_size),
        ]
        with open(self.workdir / "stderr.txt", "ab") as err:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, env=self.env, stdout=err, stderr=err
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}: "
                    + (self.workdir / "stderr.txt").read_text(errors="replace")[-3000:]
                )
            try:
                status, body = self.get_json("/v1/health", timeout=5)
                if status == 200 and body["status"] == "ok":
                    return self
                if body.get("status") == "error":
                    raise RuntimeError(f"server failed to load: {body}")
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {timeout} s")
            time.sleep(0.25)

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    # memory (Linux /proc)

    def memory_kb(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak resident set since start) of the server, in KiB."""
        assert self.process is not None
        out = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    # HTTP

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def get_json(self, path: str, timeout: float = 60.0) -> tuple[int, dict]:
        status, _, data = self.request("GET", path, timeout=timeout)
        return status, json.loads(data)

    def post_form(
        self, path: str, fields: Sequence[Field], timeout: float = 60.0
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        body, content_type = multipart(fields)
        return self.request("POST", path, body, {"Content-Type": content_type}, timeout)

    def healthy(self) -> bool:
        try:
            status, body = self.get_json("/v1/health", timeout=10)
        except OSError:
            return False
        return status == 200 and body.get("status") == "ok"

    def wait_idle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = self.get_json("/v1/health")[1]["queue"]
            if queue["running"] == 0 and queue["queued"] == 0:
                return
            time.sleep(0.1)
        raise AssertionError("the worker stayed busy")

    def wait_state(self, job_id: str, states: Sequence[str], timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            status, body = self.get_json(f"/v1/jobs/{job_id}")
            assert status == 200, body
            if body["state"] in states:
                return body
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not {states} after {timeout} s: {body}")

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); what RELIABILITY.md reports."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, int(np.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


# --- a fake engine whose phases can be held ----------------------------------------------------


class GatedEngine:
    """The engine interface, with a gate in each phase: ``hold("preparing")`` makes the next job
    wait there until ``release()``; ``reached`` is set once it is waiting. Steps take ``step_s``.

    Progress is reported the way the real engine does: preparing, then one event per step; a
    cancelled job's ``on_progress`` raises ``Cancelled`` at the next event.
    """

    device = "cpu"
    weights_description = "gated fake weights (tests)"

    def __init__(self, *, step_s: float = 0.01) -> None:
        self.step_s = step_s
        self.loaded = False
        self.held: str | None = None
        self.reached = threading.Event()
        self._gate = threading.Event()
        self.steps_done = 0
        self.fail_with: BaseException | None = None

    def hold(self, phase: str) -> None:
        self.held, self.reached = phase, threading.Event()
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def _maybe_wait(self, phase: str) -> None:
        if self.held == phase:
            self.reached.set()
            assert self._gate.wait(10), f"test never released the {phase} gate"
            self.held = None

    def load(self) -> None:
        self._maybe_wait("loading")
        self.loaded = True

    def unload(self) -> None:
        self.loaded = False

    def stylize(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        params: StyleParams,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        mask: np.ndarray | None = None,
        init_image: np.ndarray | None = None,
    ) -> np.ndarray:
        notify = on_progress or (lambda event: None)
        h, w = content.shape[:2]
        notify(Progress("preparing", 0, params.iterations, 0.0, size=(w, h)))
        self._maybe_wait("preparing")
        if self.fail_with is not None:
            raise self.fail_with
        for step in range(1, params.iterations + 1):
            time.sleep(self.step_s)
            self.steps_done += 1
            notify(
                Progress(
                    "optimising",
                    step,
                    params.iterations,
                    step * self.step_s,
                    (params.iterations - step) * self.step_s,
                    {"total": 1.0},
                    size=(w, h),
                    preview=content[..., :3],
                )
            )
            if step == 1:
                self._maybe_wait("optimising")
        return content.copy()


def import_nst_client():  # noqa: ANN201 - the plug-in's module
    """The plug-in's client library, imported the way its own tests do (GIMP's plug-in folder)."""
    folder = str(REPO / "gimp_plugin" / "neural_style")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import nst_client

    return nst_client
