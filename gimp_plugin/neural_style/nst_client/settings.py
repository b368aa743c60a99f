"""What the installer recorded for the plug-in, the token, and starting the server.

The installer writes ``plugin.json`` next to the plug-in (see install/install_plugin.sh):
``{"server_url", "start_command", "token_file"}``. Next to the plug-in rather than in
~/.config because a Flatpak GIMP sees a different ~/.config; for the same reason the token
file's path is recorded as the installer resolved it. NST_PLUGIN_CONFIG overrides the file's
location (tests, unusual set-ups).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .client import NstClient, is_loopback_url
from .errors import NstError, ServerUnreachable, how_to_start
from .jobs import format_duration

CONFIG_NAME = "plugin.json"
#: The plug-in's folder: plugin.json lives here (the package is one level down).
PLUGIN_DIR = Path(__file__).resolve().parent.parent

#: How long to wait for a server we started to answer /v1/health: TensorFlow's import and the
#: VGG19 warm-up take 10-40 s on a CPU.
START_TIMEOUT_S = 180.0

#: The environment variable that overrides the token file (as for the server and the CLI).
TOKEN_ENV = "NST_TOKEN"
#: Longest token the plug-in reads from a file: anything longer is not a token file.
MAX_TOKEN_CHARS = 4096


def config_path(plugin_dir: str | os.PathLike[str] | None = None) -> Path:
    override = os.environ.get("NST_PLUGIN_CONFIG")
    if override:
        return Path(override)
    return Path(plugin_dir or PLUGIN_DIR) / CONFIG_NAME


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The installer's record: {"server_url", "start_command", "token_file"}; {} when absent.

    A broken file is reported, not ignored: it is the only record of how to start the server.
    """
    file = Path(path) if path else config_path()
    try:
        # utf-8-sig: Windows PowerShell 5 writes a byte-order mark (install/install.ps1).
        doc = json.loads(file.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise NstError(
            f"Cannot read the plug-in settings {file}: {exc}; re-run install/install_plugin.sh"
        ) from None
    if not isinstance(doc, dict):
        raise NstError(
            f"The plug-in settings {file} are not a JSON object; re-run install/install_plugin.sh"
        )
    return doc


# --------------------------------------------------------------------------------------------
# The token


def default_token_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where the server keeps its token when nothing else is recorded (as the server does)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or "~", ".config")
    return Path(os.path.expanduser(base)) / "neural-style" / "token"


@dataclass(frozen=True)
class Token:
    """The bearer token to send ("" for none) and where it came from, or why there is none."""

    value: str
    source: str


def resolve_token(
    setting: str,
    config: Mapping[str, Any],
    url: str,
    environ: Mapping[str, str] | None = None,
) -> Token:
    """The token for ``url``: the Server token setting when not empty, else NST_TOKEN, else the
    token file (plugin.json's ``token_file``, else the server's default place).

    The token file belongs to the server on this machine: it is never sent to another host
    (a remote server's token goes in the setting or NST_TOKEN).
    """
    env = os.environ if environ is None else environ
    if setting and setting.strip():
        return Token(setting.strip(), "the Server token setting")
    if env.get(TOKEN_ENV, "").strip():
        return Token(env[TOKEN_ENV].strip(), f"the {TOKEN_ENV} environment variable")
    recorded = config.get("token_file")
    path = Path(recorded) if isinstance(recorded, str) and recorded else default_token_file(env)
    if not is_loopback_url(url):
        return Token(
            "",
            f"the token file {path} is only sent to a server on this machine, and {url} is "
            "not; enter that server's token under Server token",
        )
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_TOKEN_CHARS + 1).strip()
    except FileNotFoundError:
        return Token("", f"the token file {path} does not exist")
    except (OSError, UnicodeDecodeError) as exc:
        return Token("", f"the token file {path} cannot be read ({exc})")
    if not text or len(text) > MAX_TOKEN_CHARS or any(c.isspace() for c in text):
        return Token("", f"the token file {path} does not hold a token")
    return Token(text, f"the token file {path}")


def make_client(
    url_setting: str,
    token_setting: str,
    config: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> NstClient:
    """The client for the settings: the URL given, else the recorded one, else the default;
    the token as :func:`resolve_token` finds it."""
    client = NstClient(url_setting or config.get("server_url") or "")
    token = resolve_token(token_setting, config, client.base_url, environ)
    client.token, client.token_source = token.value, token.source
    return client


# --------------------------------------------------------------------------------------------
# Starting the server


def wait_for_health(
    client: NstClient,
    timeout: float,
    process: subprocess.Popen | None = None,
    interval: float = 0.5,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.health(timeout=5.0)
        except ServerUnreachable:
            pass
        if process is not None and process.poll() is not None:
            raise NstError(
                f"The neural style server exited with code {process.returncode} while starting"
            )
        if time.monotonic() >= deadline:
            raise NstError(
                f"The neural style server did not answer within {format_duration(timeout)}"
            )
        time.sleep(interval)


def start_server(command: str | Sequence[str], log_path: str | None = None) -> subprocess.Popen:
    """Start the server detached from this process, so it outlives the plug-in (GIMP ends the
    plug-in after each run) and keeps the network warm for the next edit."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise NstError("The recorded server start command is empty")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise NstError(f"Cannot run the server start command {shlex.join(argv)}: {exc}") from None
    finally:
        if log_path:
            out.close()


def ensure_server(
    client: NstClient,
    start_command: str | Sequence[str] | None,
    timeout: float = START_TIMEOUT_S,
    report: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], subprocess.Popen | None]:
    """Return (/v1/health, None) when the server answers; if nothing answers and the URL is
    local, start the server with the recorded command, wait for it and return (health, the
    process). Errors say how to start it by hand."""
    try:
        return client.health(timeout=5.0), None
    except ServerUnreachable as exc:
        first_error = str(exc)
    if not start_command:
        raise ServerUnreachable(
            f"{first_error}. No start command is recorded for this plug-in. "
            f"{how_to_start(client.base_url)}"
        )
    if not is_loopback_url(client.base_url):
        raise ServerUnreachable(
            f"{first_error}. It is not on this machine, so the plug-in does "
            f"not start it; check the URL and that the server runs there."
        )
    if report:
        report("Neural style: starting the server (first start takes a while)")
    command_text = start_command if isinstance(start_command, str) else shlex.join(start_command)
    process = None
    try:
        process = start_server(start_command)
        return wait_for_health(client, timeout, process), process
    except NstError as exc:
        if process is not None and process.poll() is None:
            process.kill()  # it never answered: do not leave a half-started server behind
            process.wait(10)
        raise ServerUnreachable(
            f"{first_error}. Starting it with `{command_text}` failed: "
            f"{exc}. {how_to_start(client.base_url)}"
        ) from None
