"""A hostile or squatting "server" on a real socket, for the plug-in client's tests.

Each connection's request is read (headers and a Content-Length body) and recorded; then the
``behave(send, request)`` function answers however it likes: too much, too slowly, a redirect,
JSON that is not quite JSON. Plain sockets rather than http.server, so that an answer can be
anything at all, including half of one.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


Behaviour = Callable[[Callable[[bytes], None], Request], None]


@dataclass
class HostileServer:
    behave: Behaviour
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            request = _read_request(conn)
            if request is None:
                return
            self.requests.append(request)

            def send(data: bytes) -> None:
                if self.stopped.is_set():
                    raise OSError("server stopped")
                conn.sendall(data)

            with contextlib.suppress(OSError):  # the client hung up: what a client may do
                self.behave(send, request)

    def close(self) -> None:
        self.stopped.set()
        self._listener.close()


def _read_request(conn: socket.socket) -> Request | None:
    conn.settimeout(10)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
    except (OSError, ValueError):
        return None
    return Request(method, path, headers, body)


# ----------------------------------------------------------------------------- behaviours


def answer(status: int, body: bytes, ctype: str = "application/json", **headers: str):
    def behave(send, _request) -> None:
        extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
        send(
            f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n".encode()
            + body
        )

    return behave


def endless(declare_length: int | None, chunk: bytes = b"x" * 65536, status: int = 200):
    """An answer that never ends (until the client hangs up), announcing ``declare_length``."""

    def behave(send, _request) -> None:
        length = f"Content-Length: {declare_length}\r\n" if declare_length is not None else ""
        send(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{length}\r\n".encode())
        while True:
            send(chunk)

    return behave


def drip(prefix: bytes, byte: bytes = b"x", every: float = 0.05):
    """Send ``prefix``, then one byte every ``every`` seconds, for ever."""

    def behave(send, _request) -> None:
        send(prefix)
        while True:
            time.sleep(every)
            send(byte)

    return behave
