"""The HTTP front: waitress, with a channel and parser that keep slow or refused clients cheap.

Waitress reads a whole request (headers and body) before a thread runs the app, which is what
keeps threads free from slow clients. On top of it, as soon as a request's headers are in:

- ``on_headers(method, path, headers)`` decides whether its body is stored at all. A request
  the guard refuses (foreign Host, other origin, no token) or whose body is over the upload
  limit has its body read and discarded, never buffered or spooled; the app then answers 401,
  403 or 413 without reading it (the environ carries ``BODY_DROPPED``). A body more than
  ``CUT_OFF_SLACK`` over the limit is not read at all: 413 at once, connection closed. The same
  hook marks a poll of a job as a sign of life at once, even while the poll waits for a thread,
  so a polling client is never taken for gone.
- Headers must arrive within ``header_timeout_s``; beyond ``connection_limit`` connections, the
  oldest one still sending its headers is closed. Slow drips of bytes cannot pin the server.
- Waitress spools bodies over 512 KB to temporary files: ``serve`` points Python's temporary
  directory at a private (0700) folder, and those files are unlinked at once.

Written against waitress 3.0 (pinned in pyproject.toml): it subclasses ``HTTPChannel``,
``HTTPRequestParser`` and ``WSGITask`` and replaces one receiver's buffer.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import waitress
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.task import ErrorTask, WSGITask

from nst_server.settings import ServerSettings

log = logging.getLogger(__name__)

#: Bytes over the upload limit that are still read (and discarded) for a clean 413.
CUT_OFF_SLACK = 2**20

#: (method, path, headers as waitress keeps them: "CONTENT_LENGTH", ...) -> drop the body?
HeadersHook = Callable[[str, str, Mapping[str, str]], bool]


class _DiscardBuffer:
    """A body buffer that keeps nothing: counts what arrives, gives back an empty body."""

    def __init__(self) -> None:
        self.received = 0

    def __len__(self) -> int:
        return self.received

    def append(self, data: bytes) -> None:
        self.received += len(data)

    def get(self, numbytes: int = -1, skip: bool = False) -> bytes:
        return b""

    def skip(self, numbytes: int, allow_prune: bool = False) -> None:
        pass

    def prune(self) -> None:
        pass

    def getfile(self) -> io.BytesIO:
        return io.BytesIO()

    def close(self) -> None:
        pass


class _Parser(HTTPRequestParser):
    on_headers: HeadersHook | None = None  # set on the per-server subclass
    body_dropped = False

    def received(self, data: bytes) -> int:
        had_headers = self.headers_finished
        consumed = super().received(data)
        if not had_headers and self.headers_finished and self.error is None and not self.empty:
            self._headers_arrived()
        return consumed

    def _headers_arrived(self) -> None:
        hook = type(self).on_headers
        if hook is None or not hook(self.command, self.path, self.headers):
            return
        if self.body_rcv is None:
            return  # no body: nothing to drop
        self.body_dropped = True
        if self.expect_continue:
            # The client waits for "100 Continue" before sending the body: answer now instead,
            # and close the connection in case it sends the body anyway.
            self.expect_continue = False
            self.body_rcv = None
            self.completed = True
            self.headers["CONNECTION"] = "close"  # waitress closes after the answer
        else:
            self.body_rcv.buf = _DiscardBuffer()  # read to the end, keep nothing


class _Task(WSGITask):
    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        if getattr(self.request, "body_dropped", False):
            from nst_server.api import BODY_DROPPED  # the app's name for it

            environ[BODY_DROPPED] = True
        return environ


class _ErrorTask(ErrorTask):
    """Waitress' own refusals (a body far over the limit, broken framing, huge headers) as the
    same JSON errors the app gives."""

    upload_limit = 0  # set on the per-server subclass

    def execute(self) -> None:
        error = self.request.error
        if error.code == 413:
            message = (
                f"the upload is larger than this server's limit of {self.upload_limit} bytes "
                "(max_upload_bytes); it was not read. Send smaller images"
            )
        else:
            message = f"{error.reason}: {error.body}"
        body = json.dumps(
            {"error": {"code": _ERROR_CODES.get(error.code, "bad_request"), "message": message}}
        ).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


_ERROR_CODES = {400: "bad_request", 413: "too_large", 431: "headers_too_large", 501: "bad_request"}


class _Channel(HTTPChannel):
    task_class = _Task
    header_timeout_s = 10.0  # set on the per-server subclass
    connection_limit = 1000

    def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:  # noqa: A002
        # Monotonic time since when this connection owes us a request's headers (None: not now).
        self.awaiting_headers_since: float | None = time.monotonic()
        super().__init__(server, sock, addr, adj, map=map)
        if len(server.active_channels) > self.connection_limit:
            self._evict_one(server)

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.awaiting_headers_since = self.awaiting_headers_since or time.monotonic()
        result = super().received(data)
        if self.request is None or self.request.headers_finished:
            self.awaiting_headers_since = None
        return result

    def readable(self) -> bool:
        # Called for every channel on every turn of the event loop (at least once a second).
        since = self.awaiting_headers_since
        if (
            since is not None
            and not self.requests
            and time.monotonic() - since > self.header_timeout_s
            and not self.will_close
        ):
            log.info(
                "closing a connection from %s: no complete request headers in %g s",
                self.addr[0] if self.addr else "?",
                self.header_timeout_s,
            )
            self.will_close = True
            return False
        return super().readable()

    def _evict_one(self, server: Any) -> None:
        waiting = [
            ch
            for ch in server.active_channels.values()
            if isinstance(ch, _Channel)
            and ch is not self
            and ch.awaiting_headers_since is not None
            and not ch.requests
            and not ch.will_close
        ]
        if waiting:
            victim = min(waiting, key=lambda ch: ch.awaiting_headers_since)
            log.info("%d connections open: closing the slowest one", len(server.active_channels))
            victim.will_close = True
            server.pull_trigger()


def create_front(app: Any, settings: ServerSettings, on_headers: HeadersHook) -> Any:
    """A waitress server for ``app`` on the settings' host and port, not yet running."""
    parser = type("Parser", (_Parser,), {"on_headers": staticmethod(on_headers)})
    errors = type("ErrorTask", (_ErrorTask,), {"upload_limit": settings.max_upload_bytes})
    channel = type(
        "Channel",
        (_Channel,),
        {
            "parser_class": parser,
            "error_task_class": errors,
            "header_timeout_s": settings.header_timeout_s,
            "connection_limit": settings.connection_limit,
        },
    )
    server = waitress.create_server(
        app,
        host=settings.host,
        port=settings.port,
        threads=settings.threads,
        # >0 lets waitress notice a client hanging up mid-request: /v1/stylize then cancels
        channel_request_lookahead=4,
        # Up to CUT_OFF_SLACK over the upload limit a body is read and discarded (on_headers),
        # so the client reads a 413 it can show; beyond, it is cut off at once: 413 (as JSON,
        # _ErrorTask) and the connection closed, nothing read.
        max_request_body_size=settings.max_upload_bytes + CUT_OFF_SLACK,
        # Eviction (above) keeps the count at the setting; waitress' own limit, which stops
        # accepting anyone, is a backstop above it.
        connection_limit=settings.connection_limit + 100,
        channel_timeout=int(settings.channel_timeout_s),
        cleanup_interval=max(1, min(30, int(settings.channel_timeout_s) // 2)),
        asyncore_use_poll=True,  # select() stops at 1024 file descriptors
        ident="nst-server",
    )
    for sub in _servers(server):
        sub.channel_class = channel
    return server


def _servers(server: Any) -> list[Any]:
    """The listening servers: one, or several for a name with IPv4 and IPv6 addresses."""
    if hasattr(server, "channel_class"):
        return [server]
    return [s for s in server.map.values() if hasattr(s, "channel_class")]


def server_url(server: Any) -> str:
    try:
        host, port = server.effective_host, server.effective_port
    except AttributeError:  # a multi-socket server (e.g. "localhost" on IPv4 and IPv6)
        return "several addresses"
    host = f"[{host}]" if ":" in str(host) else host
    return f"http://{host}:{port}/"
