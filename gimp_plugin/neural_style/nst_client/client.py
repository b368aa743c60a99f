"""The server's HTTP API (``http.client``: GIMP's Python has no requests), safe against a hostile
or squatting server on the port.

Every request has a TOTAL deadline (a watchdog shuts the socket down when it passes, so a server
dripping a byte at a time cannot stretch a 3 s timeout), every answer is read up to a bound
decided before reading (a JSON answer 1 MiB, a picture what its size can take), redirects are
never followed (the token goes to the configured host and port only), and every malformed
answer (not JSON, NaN or Infinity, a wrongly typed field) becomes a :class:`ServerError` with a
readable message.

The API (nst_server): ``GET /v1/health``, ``GET /v1/params``, ``POST /v1/jobs`` (multipart:
``content`` PNG, ``style`` PNG (may repeat), optional ``mask``, ``init``, ``params`` JSON) ->
``{"id"}``, ``GET /v1/jobs/<id>[?since=&wait=]`` (the job's snapshot; a long poll with since),
``GET /v1/jobs/<id>/result``, ``GET /v1/jobs/<id>/preview?size=``, ``POST
/v1/jobs/<id>/finish`` (keep the picture so far), ``DELETE /v1/jobs/<id>``. Errors are JSON
``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import math
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ServerError, ServerTooOld, ServerUnreachable
from .png import max_png_bytes

DEFAULT_SERVER_URL = "http://127.0.0.1:8765"

#: Largest JSON answer read (health, params, a job's status): the largest real one, /v1/params,
#: is about 10 KB.
MAX_JSON_BYTES = 1 << 20
#: Largest error answer read for its message.
MAX_ERROR_BYTES = 64 << 10
#: Longer side of a preview when the caller gives none: the server's default.
DEFAULT_PREVIEW_SIZE = 256
#: Largest result, when the caller does not know the picture's size: a 8192 px square.
MAX_RESULT_BYTES = max_png_bytes(8192, 8192)
#: How long the server may take beyond a long poll's wait before the poll counts as failed.
LONG_POLL_GRACE_S = 30.0

#: What the plug-in reads in a job's snapshot, and the JSON types it needs them to have
#: (None always allowed). Anything else in the snapshot is passed on untouched.
_SNAPSHOT_FIELDS: dict[str, tuple[type, ...]] = {
    "state": (str,),
    "error": (str,),
    "version": (int,),
    "engine_version": (int,),
    "preview_step": (int,),
    "preview": (bool,),
    "progress": (dict,),
}
_PROGRESS_NUMBERS = ("step", "total", "eta_s", "scale", "scales", "elapsed_s", "engine_s")
_PROGRESS_FIELDS: dict[str, tuple[type, ...]] = {
    "phase": (str,),
    "note": (str,),
    "position": (int,),
    "queue_position": (int,),
    "finished_early": (bool,),
    "size": (list,),
}


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def build_multipart(fields: Sequence[tuple[str, str | None, str, bytes]]) -> tuple[bytes, str]:
    """multipart/form-data body from (name, filename or None, content type, data) fields.

    Returns (body, Content-Type header value). A random boundary cannot occur in PNG data by
    chance in practice; we still check, since a collision would corrupt the upload silently.
    """
    boundary = "nst-" + uuid.uuid4().hex
    marker = boundary.encode("ascii")
    if any(marker in data for _, _, _, data in fields):
        return build_multipart(fields)
    body = bytearray()
    for name, filename, content_type, data in fields:
        body += b"--" + marker + b"\r\n"
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"Content-Disposition: {disposition}\r\n".encode()
        body += f"Content-Type: {content_type}\r\n\r\n".encode()
        body += data + b"\r\n"
    body += b"--" + marker + b"--\r\n"
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(body: bytes) -> Any:
    """Strict JSON: NaN, Infinity and -Infinity (which Python's json accepts) are errors."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def error_message(status: int, body: bytes, url: str = "") -> ServerError:
    """A readable ServerError from an HTTP error response (JSON ``{"error": {code, message}}``
    from our server; anything else, e.g. a proxy's HTML page, is summarised)."""
    code = None
    message = None
    try:
        doc = parse_json(body)
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            code = err.get("code") if isinstance(err.get("code"), str) else None
            message = err.get("message") if isinstance(err.get("message"), str) else None
        elif isinstance(err, str):
            message = err
    except (ValueError, UnicodeDecodeError):
        pass
    if not message:
        text = body[:200].decode("utf-8", "replace").strip()
        message = f"unexpected answer: {text}" if text else "empty answer"
    message = message[:500]
    where = f" ({url})" if url else ""
    label = f"{status} {code}" if code else str(status)
    return ServerError(f"Neural style server error {label}{where}: {message}", status, code)


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is this machine (we only ever start a server for those)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _type_problem(value: Any, types: tuple[type, ...]) -> bool:
    if value is None:
        return False
    if bool not in types and isinstance(value, bool):
        return True  # JSON true is not an integer
    return not isinstance(value, types)


def check_snapshot(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A job snapshot whose fields the plug-in reads have the types it reads them as; raises a
    ServerError naming the first that has not."""

    def bad(name: str, value: Any, expected: str) -> ServerError:
        return ServerError(
            f"The server at {where} sent a job status the plug-in cannot read: {name} is "
            f"{json.dumps(value)[:80]} (expected {expected}); is this really the neural style "
            "server?"
        )

    for name, types in _SNAPSHOT_FIELDS.items():
        if _type_problem(doc.get(name), types):
            raise bad(name, doc.get(name), " or ".join(t.__name__ for t in types))
    if not isinstance(doc.get("state"), str):
        raise bad("state", doc.get("state"), "a string")
    progress = doc.get("progress") or {}
    for name in _PROGRESS_NUMBERS:
        value = progress.get(name)
        if value is not None and not _is_number(value):
            raise bad(f"progress.{name}", value, "a finite number")
    for name, types in _PROGRESS_FIELDS.items():
        if _type_problem(progress.get(name), types):
            raise bad(f"progress.{name}", progress.get(name), types[0].__name__)
    size = progress.get("size")
    if size is not None and not (
        len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise bad("progress.size", size, "[width, height]")
    return dict(doc)


class _Watchdog:
    """Shuts a connection's socket down when the request's total deadline passes: a blocked
    read then returns at once, however slowly the server drips its answer. It holds the socket
    itself: http.client drops the connection's reference once the headers say "close"."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shut()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shut()

    def _shut(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class NstClient:
    """The server's HTTP API. ``token`` is sent as a bearer token to ``base_url``'s host and
    port only; ``token_source`` says where it came from, for the message of a 401."""

    def __init__(
        self,
        base_url: str = DEFAULT_SERVER_URL,
        token: str = "",
        timeout: float = 60.0,
        token_source: str = "",
    ) -> None:
        url = (base_url or DEFAULT_SERVER_URL).strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.base_url = url
        self.token = (token or "").strip()
        self.token_source = token_source
        self.timeout = timeout

    # -- transport ---------------------------------------------------------------------------

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, str]:
        parts = urllib.parse.urlsplit(self.base_url)
        try:
            port = parts.port
        except ValueError:
            raise ServerUnreachable(f"The server URL {self.base_url} has an invalid port") from None
        if not parts.hostname:
            raise ServerUnreachable(f"The server URL {self.base_url} has no host name")
        if parts.scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            connection = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
        return connection, parts.path.rstrip("/")

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
        max_bytes: int = MAX_JSON_BYTES,
    ) -> Answer:
        """One request; the whole of it (connect, send, headers, body) within ``timeout``."""
        seconds = timeout or self.timeout
        url = self.base_url + path
        headers = {"Accept": "application/json, image/png", "Connection": "close"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        connection, prefix = self._connection(seconds)
        watchdog = _Watchdog(seconds)
        started = time.monotonic()
        try:
            connection.connect()
            watchdog.watch(connection.sock)
            connection.request(method, prefix + path, body=body, headers=headers)
            response = connection.getresponse()
            status = response.status
            if 300 <= status < 400:
                raise ServerError(
                    f"The server at {self.base_url} answered {path} with a redirect (HTTP "
                    f"{status}) to {str(response.getheader('Location'))[:200]}; the plug-in "
                    "follows no redirects (its token goes to the configured server only): "
                    "check the server URL.",
                    status,
                )
            limit = max_bytes if status < 400 else MAX_ERROR_BYTES
            data = self._read(response, limit, url, status)
            ctype = response.getheader("Content-Type", "") or ""
        except (OSError, http.client.HTTPException) as exc:
            if watchdog.fired or time.monotonic() - started >= seconds:
                raise ServerUnreachable(
                    f"Cannot reach the neural style server at {self.base_url}: it did not "
                    f"answer {path} within {seconds:g} s (timed out)"
                ) from None
            # HTTPException: the connection broke mid-answer (IncompleteRead, BadStatusLine),
            # e.g. the server was killed while sending; to the user that is "unreachable".
            reason = str(exc) or type(exc).__name__
            raise ServerUnreachable(
                f"Cannot reach the neural style server at {self.base_url}: {reason}"
            ) from None
        finally:
            watchdog.cancel()
            connection.close()
        if watchdog.fired:  # the body ended early because the watchdog cut it off
            raise ServerUnreachable(
                f"Cannot reach the neural style server at {self.base_url}: it did not finish "
                f"answering {path} within {seconds:g} s (timed out)"
            )
        if status >= 400:
            raise self._error(status, data, url)
        return Answer(status, ctype, data)

    def _read(self, response: http.client.HTTPResponse, limit: int, url: str, status: int) -> bytes:
        """The body, refusing (before reading it, when the server says its length) more than
        ``limit`` bytes. An error body is only cut short: its start is the message."""
        try:
            length = int(response.getheader("Content-Length") or -1)
        except ValueError:
            length = -1
        if status < 400 and length > limit:
            raise ServerError(
                f"The server at {url} announced an answer of {length} bytes, more than "
                f"the {limit} bytes this answer can take; is this really the neural "
                "style server?",
                status,
            )
        chunks, total = [], 0
        while total <= limit:
            chunk = response.read(min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            if status >= 400:
                return b"".join(chunks)[:limit]
            raise ServerError(
                f"The server at {url} sent more than the {limit} bytes this answer can take; "
                "is this really the neural style server?",
                status,
            )
        if 0 <= total < length:  # the connection closed mid-answer
            raise http.client.IncompleteRead(b"".join(chunks), length - total)
        return b"".join(chunks)

    def _error(self, status: int, body: bytes, url: str) -> ServerError:
        error = error_message(status, body, url)
        if status != 401:
            return error
        server_says = str(error).split(": ", 1)[-1]
        if self.token:
            source = f" (from {self.token_source})" if self.token_source else ""
            text = (
                f"The neural style server at {self.base_url} refused the plug-in's token"
                f"{source} (HTTP 401): the token was probably reset, or this plug-in was "
                "installed before it. Run install/install.sh again, which records the current "
                "token for the plug-in, or show it with `nst-server token --show` and enter it "
                f"under Server token. (The server said: {server_says})"
            )
        else:
            missing = f": {self.token_source}" if self.token_source else ""
            text = (
                f"The neural style server at {self.base_url} needs a token (HTTP 401) and the "
                f"plug-in has none{missing}. Run install/install.sh again (an older install "
                "did not record the server's token file for the plug-in), or show the token "
                "with `nst-server token --show` and enter it under Server token. (The server "
                f"said: {server_says})"
            )
        return ServerError(text, 401, error.code)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        answer = self._request(method, path, **kwargs)
        try:
            doc = parse_json(answer.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ServerError(
                f"The server at {self.base_url}{path} did not answer with valid JSON "
                f"(HTTP {answer.status}: {exc}); is this really the neural style server?",
                answer.status,
            ) from None
        if not isinstance(doc, dict):
            raise ServerError(
                f"Unexpected answer from {self.base_url}{path}: {json.dumps(doc)[:200]}",
                answer.status,
            )
        return doc

    def _job_path(self, job_id: str, tail: str = "") -> str:
        return f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}{tail}"

    # -- the API -----------------------------------------------------------------------------

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        doc = self._json("GET", "/v1/health", timeout=timeout)
        if not isinstance(doc.get("status"), str):
            raise ServerError(
                f"The server at {self.base_url} answered /v1/health without a status "
                f"({json.dumps(doc)[:120]}); is this really the neural style server?"
            )
        return doc

    def params(self) -> dict[str, Any]:
        doc = self._json("GET", "/v1/params")
        described = doc.get("params")
        if not isinstance(described, dict) or not all(
            isinstance(entry, dict) for entry in described.values()
        ):
            raise ServerError(
                f"The server at {self.base_url} answered /v1/params without a description of "
                "its parameters; is this really the neural style server?"
            )
        return doc

    def plan(
        self,
        size: tuple[int, int],
        params: Mapping[str, Any] | None = None,
        paintings: Sequence[tuple[int, int]] = (),
    ) -> dict[str, Any]:
        """What a job on a photo of ``size`` (width, height) with ``params`` would do, checked:
        ``processing_size`` [w, h], ``enlargement``, ``steps``, ``work_vs_plain`` (how many
        times as long as the same job enlarged plainly). A server without the route gives a
        :class:`ServerTooOld`."""
        body: dict[str, Any] = {"width": size[0], "height": size[1], "params": dict(params or {})}
        if paintings:
            body["paintings"] = [{"width": w, "height": h} for w, h in paintings]
        try:
            doc = self._json(
                "POST", "/v1/plan", body=json.dumps(body).encode(), content_type="application/json"
            )
        except ServerError as exc:
            if exc.status in (404, 405):
                raise ServerTooOld(
                    f"The neural style server at {self.base_url} is too old to estimate a run "
                    "(it has no /v1/plan): update it by running install/install.sh again."
                ) from None
            raise
        processing = doc.get("processing_size")
        numbers = [doc.get(k) for k in ("enlargement", "work_vs_plain", "steps")]
        if not (
            isinstance(processing, list)
            and len(processing) == 2
            and all(type(v) is int and v > 0 for v in processing)
            and all(_is_number(v) and v > 0 for v in numbers)
        ):
            raise ServerError(
                f"Unexpected answer from {self.base_url}/v1/plan: {json.dumps(doc)[:200]}"
            )
        return doc

    def submit(
        self,
        content_png: bytes,
        style_pngs: Sequence[bytes],
        params: Mapping[str, Any] | None = None,
        mask_png: bytes | None = None,
        init_png: bytes | None = None,
    ) -> str:
        fields: list[tuple[str, str | None, str, bytes]] = [
            ("content", "content.png", "image/png", content_png)
        ]
        fields += [("style", f"style{i}.png", "image/png", png) for i, png in enumerate(style_pngs)]
        if mask_png is not None:
            fields.append(("mask", "mask.png", "image/png", mask_png))
        if init_png is not None:
            fields.append(("init", "init.png", "image/png", init_png))
        if params:
            fields.append(("params", None, "application/json", json.dumps(params).encode()))
        body, ctype = build_multipart(fields)
        doc = self._json("POST", "/v1/jobs", body=body, content_type=ctype)
        job_id = doc.get("id")
        if not isinstance(job_id, str) or not job_id or len(job_id) > 200:
            raise ServerError(
                f"The server accepted the job but sent no usable id: {json.dumps(doc)[:200]}"
            )
        return job_id

    def status(self, job_id: str, since: int | None = None, wait: float = 0.0) -> dict[str, Any]:
        """The job's snapshot, checked; with ``since`` (the last answer's ``version``) and
        ``wait`` the server answers when the job changes, or after ``wait`` s."""
        path = self._job_path(job_id)
        timeout = None
        if since is not None and wait > 0:
            path += f"?since={since}&wait={wait:g}"
            timeout = wait + min(self.timeout, LONG_POLL_GRACE_S)
        return check_snapshot(self._json("GET", path, timeout=timeout), self.base_url)

    def result(self, job_id: str, size: tuple[int, int] | None = None) -> bytes:
        """The result PNG; ``size`` (width, height), when known, bounds what is read."""
        limit = max_png_bytes(*size) if size else MAX_RESULT_BYTES
        return self._request("GET", self._job_path(job_id, "/result"), max_bytes=limit).body

    def preview(self, job_id: str, size: int | None = None) -> bytes:
        """The job's current picture as a PNG, its longer side ``size`` px at most (the server
        gives at most the current processing size; without ``size`` its default, 256 px)."""
        tail = "/preview" + (f"?size={int(size)}" if size else "")
        limit = max_png_bytes(size or DEFAULT_PREVIEW_SIZE, size or DEFAULT_PREVIEW_SIZE)
        return self._request("GET", self._job_path(job_id, tail), max_bytes=limit).body

    def finish(self, job_id: str, *, job_known: bool = False) -> dict[str, Any]:
        """Keep the picture so far: the job ends after its current step as ``done``. A server
        without the route gives a :class:`ServerTooOld` saying to update it (a 404 means that
        when the job is known to exist: ``job_known``, or a status request says so)."""
        try:
            return self._json("POST", self._job_path(job_id, "/finish"))
        except ServerError as exc:
            if exc.status == 405 or (exc.status == 404 and (job_known or self._knows(job_id))):
                raise ServerTooOld(
                    f"The neural style server at {self.base_url} is too old to keep a picture "
                    "before the run ends (it has no 'finish'): update it by running "
                    "install/install.sh again (then restart it with install/install.sh "
                    "--restart). Cancel still works."
                ) from None
            raise

    def _knows(self, job_id: str) -> bool:
        try:
            self.status(job_id)
        except ServerError:
            return False
        return True

    def cancel(self, job_id: str) -> None:
        self._request("DELETE", self._job_path(job_id))
