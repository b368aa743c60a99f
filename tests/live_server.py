"""A real ``python -m nst_server serve`` (waitress, real VGG19 engine) in a subprocess on a free
127.0.0.1 port, driven over HTTP with the standard library only; multipart bodies for it.

Shared by tests/api/test_server_live.py, tests/reliability and bench/*.py. Nothing here talks to
anything but 127.0.0.1 servers it started itself.

    server = LiveServer(tmp_path, abandon_after_s=2.0).start()   # waits for /v1/health "ok"
    status, headers, data = server.post_form("/v1/jobs", job_form(content_png, style_png))
    body = server.wait_state(json.loads(data)["id"], ("done", "failed", "cancelled"))
    server.stop()

Each LiveServer keeps its own token, config, state (log) and runtime (spool) folders in its work
folder: it never sees the user's real token. Its requests carry the token unless told not to.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: A job the real engine finishes in about a second on a CPU: 3 steps at 64 px.
TINY = {"iterations": 3, "max_size": 64}
FINAL_STATES = ("done", "failed", "cancelled")

#: One multipart/form-data field: (name, filename or None for a plain field, bytes).
Field = tuple[str, "str | None", bytes]


def import_nst_client():  # noqa: ANN201 - the plug-in's module
    """The plug-in's client library, imported the way its own tests do (GIMP's plug-in folder)."""
    folder = str(REPO / "gimp_plugin" / "neural_style")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import nst_client

    return nst_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def job_form(content: bytes, style: bytes, params: dict | str | None = TINY) -> list[Field]:
    """The fields of POST /v1/jobs and /v1/stylize; ``params`` as a dict, raw text or none."""
    fields: list[Field] = [("content", "content.png", content), ("style", "style.png", style)]
    if params is not None:
        text = params if isinstance(params, str) else json.dumps(params)
        fields.append(("params", None, text.encode()))
    return fields


def session_token_file() -> Path:
    """The token file of servers started by tests: in the test session's own config folder
    (tests/conftest.py moves XDG_CONFIG_HOME), created on first use."""
    from nst_server.auth import default_token_path, ensure_token

    path = default_token_path()
    ensure_token(path)
    return path


def session_token() -> str:
    """The token in ``session_token_file()``."""
    from nst_server.auth import read_token

    return read_token(session_token_file())


def serve_command(
    port: int,
    log_file: Path,
    *,
    abandon_after_s: float | None = None,
    queue_size: int | None = None,
    token_file: Path | None = None,
    tokens: bool = True,
) -> list[str]:
    """The argv of ``python -m nst_server serve`` on 127.0.0.1:``port`` (None: server default;
    the token file: ``session_token_file()``; ``tokens`` False: a version from before them)."""
    command = [sys.executable, "-m", "nst_server", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-file", str(log_file)]
    if tokens:
        command += ["--token-file", str(token_file or session_token_file())]
    if abandon_after_s is not None:
        command += ["--abandon-after", str(abandon_after_s)]
    if queue_size is not None:
        command += ["--queue-size", str(queue_size)]
    return command


class LiveServer:
    """``python -m nst_server serve`` on 127.0.0.1:<free port> with the real engine.

    Its log is ``workdir/server.log``, its stdout + stderr ``workdir/stderr.txt``. ``env`` is
    added to the environment (e.g. ``NST_MAX_UPLOAD_BYTES``); ``None`` for ``queue_size`` or
    ``abandon_after_s`` means the server's own default. ``start()`` again after ``stop()`` or
    ``kill9()`` restarts it on the same port.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        queue_size: int | None = None,
        abandon_after_s: float | None = 2.0,
        env: dict[str, str] | None = None,
        port: int | None = None,
        repo: Path = REPO,
    ) -> None:
        self.workdir = Path(workdir)
        self.repo = Path(repo)  # another checkout, e.g. an older version (bench/security_probe)
        #: False for a version from before tokens: then no request carries one.
        self.tokens = (self.repo / "nst_server" / "auth.py").exists()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_file = self.workdir / "server.log"
        self.stderr_file = self.workdir / "stderr.txt"
        self.queue_size = queue_size
        self.abandon_after_s = abandon_after_s
        self.runtime_dir = self.workdir / "runtime"  # its private spool folder is in here
        self.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        self.token_file = self.workdir / "config" / "neural-style" / "token"
        from nst_server.auth import ensure_token

        self.token, _ = ensure_token(self.token_file)
        if not self.tokens:
            self.token = ""
        self.env = {
            **os.environ,
            "PYTHONPATH": str(self.repo),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "NST_RETRY_AFTER_S": "1",  # clients told to come back (429) do so quickly
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
            "XDG_STATE_HOME": str(self.workdir / "state"),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # lifecycle

    def start(self, timeout: float = 180.0) -> LiveServer:
        """Start the process and wait until /v1/health says "ok"; raise RuntimeError if it
        exits, reports "error" or is not healthy within ``timeout`` seconds."""
        command = serve_command(
            self.port,
            self.log_file,
            abandon_after_s=self.abandon_after_s,
            queue_size=self.queue_size,
            token_file=self.token_file,
            tokens=self.tokens,
        )
        with open(self.stderr_file, "ab") as err:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, env=self.env, stdout=err, stderr=err
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n" + self.stderr_tail()
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
                self.stop()
                raise RuntimeError(
                    f"server not healthy after {timeout} s:\n{self.log_text()[-3000:]}\n"
                    + self.stderr_tail()
                )
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

    def __enter__(self) -> LiveServer:
        if self.process is None or self.process.poll() is not None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def timed_job(self, content: bytes, style: bytes, params: dict) -> tuple[float, float]:
        """(seconds from submitting the PNGs to the result's bytes, seconds the server's engine
        spent on it) through the plug-in's own client (``nst_client.run_job``: long polls),
        exactly as GIMP does it (benchmarks)."""
        nst_client = import_nst_client()
        statuses: list[dict] = []
        started = time.perf_counter()
        nst_client.run_job(
            self.plugin_client(), content, [style], params, on_status=statuses.append
        )
        seconds = time.perf_counter() - started
        return seconds, float(statuses[-1]["progress"]["engine_s"])

    def plugin_client(self, **kwargs: object):  # noqa: ANN201 - nst_client.NstClient
        """The plug-in's client for this server, with its token."""
        nst_client = import_nst_client()
        return nst_client.NstClient(self.url, self.token, **kwargs)

    @property
    def spool_dir(self) -> Path:
        """Where the server may spool request bodies (private, 0700)."""
        return self.runtime_dir / "neural-style"

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

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
        *,
        token: bool = True,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request; it carries the token unless ``token`` is False (or ``headers`` give
        another Authorization)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            sent = {**(self.auth if token else {}), **(headers or {})}
            conn.request(method, path, body=body, headers=sent)
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
        """Wait until no job runs or waits; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = self.get_json("/v1/health")[1]["queue"]
            if queue["running"] == 0 and queue["queued"] == 0:
                return
            time.sleep(0.1)
        raise AssertionError("the worker stayed busy")

    def wait_state(
        self,
        job_id: str,
        states: Sequence[str] = FINAL_STATES,
        timeout: float = 60.0,
        *,
        min_step: int | None = None,
    ) -> dict:
        """Poll the job until its state is one of ``states`` (or, with ``min_step``, until it
        has done that many steps); AssertionError with the log's tail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            status, body = self.get_json(f"/v1/jobs/{job_id}")
            assert status == 200, body
            if body["state"] in states:
                return body
            if min_step is not None and body["progress"].get("step", 0) >= min_step:
                return body
            time.sleep(0.05)
        raise AssertionError(
            f"job {job_id} not {states} after {timeout} s: {body}\n{self.log_text()[-2000:]}"
        )

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stderr_tail(self, chars: int = 3000) -> str:
        if not self.stderr_file.exists():
            return ""
        return self.stderr_file.read_text(errors="replace")[-chars:]
