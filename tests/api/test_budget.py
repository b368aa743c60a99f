"""nst_server.budget: held bytes add up, only the largest run counts, nothing ever exceeds the
budget; 'never' and 'not now' are told apart."""

from __future__ import annotations

import pytest

from nst_server.budget import MemoryBudget, NeverFits, NotNow

MB = 2**20


def test_held_adds_up_and_only_the_largest_run_counts() -> None:
    budget = MemoryBudget(1000 * MB)
    budget.reserve("a", held=100 * MB, run=600 * MB, what="job a")
    budget.reserve("b", held=100 * MB, run=500 * MB, what="job b")  # 200 + 600 <= 1000
    assert budget.used() == 800 * MB
    with pytest.raises(NotNow, match="try again"):
        budget.reserve("c", held=300 * MB, run=0, what="job c")  # 500 + 600 > 1000
    with pytest.raises(NotNow):
        budget.reserve("d", held=10 * MB, run=800 * MB, what="job d")  # 210 + 800 > 1000
    budget.shrink("a", held=5 * MB, run=0)  # a finished: its result stays
    assert budget.used() == 105 * MB + 500 * MB
    budget.reserve("c", held=300 * MB, run=0, what="job c")
    budget.release("b")
    assert budget.used() == 305 * MB


def test_what_could_never_fit_is_told_apart_and_named() -> None:
    budget = MemoryBudget(1000 * MB)
    with pytest.raises(NeverFits, match=r"this job needs about 1,100 MB.*1,000 MB"):
        budget.reserve("x", held=100 * MB, run=1000 * MB, what="this job")
    assert budget.used() == 0


def test_an_upload_is_replaced_by_its_job_atomically() -> None:
    budget = MemoryBudget(1000 * MB)
    with budget.holding("upload", 400 * MB, "this upload"):
        # the job takes over from its upload: the upload's bytes do not count twice
        budget.reserve("job", held=300 * MB, run=600 * MB, what="the job", replacing="upload")
    assert budget.used() == 900 * MB  # the job's, the upload's released with it
    budget.shrink("job", held=10 * MB, run=0)
    assert budget.used() == 10 * MB
    budget.shrink("job", held=999 * MB)  # shrink never grows
    assert budget.used() == 10 * MB
