"""A studio on 127.0.0.1 for tests and the benchmark: a real ``redis-server`` on a free port
with its own config and folder, real ``python -m nst_server worker`` processes (the real VGG19)
and a real front (``serve --broker``, tests/live_server.LiveServer).

Nothing here touches a system Redis: each RedisServer is started with a config written here.
"""

from __future__ import annotations

import http.client
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.live_server import REPO, LiveServer, free_port

#: Artists of the test studio's tokens file: name -> admin.
ARTISTS = {"alice": False, "bob": False, "boss": True}
#: A job the real engine does in well under a second on one CPU thread.
SMALL = {"iterations": 2, "max_size": 64}
#: A job that runs until it is cancelled or finished (Adam does not stop early).
LONG = {"iterations": 5000, "max_size": 64, "optimizer": "adam"}


def redis_server_binary() -> str:
    """``redis-server``; a skip on a developer machine without it, a failure in CI."""
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed (apt-get install redis-server; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


class RedisServer:
    """``redis-server`` on 127.0.0.1:<free port>, append-only file on (jobs survive a
    restart), its files in ``folder``."""

    def __init__(self, folder: Path, port: int | None = None, password: str | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen | None = None
        self.config = folder / "redis.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode yes\ndir {folder}\n"
            'appendonly yes\nappendfsync always\nsave ""\nlogfile redis.log\n'
            + (f"requirepass {password}\n" if password else "")
        )

    @property
    def url(self) -> str:
        secret = f":{self.password}@" if self.password else ""
        return f"redis://{secret}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [redis_server_binary(), str(self.config)],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start: {self.log()[-2000:]}")
            time.sleep(0.05)

    def client(self):  # noqa: ANN201 - redis.Redis
        import redis

        return redis.Redis(port=self.port, password=self.password)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes its append-only file and exits
            self.process.wait(20)

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Worker:
    """``python -m nst_server worker`` on the studio's Redis; its log in ``folder``."""

    def __init__(
        self, folder: Path, broker: str, env: dict[str, str], *extra: str, name: str = "w"
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_file = folder / f"{name}.log"
        self.stderr_file = folder / f"{name}.stderr"
        self.command = [
            sys.executable,
            "-m",
            "nst_server",
            "worker",
            "--broker",
            broker,
            "--tf-threads",
            "1",
            "--log-file",
            str(self.log_file),
            *extra,
        ]
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> Worker:
        with open(self.stderr_file, "ab") as err:
            self.process = subprocess.Popen(
                self.command, cwd=self.folder, env=self.env, stdout=err, stderr=err
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


class Studio:
    """Redis, workers and a front, started together; ``tokens[name]`` is each artist's."""

    def __init__(self, folder: Path, *, workers: int = 2, worker_timeout_s: float = 4.0) -> None:
        self.folder = folder
        self.redis = RedisServer(folder / "redis")
        self.tokens = {name: secrets.token_urlsafe(32) for name in ARTISTS}
        self.tokens_file = folder / "tokens"
        self.tokens_file.write_text(
            "# name token [admin]\n"
            + "".join(
                f"{name} {self.tokens[name]}{' admin' if admin else ''}\n"
                for name, admin in ARTISTS.items()
            )
        )
        self.tokens_file.chmod(0o600)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "XDG_CONFIG_HOME": str(folder / "config"),
            "XDG_STATE_HOME": str(folder / "state"),
            "NST_WORKER_TIMEOUT_S": str(worker_timeout_s),
            "NST_RETRY_AFTER_S": "1",
        }
        self.worker_count = workers
        self.workers: list[Worker] = []
        self.front: LiveServer | None = None

    def start(self, *, front_env: dict[str, str] | None = None) -> Studio:
        self.redis.start()
        for i in range(self.worker_count):
            self.add_worker(name=f"worker{i}")
        self.front = LiveServer(
            self.folder / "front",
            abandon_after_s=30.0,
            env={
                "NST_BROKER": self.redis.url,
                "NST_TOKENS_FILE": str(self.tokens_file),
                "NST_WORKER_TIMEOUT_S": self.env["NST_WORKER_TIMEOUT_S"],
                **(front_env or {}),
            },
        )
        self.front.token = self.tokens["alice"]
        self.front.start(timeout=300)  # "ok" once a worker has loaded VGG19
        self.wait_workers_ready(self.worker_count)
        return self

    def add_worker(self, *extra: str, name: str) -> Worker:
        worker = Worker(self.folder / "workers", self.redis.url, self.env, *extra, name=name)
        self.workers.append(worker.start())
        return worker

    def health(self) -> dict:
        assert self.front is not None
        status, _, data = self.front.request("GET", "/v1/health", headers=self.auth("boss"))
        assert status == 200, data
        import json

        return json.loads(data)

    def wait_workers_ready(self, count: int, timeout: float = 300.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            workers = [w for w in self.health().get("workers", []) if w["status"] == "ok"]
            if len(workers) >= count:
                return workers
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} workers not ready: {self.health()}")
            time.sleep(0.5)

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def stop(self) -> None:
        if self.front is not None:
            self.front.stop()
        for worker in self.workers:
            worker.stop()
        self.redis.stop()


class TlsProxy:
    """nginx with install/studio/nginx.conf in front of ``front`` on 127.0.0.1:<free port>,
    TLS with a self-signed certificate for ``name`` made here with openssl."""

    def __init__(self, folder: Path, front_port: int, name: str = "studio.test") -> None:
        for tool in ("nginx", "openssl"):
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
                message = f"{tool} is not installed (apt-get install {tool}; .ci/run does)"
                if os.environ.get("CI"):
                    pytest.fail(message)
                pytest.skip(message)
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.certificate = folder / "cert.pem"
        key = folder / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
            + ["-keyout", str(key), "-out", str(self.certificate), "-subj", f"/CN={name}"]
            + ["-addext", f"subjectAltName=DNS:{name}"],
            check=True,
            capture_output=True,
        )
        site = (REPO / "install" / "studio" / "nginx.conf").read_text()
        for placeholder, value in {
            "LISTEN": f"127.0.0.1:{self.port}",
            "SERVER_NAME": name,
            "CERTIFICATE": str(self.certificate),
            "CERTIFICATE_KEY": str(key),
            "FRONT": f"127.0.0.1:{front_port}",
        }.items():
            site = site.replace("{{" + placeholder + "}}", value)
        (folder / "site.conf").write_text(site)
        temp = folder / "temp"
        temp.mkdir(exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        (folder / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\n"
            f"error_log {folder}/error.log;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n  access_log {folder}/access.log;\n"
            f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
            f"  fastcgi_temp_path {temp}/fastcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n"
            f"  scgi_temp_path {temp}/scgi;\n  include {folder}/site.conf;\n}}\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> TlsProxy:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen(
            [nginx, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = self.folder / "error.log"
                    raise RuntimeError(
                        f"nginx did not start: {log.read_text() if log.exists() else ''}"
                    ) from None
                time.sleep(0.1)

    def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, bytes]:
        """One HTTPS request to 127.0.0.1 naming ``self.name`` (SNI and Host), the
        certificate checked against the self-signed one."""
        context = ssl.create_default_context(cafile=str(self.certificate))
        connection = http.client.HTTPSConnection(self.name, self.port, context=context)
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        connection.sock = context.wrap_socket(raw, server_hostname=self.name)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
