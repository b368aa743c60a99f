"""Who may talk to this server: its own clients, never a web page of another origin.

One decision per request, from its method, path and headers alone (no body), made twice with the
same rules: by the HTTP front as soon as the headers have arrived (a refused request's body is
then discarded unread) and by the app, which answers the refusal as JSON.

- ``Host`` must be a loopback name or address, the address the server is bound to, or a name
  given with ``--allowed-hosts`` (a reverse proxy's): a DNS-rebinding page names its own host.
- A request with an ``Origin`` header must come from this server's own origin (scheme http or
  https, host and port as in ``Host``); a request with ``Sec-Fetch-Site`` must be
  ``same-origin`` or ``none`` (a page on another local port is "same-site": not enough).
- Every route needs the token, except ``GET /v1/health``, which without it says only whether
  the server is up and its version.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from nst_server.auth import FIX_HINT, Authenticator, Principal

#: Names that always mean this machine (RFC 6761: browsers resolve *.localhost to loopback).
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")

#: The one route answered (briefly) without a token: installers and clients probe it.
HEALTH_PATH = "/v1/health"

HeaderGetter = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: its status, error code and message for the client."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the names for them; False for 0.0.0.0, :: and others."""
    name = host.strip("[]").rstrip(".").lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


def split_host(value: str) -> str:
    """The host part of a Host header value ('[::1]:8765' -> '::1', 'a.b:80' -> 'a.b')."""
    value = value.strip()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestGuard:
    """The rules above for one server (its bound address, allowed names and token)."""

    def __init__(
        self, authenticator: Authenticator, *, bound_host: str, allowed_hosts: Iterable[str] = ()
    ) -> None:
        self.authenticator = authenticator
        names = {name.strip().rstrip(".").lower() for name in allowed_hosts if name.strip()}
        bound = bound_host.strip("[]").lower()
        try:
            if not ipaddress.ip_address(bound).is_unspecified:
                names.add(bound)  # e.g. --host 192.168.1.5: clients name that address
        except ValueError:
            names.add(bound.rstrip("."))  # a host name given with --host
        self.allowed_hosts = frozenset(names)

    def host_allowed(self, host_header: str) -> bool:
        host = split_host(host_header).rstrip(".").lower()
        return is_loopback(host) or host in self.allowed_hosts

    def check(
        self, method: str, path: str, header: HeaderGetter
    ) -> tuple[Principal | None, Refusal | None]:
        """(who is asking, or None; why the request is refused, or None)."""
        host = header("Host")
        if host is not None and not self.host_allowed(host):
            return None, Refusal(
                403,
                "forbidden_host",
                f"this server does not answer to the host name {split_host(host)[:80]!r}; it "
                "answers to loopback names and to names given with --allowed-hosts "
                "(e.g. a reverse proxy's)",
            )
        origin = header("Origin")
        if origin is not None and not _same_origin(origin, host):
            return None, Refusal(
                403,
                "cross_origin",
                f"requests from web pages of another origin ({origin[:80]!r}) are refused",
            )
        site = header("Sec-Fetch-Site")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            return None, Refusal(
                403,
                "cross_site",
                f"requests from other web sites (Sec-Fetch-Site: {site[:40]!r}) are refused",
            )
        principal = self.authenticator.identify(header("Authorization"))
        if principal is None and not (method in ("GET", "HEAD") and path == HEALTH_PATH):
            return None, Refusal(
                401,
                "unauthorized",
                "this server needs the header 'Authorization: Bearer <token>' with its token; "
                + FIX_HINT,
                {"WWW-Authenticate": 'Bearer realm="nst-server"'},
            )
        return principal, None


def _same_origin(origin: str, host: str | None) -> bool:
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return (
        host is not None
        and parts.scheme in ("http", "https")
        and not parts.path
        and parts.netloc.lower() == host.strip().lower()
    )
