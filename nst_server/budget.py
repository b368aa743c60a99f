"""The memory budget: what the server may hold above its idle size, and who holds it now.

Two kinds of reservation, each an upper bound of bytes:

- ``held``: what stays in memory while it exists: an upload being parsed, a queued job's
  compressed uploads and the room for its result, a finished job's result PNG;
- ``run``: what a job needs only while it runs (decoded images, the network's activations, the
  optimiser, encoding the result). One job runs at a time, so only the largest ``run`` of the
  jobs that have not finished counts.

The invariant, checked whenever something is added: the sum of ``held`` plus the largest
``run`` stays within the budget. So whichever job runs next, it fits beside everything held,
and the peak above idle cannot exceed the budget. A reservation that could never fit, even in an
empty server, is :class:`NeverFits` (the API answers 413); one that does not fit now is
:class:`NotNow` (429 with Retry-After). Nothing is ever shrunk to fit.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

MB = 2**20


class BudgetExceeded(Exception):  # noqa: N818 - the two subclasses read as outcomes
    """A reservation does not fit; ``needed`` and ``budget`` in bytes."""

    def __init__(self, message: str, needed: int, budget: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.budget = budget


class NeverFits(BudgetExceeded):
    """It would not fit even if nothing else were held."""


class NotNow(BudgetExceeded):
    """It fits an idle server, not beside what is held now."""


@dataclass
class _Entry:
    held: int
    run: int
    what: str


class MemoryBudget:
    """Reservations by key (a job id, a request); thread-safe."""

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("the memory budget must be positive")
        self.total = int(total)
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}

    def reserve(
        self,
        key: Hashable,
        *,
        held: int,
        run: int = 0,
        what: str,
        replacing: Hashable | None = None,
    ) -> None:
        """Add a reservation (``replacing`` another one atomically, e.g. an upload by its job).

        Raises NeverFits or NotNow, whose message names ``what`` and the sizes."""
        held, run = max(0, int(held)), max(0, int(run))
        if held + run > self.total:
            raise NeverFits(
                f"{what} needs about {_mb(held + run)} of memory, more than this server's "
                f"budget of {_mb(self.total)} (NST_MEMORY_BUDGET)",
                held + run,
                self.total,
            )
        with self._lock:
            others = {k: e for k, e in self._entries.items() if k != replacing and k != key}
            used = sum(e.held for e in others.values()) + max(
                (e.run for e in others.values()), default=0
            )
            after = sum(e.held for e in others.values()) + held
            after += max(run, max((e.run for e in others.values()), default=0))
            if after > self.total:
                raise NotNow(
                    f"{what} needs about {_mb(held + run)} of memory and "
                    f"{_mb(max(0, self.total - used))} of this server's budget of "
                    f"{_mb(self.total)} is free now (other jobs and their results hold the "
                    "rest); try again shortly",
                    held + run,
                    self.total,
                )
            if replacing is not None:
                self._entries.pop(replacing, None)
            self._entries[key] = _Entry(held, run, what)

    def shrink(self, key: Hashable, *, held: int | None = None, run: int | None = None) -> None:
        """Lower a reservation (a job that started, finished or dropped its inputs)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            if held is not None:
                entry.held = min(entry.held, max(0, int(held)))
            if run is not None:
                entry.run = min(entry.run, max(0, int(run)))

    def release(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    @contextmanager
    def holding(self, key: Hashable, held: int, what: str) -> Iterator[None]:
        """Reserve ``held`` bytes for the duration of a ``with`` block (unless replaced)."""
        self.reserve(key, held=held, what=what)
        try:
            yield
        finally:
            self.release(key)

    def used(self) -> int:
        """Bytes reserved now under the invariant: the sum of held plus the largest run."""
        with self._lock:
            entries = list(self._entries.values())
        return sum(e.held for e in entries) + max((e.run for e in entries), default=0)

    def stats(self) -> dict[str, int]:
        return {"budget": self.total, "reserved": self.used()}


def _mb(nbytes: int) -> str:
    return f"{nbytes / MB:,.0f} MB" if nbytes < 10 * 2**30 else f"{nbytes / 2**30:.1f} GB"
