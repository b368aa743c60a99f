"""Run the API under waitress: checks the bind address, sets up the log file, builds the app.

``serve(ServerConfig(...))`` blocks until the process is interrupted. The CLI builds the config
from its flags and prints ``ServerConfigError`` messages.
"""

from __future__ import annotations

import ipaddress
import logging
import logging.handlers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


class ServerConfigError(Exception):
    """The server cannot start as configured; the message says why and what to do."""


@dataclass
class ServerConfig:
    """How to run the server. ``None`` limits mean the app's default (or its NST_* variable)."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    weights: Any = None  # a WeightsSource, a path, or None (the usual search)
    log_file: Path | str | None = None  # None: default_log_file()
    queue_size: int = 16
    abandon_after_s: float = 30.0
    idle_unload_s: float = 0.0
    threads: int = 8  # waitress threads: each blocking /v1/stylize holds one
    max_upload_bytes: int | None = None
    max_pixels: int | None = None
    max_iterations: int | None = None
    max_processing_size: int | None = None
    job_ttl_s: float | None = None


def default_log_file() -> Path:
    """$XDG_STATE_HOME/neural-style/server.log (default ~/.local/state/neural-style/)."""
    state = os.environ.get("XDG_STATE_HOME")
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "neural-style" / "server.log"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the usual names for them; False for 0.0.0.0, :: etc."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to a public address


def check_config(config: ServerConfig) -> None:
    """Raise ServerConfigError for a configuration that must not start."""
    if not is_loopback(config.host) and not config.token:
        raise ServerConfigError(
            f"refusing to listen on {config.host!r} without a token: anyone who can reach this "
            "machine could use it. Give one with --token (or the NST_TOKEN environment "
            "variable) and send 'Authorization: Bearer <token>' from clients, or bind to "
            "127.0.0.1"
        )
    if not 0 <= config.port <= 65535:
        raise ServerConfigError(f"port must be between 0 and 65535, got {config.port}")
    if config.queue_size < 1:
        raise ServerConfigError(f"queue size must be at least 1, got {config.queue_size}")
    if config.abandon_after_s < 0 or config.idle_unload_s < 0:
        raise ServerConfigError("abandon and idle-unload times cannot be negative")


def setup_logging(log_file: Path) -> None:
    """Send INFO and above (ours, waitress', Flask's tracebacks) to ``log_file`` as well."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        log_file, maxBytes=5 * 1024 * 1024, backupCount=2, encoding="utf-8"
    )
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def app_config(config: ServerConfig, log_file: Path) -> dict[str, Any]:
    """The ``create_app`` config for ``config`` (limits left out when not given)."""
    out: dict[str, Any] = {
        "TOKEN": config.token,
        "LOG_FILE": str(log_file),
        "QUEUE_SIZE": config.queue_size,
        "ABANDON_AFTER_S": config.abandon_after_s,
        "IDLE_UNLOAD_S": config.idle_unload_s,
        "START_WORKER": False,  # serve() starts it once the port is bound
    }
    for key, value in (
        ("MAX_CONTENT_LENGTH", config.max_upload_bytes),
        ("MAX_PIXELS", config.max_pixels),
        ("MAX_ITERATIONS", config.max_iterations),
        ("MAX_PROCESSING_SIZE", config.max_processing_size),
        ("JOB_TTL_S", config.job_ttl_s),
    ):
        if value is not None:
            out[key] = value
    return out


def serve(config: ServerConfig) -> None:
    """Check, bind, start the worker (which builds the network now), serve until interrupted."""
    import waitress

    from nst_server.api import create_app, get_queue
    from nst_server.engine import StyleEngine

    check_config(config)
    log_file = Path(config.log_file) if config.log_file else default_log_file()
    try:
        setup_logging(log_file)
    except OSError as exc:
        raise ServerConfigError(f"cannot write the log file {log_file}: {exc}") from exc
    engine = StyleEngine(config.weights)
    app = create_app({**app_config(config, log_file), "ENGINE": engine})
    upload_limit = int(app.config["MAX_CONTENT_LENGTH"])
    try:
        server = waitress.create_server(
            app,
            host=config.host,
            port=config.port,
            threads=config.threads,
            # >0 lets waitress notice a client hanging up mid-request: /v1/stylize then cancels
            channel_request_lookahead=4,
            # Flask answers over-limit uploads with a JSON 413; this is only a backstop
            max_request_body_size=2 * upload_limit + 1024 * 1024,
            ident="nst-server",
        )
    except OSError as exc:
        raise ServerConfigError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; is another "
            "server running? Choose another --port"
        ) from exc
    queue = get_queue(app)
    queue.start()
    log.info(
        "nst-server on %s (%s, weights: %s); log: %s",
        _url(server),
        engine.device,
        engine.weights_description,
        log_file,
    )
    try:
        server.run()
    finally:
        queue.close()
        server.close()


def _url(server: Any) -> str:
    try:
        host, port = server.effective_host, server.effective_port
    except AttributeError:  # a multi-socket server (e.g. "localhost" on IPv4 and IPv6)
        return "several addresses"
    host = f"[{host}]" if ":" in str(host) else host
    return f"http://{host}:{port}/"
