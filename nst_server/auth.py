"""The per-install token, as Jupyter does it: a secret every client must send, on loopback too.

The token lives in ``${XDG_CONFIG_HOME:-~/.config}/neural-style/token`` (mode 0600, the folder
0700), created by install/install.sh or on the server's first start. Beside it,
``token.header`` holds the line ``Authorization: Bearer <token>`` so that curl can send it
without putting it on a command line (``curl -H @~/.config/neural-style/token.header``), where
other users of the machine could read it in the process list.

:class:`Authenticator` turns a request's ``Authorization`` header into a :class:`Principal` (who
is asking) or None. It re-reads the token file when the file changes, so `nst-server token
--reset` takes effect without a restart. No Flask here.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from nst_server.settings import config_dir

log = logging.getLogger(__name__)

#: Shortest token accepted: shorter ones can be guessed (a single space once locked everyone out).
MIN_TOKEN_LENGTH = 32
#: RFC 6750's b64token characters: safe in a header, in JSON and on a command line.
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

#: What to run when a token is missing or wrong (401 messages, the CLI).
FIX_HINT = (
    "run `nst-server token --show` to see this server's token, or re-run install/install.sh "
    "so the GIMP plug-in gets it"
)


class TokenError(Exception):
    """The token or its file is unusable; the message says why and what to do."""


@dataclass(frozen=True)
class Principal:
    """Who a request comes from. ``admin`` sees and cancels every job."""

    name: str
    admin: bool = False


#: The one person a per-install token stands for.
OWNER = Principal("owner", admin=True)


def default_token_path() -> Path:
    return config_dir() / "token"


def header_path(token_path: Path) -> Path:
    """``token.header`` beside ``token``."""
    return token_path.with_name(token_path.name + ".header")


def check_token(token: str, source: str) -> str:
    """The token without surrounding whitespace; TokenError if too short or not header-safe."""
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(
            f"the token from {source} has {len(token)} characters; at least "
            f"{MIN_TOKEN_LENGTH} are needed so that it cannot be guessed. Make one with "
            "`nst-server token --reset` (or `python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`)"
        )
    if not _TOKEN_CHARS.fullmatch(token):
        raise TokenError(
            f"the token from {source} holds characters that cannot go in an HTTP header; use "
            "letters, digits and - . _ ~ + / (e.g. `nst-server token --reset`)"
        )
    return token


def new_token() -> str:
    """43 URL-safe characters, 256 random bits."""
    return secrets.token_urlsafe(32)


def read_token(path: Path) -> str:
    """The token in ``path``. A file others can read is made private (0600) with a warning; a
    file owned by another user is refused."""
    return check_token(_read_private(path, "token file"), str(path))


def _read_private(path: Path, what: str) -> str:
    """The text of a secret file of ours, made private (0600) if others could read it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise TokenError(f"the {what} {path} does not exist; {FIX_HINT}") from None
    except OSError as exc:
        raise TokenError(f"cannot read the {what} {path}: {exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TokenError(f"the {what} {path} is not a regular file")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise TokenError(
            f"the {what} {path} belongs to another user (uid {info.st_uid}); it must be "
            "your own: delete it and run `nst-server token --reset`"
        )
    if info.st_mode & 0o077:
        log.warning(
            "the %s %s could be read by other users (mode %o): made private (0600)",
            what,
            path,
            stat.S_IMODE(info.st_mode),
        )
        os.chmod(path, 0o600)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read the {what} {path}: {exc}") from None


def write_token(path: Path, token: str) -> None:
    """Write ``token`` and its ``.header`` beside it, both 0600, atomically (a reader never
    sees half a token). A folder created here is 0700."""
    token = check_token(token, "the new token")
    _private_dir(path.parent)
    _write_private(path, token + "\n")
    _write_private(header_path(path), f"Authorization: Bearer {token}\n")


def ensure_token(path: Path) -> tuple[str, bool]:
    """(the token in ``path``, whether it was created now). Creates one if the file is missing;
    rewrites ``token.header`` if it is missing or stale."""
    if not path.exists():
        token = new_token()
        write_token(path, token)
        log.info("created the token file %s", path)
        return token, True
    token = read_token(path)
    header = header_path(path)
    expected = f"Authorization: Bearer {token}\n"
    try:
        current = header.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        current = None
    if current != expected:
        _write_private(header, expected)
    return token, False


def reset_token(path: Path) -> str:
    """Replace the token with a new one (clients with the old one get 401)."""
    token = new_token()
    write_token(path, token)
    return token


def _private_dir(folder: Path) -> None:
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700)
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask


def _write_private(path: Path, text: str) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


class Authenticator:
    """Who a request comes from, from its ``Authorization: Bearer`` header.

    Built either on a fixed token (``--token``, ``NST_TOKEN``) or on a token file, which is
    re-read whenever it changes on disk. Tokens are compared in constant time.
    """

    def __init__(self, token: str | None = None, *, path: Path | None = None) -> None:
        if (token is None) == (path is None):
            raise ValueError("give either a token or a token file")
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._token = check_token(token, "--token / NST_TOKEN") if token else ""
        if path is not None:
            self._reload()

    @property
    def source(self) -> str:
        """Where the token comes from, for the log and messages."""
        return str(self.path) if self.path else "--token / NST_TOKEN"

    def identify(self, authorization: str | None) -> Principal | None:
        """The principal a header value stands for, or None (missing, malformed, wrong)."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = self._current()
        if hmac.compare_digest(value.strip().encode(), token.encode()):
            return OWNER
        return None

    def _current(self) -> str:
        if self.path is not None:
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._reload(stamp)
        return self._token

    def _reload(self, stamp: tuple[int, int, int] | None = None) -> None:
        assert self.path is not None
        with self._lock:
            self._stamp = stamp or _stamp(self.path)  # a broken file is reported once
            try:
                token = read_token(self.path)
            except TokenError as exc:
                # Keep the last good token: a half-edited file must not lock everyone out.
                if not self._token:
                    raise
                log.warning("keeping the previous token: %s", exc)
                return
            if self._token and token != self._token:
                log.info("the token file %s changed: using the new token", self.path)
            self._token = token


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_ino, info.st_size


def parse_tokens_file(text: str, source: str) -> dict[str, Principal]:
    """Token -> artist from a tokens file: one line ``NAME TOKEN [admin]`` each, ``#`` starts
    a comment. TokenError names the line of a malformed entry, a short token or a repeat."""
    artists: dict[str, Principal] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source}, line {number}"
        if len(words) not in (2, 3) or (len(words) == 3 and words[2] != "admin"):
            raise TokenError(f"{where}: expected 'NAME TOKEN' or 'NAME TOKEN admin'")
        name, token = words[0], check_token(words[1], where)
        if name in names or token in artists:
            raise TokenError(f"{where}: the name or the token is already used on another line")
        names.add(name)
        artists[token] = Principal(name, admin=len(words) == 3)
    if not artists:
        raise TokenError(f"{source} names no artist; add lines 'NAME TOKEN [admin]'")
    return artists


class ArtistTokens:
    """Who a request comes from when a studio has a tokens file (``--tokens-file``): each
    artist their own token, admins marked. Re-read when the file changes, like the token file;
    a broken edit keeps the previous list."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._artists: dict[str, Principal] = {}
        self._reload()

    @property
    def source(self) -> str:
        return f"{self.path} ({len(self._artists)} artists)"

    def identify(self, authorization: str | None) -> Principal | None:
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._reload(stamp)
        offered = value.strip().encode()
        found = None
        for token, principal in self._artists.items():  # all compared: constant time per token
            if hmac.compare_digest(offered, token.encode()):
                found = principal
        return found

    def _reload(self, stamp: tuple[int, int, int] | None = None) -> None:
        with self._lock:
            self._stamp = stamp or _stamp(self.path)
            try:
                artists = parse_tokens_file(_read_private(self.path, "tokens file"), str(self.path))
            except TokenError as exc:
                if not self._artists:
                    raise
                log.warning("keeping the previous artists' tokens: %s", exc)
                return
            if self._artists and artists != self._artists:
                log.info("the tokens file %s changed: %d artists", self.path, len(artists))
            self._artists = artists
