"""What a client sees of the engine's progress through the real job queue and the real VGG19."""

from __future__ import annotations

from nst_server.jobs import LocalQueue
from nst_server.params import StyleParams
from tests.api.helpers import as_json, job_inputs
from tests.conftest import synthetic_painting, synthetic_photo
from tests.fake_engine import wait_for


def test_a_snapshot_tells_the_processing_size_and_the_results_so_the_enlargement(engine):
    queue = LocalQueue(engine, tick_s=0.02)
    queue.start()
    try:
        job = queue.submit(
            job_inputs(synthetic_photo(150, 200), [synthetic_painting()]),
            StyleParams.from_mapping({"iterations": 3, "max_size": 64}, "cpu"),
        )
        seen: list[dict] = []

        def done() -> dict | None:
            snap = as_json(queue.snapshot(job.id))
            if snap and "size" in snap["progress"]:
                seen.append(dict(snap["progress"]))
            return snap if snap and snap["state"] in ("done", "failed") else None

        snap = wait_for(done, timeout=120)
    finally:
        queue.close()
    assert snap["state"] == "done", snap
    progress = [p for p in seen if p.get("phase") == "optimising"][-1]
    assert progress["size"] == [64, 48] and progress["result_size"] == [200, 150]
    enlargement = max(progress["result_size"]) / max(progress["size"])
    assert round(enlargement, 3) == 3.125
