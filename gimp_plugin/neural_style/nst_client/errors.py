"""The plug-in's own errors: each carries a message meant for the artist (GIMP shows it), and
the advice those messages give."""

from __future__ import annotations

import urllib.parse


class NstError(Exception):
    """A failure with a message meant for the user (shown by GIMP in its error console)."""


class ServerError(NstError):
    """The server answered with an error, or a job failed on it."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class ServerUnreachable(NstError):
    """Nothing answers at the server URL."""


class ServerTooOld(NstError):
    """The server lacks a route or parameter this plug-in needs; the message says to update."""


class JobCancelled(NstError):
    """The job was cancelled on the server (by someone else or by the abandonment rule)."""


class JobLost(NstError):
    """The server stopped or restarted after accepting the job: its in-memory queue is gone."""


def how_to_start(url: str) -> str:
    try:
        port = urllib.parse.urlsplit(url).port or 8765
    except ValueError:
        port = 8765
    return (
        f"Start it in a terminal with `nst-server serve --port {port}` (from the environment "
        f"install/install.sh made), or run install/install.sh again, which starts it and "
        f"records the command for this plug-in."
    )
