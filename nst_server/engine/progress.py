"""Progress events sent by the engine, and the outcomes a callback raises to end a run early."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

#: Phases a job goes through, in order. The job queue adds "queued" before and "encoding" after.
PHASES = ("queued", "loading", "preparing", "optimising", "encoding")


class Cancelled(Exception):  # noqa: N818 - it is an outcome, not a failure
    """Raised by a progress callback to stop a run; the engine lets it propagate."""


class FinishEarly(Exception):  # noqa: N818 - it is an outcome, not a failure
    """Raised by a progress callback to stop a run and keep the picture so far: the engine
    returns its current iterate, brought to the result's size, as the result."""


@dataclass(frozen=True, kw_only=True)
class Progress:
    """One progress event, built with keywords.

    ``preview`` is the current iterate (float32, H x W x 3, RGB in [0, 1], at processing size)
    on some "optimising" events: the first, then at most one per ``preview_interval_s`` (each is
    a copy from the device), and the last. Consumers keep the latest and must not modify it.
    """

    phase: str
    step: int
    total: int
    elapsed_s: float
    eta_s: float | None = None
    losses: Mapping[str, float] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # processing (width, height) at the current scale
    result_size: tuple[int, int] | None = None  # (width, height) of the result: the photo's
    scale: int = 1  # which scale of a coarse-to-fine run (1-based) ...
    scales: int = 1  # ... out of how many
    note: str | None = None  # something the user should know about the job
    preview: np.ndarray | None = field(default=None, repr=False, compare=False)


ProgressCallback = Callable[[Progress], None]
