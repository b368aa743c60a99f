"""Run the API: settings -> private log, token, spool folder, app, HTTP front; serve.

``serve(settings)`` blocks until the process is interrupted. The CLI builds the settings from
its flags and the environment and prints ``ServerConfigError`` messages.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import re
import resource
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nst_server.auth import (
    ArtistTokens,
    Authenticator,
    TokenError,
    default_token_path,
    ensure_token,
)
from nst_server.jobmodel import BrokerUnavailable
from nst_server.settings import ServerSettings, state_dir

log = logging.getLogger(__name__)

#: The job a request is about: /v1/jobs/<id> and its sub-routes.
_JOB_PATH = re.compile(r"/v1/jobs/([0-9a-f]{32})(?:/[a-z]+)?")


class ServerConfigError(Exception):
    """The server cannot start as configured; the message says why and what to do."""


def authenticator_for(settings: ServerSettings) -> Authenticator | ArtistTokens:
    """The token rule: a studio's tokens file if given, else ``--token`` / ``NST_TOKEN``, else
    the token file (created with a new token if it does not exist yet)."""
    try:
        if settings.tokens_file:
            return ArtistTokens(Path(settings.tokens_file).expanduser())
        if settings.token:
            return Authenticator(settings.token)
        path = Path(settings.token_file).expanduser() if settings.token_file else None
        path = path or default_token_path()
        _, created = ensure_token(path)
        if created:
            log.info("created a token for this install in %s", path)
        return Authenticator(path=path)
    except (TokenError, OSError) as exc:
        raise ServerConfigError(str(exc)) from exc


def private_dir(folder: Path) -> Path:
    """``folder`` (created if missing), owned by us and mode 0700; ServerConfigError if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = folder.stat()
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise ServerConfigError(f"{folder} belongs to another user; it must be your own")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(folder, 0o700)
    except OSError as exc:
        raise ServerConfigError(f"cannot make the private folder {folder}: {exc}") from exc
    return folder


def spool_dir() -> Path:
    """Where waitress may spool bodies and answers: $XDG_RUNTIME_DIR/neural-style (memory,
    private) if there is one, else ~/.local/state/neural-style/spool."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return Path(runtime) / "neural-style"
    return state_dir() / "spool"


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Log files are created 0600 (job ids are in them), rotated ones too."""

    def _open(self):  # noqa: ANN202 - logging's own signature
        return open(  # noqa: SIM115 - the handler owns the stream
            self.baseFilename,
            self.mode,
            encoding=self.encoding,
            errors=self.errors,
            opener=lambda path, flags: os.open(path, flags, 0o600),
        )


def setup_logging(log_file: Path) -> None:
    """Send INFO and above (ours, waitress', Flask's tracebacks) to ``log_file`` as well; the
    file is 0600 in a 0700 folder."""
    private_dir(log_file.parent)
    handler = _PrivateRotatingFileHandler(
        log_file, maxBytes=5 * 1024 * 1024, backupCount=2, encoding="utf-8"
    )
    for path in (log_file, *log_file.parent.glob(log_file.name + ".*")):
        if path.is_file():
            os.chmod(path, 0o600)  # files written by an older version
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def raise_file_limit(wanted: int) -> None:
    """Allow ``wanted`` open files (one per connection, plus TensorFlow's own), if the hard
    limit lets us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def headers_hook(
    app: Any, settings: ServerSettings
) -> Callable[[str, str, Mapping[str, str]], bool]:
    """The front's ``on_headers`` for ``app``: drop the body of a request that will be refused
    (the guard's rules, the upload limit); mark a poll of a job as a sign of life."""
    from nst_server.api import get_guard, get_queue

    guard, queue = get_guard(app), get_queue(app)

    def on_headers(method: str, path: str, headers: Mapping[str, str]) -> bool:
        principal, refusal = guard.check(
            method, path, lambda name: headers.get(name.upper().replace("-", "_"))
        )
        if refusal is not None:
            return True
        length = headers.get("CONTENT_LENGTH", "0")
        if length.isdigit() and int(length) > settings.max_upload_bytes:
            return True
        match = _JOB_PATH.fullmatch(path)
        if principal is not None and match:
            with contextlib.suppress(BrokerUnavailable):  # the request itself gets the 503
                queue.touch(match.group(1))
        return False

    return on_headers


def serve(settings: ServerSettings, *, weights: Any = None) -> None:
    """Check, bind, start the worker (which builds the network now), serve until interrupted.

    ``weights``: a resolved ``WeightsSource`` (the CLI fetches them first); None uses
    ``settings.weights`` or the usual search."""
    from nst_server.api import create_app, get_queue
    from nst_server.front import create_front, server_url

    log_file = settings.log_path()
    try:
        setup_logging(log_file)
    except (OSError, ServerConfigError) as exc:
        raise ServerConfigError(f"cannot write the log file {log_file}: {exc}") from exc
    settings = settings.replace(log_file=str(log_file))
    authenticator = authenticator_for(settings)
    # Waitress spools large bodies and answers to temporary files: never in the shared /tmp.
    tempfile.tempdir = str(private_dir(spool_dir()))
    raise_file_limit(settings.connection_limit + 256)
    engine = None
    if settings.broker:
        from nst_server.jobmodel import BrokerUnavailable
        from nst_server.studio import check_password

        try:
            check_password(settings.broker)
        except BrokerUnavailable as exc:
            raise ServerConfigError(str(exc)) from None
    else:  # a studio's front holds no network: its workers do
        from nst_server.engine import StyleEngine  # imports TensorFlow
        from nst_server.weights import resolve_weights

        engine = StyleEngine(weights if weights is not None else resolve_weights(settings.weights))
    app = create_app(settings, engine=engine, authenticator=authenticator, start_worker=False)
    queue = get_queue(app)
    try:
        server = create_front(app, settings, headers_hook(app, settings))
    except OSError as exc:
        raise ServerConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; is "
            "another server running? Choose another --port"
        ) from exc
    queue.start()
    where = (
        f"studio front, jobs in Redis at {settings.broker.rsplit('@', 1)[-1]}"
        if settings.broker
        else f"{engine.device}, weights: {engine.weights_description}"
    )
    log.info(
        "nst-server on %s (%s); token: %s; log: %s",
        server_url(server),
        where,
        authenticator.source,
        log_file,
    )
    try:
        server.run()
    finally:
        queue.close()
        server.close()
