"""Property-based fuzzing of every endpoint through Flask's test client on a fake engine.

A quick test sends a few hundred requests; the slow one (in the full suite and CI; left out by
``-m "not slow"``) and bench/reliability_fuzz.py send 10,000. Rule for every answer: no 5xx,
JSON errors without tracebacks (see fuzzing.py). After the run: the worker thread is alive,
health is ok, and a real job still completes.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from nst_server.api import get_queue
from tests.api.helpers import make_test_app, serving_client
from tests.fake_engine import FakeEngine
from tests.reliability.fuzzing import Request, check_answer, requests
from tests.reliability.helpers import gradient, painting, png

DEFAULT_EXAMPLES = int(os.environ.get("NST_FUZZ_EXAMPLES", "400"))
OPENAPI = Path(__file__).resolve().parents[2] / "nst_server" / "openapi.yaml"


class FuzzTarget:
    """An app on a fake engine, the requests sent to it and what came back."""

    def __init__(self) -> None:
        self.engine = FakeEngine(record_calls=False)  # 10,000 requests: keep no arrays
        self.app = make_test_app(self.engine, abandon_after_s=0, queue_size=4, job_ttl_s=60)
        self.client = serving_client(self.app)
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.paths: set[str] = set()

    def send(self, request: Request) -> None:
        method, path, headers, body = request
        response = self.client.open(path, method=method, headers=headers, data=body)
        self.sent += 1
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        self.paths.add(f"{method} {re.sub(r'/jobs/[^/]+', '/jobs/{id}', path)}")
        job_id = check_answer(request, response.status_code, response.content_type, response.data)
        if job_id is not None:  # poll it and cancel it, exercising those endpoints on real ids
            for suffix in ("", "/preview", "/result"):
                r = self.client.get(f"/v1/jobs/{job_id}{suffix}")
                check_answer(("GET", "/v1/jobs/x", {}, b""), r.status_code, r.content_type, r.data)
            r = self.client.post(f"/v1/jobs/{job_id}/finish")
            check_answer(
                ("POST", "/v1/jobs/x/finish", {}, b""), r.status_code, r.content_type, r.data
            )
            r = self.client.delete(f"/v1/jobs/{job_id}")
            assert r.status_code in (200, 202), r.data
            self.sent += 5

    def assert_still_serving(self) -> None:
        queue = get_queue(self.app)
        assert all(t.is_alive() for t in queue._threads), "a worker thread died"
        assert self.client.get("/v1/health").get_json()["status"] == "ok"
        data = {
            "content": (io.BytesIO(png(gradient(40, 32))), "c.png"),
            "style": (io.BytesIO(painting(48)), "s.png"),
            "params": '{"iterations": 2, "max_size": 64}',
        }
        response = self.client.post("/v1/stylize", data=data, content_type="multipart/form-data")
        assert response.status_code == 200, response.data[:300]

    def close(self) -> None:
        get_queue(self.app).close()


def run_fuzz(examples: int, *, derandomize: bool = False) -> FuzzTarget:
    """Send ``examples`` generated requests (and follow-ups on accepted jobs) to a new app.

    ``derandomize``: the same requests every run (hypothesis seeds from the test itself).
    """
    target = FuzzTarget()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests())
    def one(request: Request) -> None:
        target.send(request)

    try:
        one()
        target.assert_still_serving()
    finally:
        target.close()
    return target


def test_fuzz_every_endpoint_no_5xx() -> None:
    # Derandomized: a few hundred random requests missed /v1/params once in CI; the same
    # sequence each run keeps the coverage check below deterministic (the 10,000-request run
    # stays random).
    target = run_fuzz(DEFAULT_EXAMPLES, derandomize=True)
    assert target.sent >= DEFAULT_EXAMPLES
    assert not any(status >= 500 for status in target.statuses)
    # the generator really reached every endpoint and both outcomes
    documented = set(re.findall(r"^  (/v1/[^:]+):", OPENAPI.read_text(), re.M))
    reached = {p.split(" ", 1)[1] for p in target.paths}
    assert documented <= reached, documented - reached
    assert 202 in target.statuses and 400 in target.statuses and 404 in target.statuses


@pytest.mark.slow
def test_fuzz_ten_thousand_requests() -> None:
    # ~2 min: part of the full suite (and so of CI); `pytest -m "not slow"` leaves it out.
    target = run_fuzz(10_000)
    assert target.sent >= 10_000
    assert not any(status >= 500 for status in target.statuses)
