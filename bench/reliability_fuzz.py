"""Fuzz every endpoint with N generated requests (default 10,000) through Flask's test client on
a fake engine, then M (default 300) against a real server (waitress + real VGG19, subprocess on
a free 127.0.0.1 port). Prints the figures RELIABILITY.md quotes; exits 1 on any 5xx.

    .venv/bin/python bench/reliability_fuzz.py [--requests 10000] [--live 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.live_server import LiveServer  # noqa: E402
from tests.reliability.test_fuzz import run_fuzz  # noqa: E402
from tests.reliability.test_live import run_live_fuzz  # noqa: E402


def live_fuzz(examples: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, LiveServer(Path(tmp), queue_size=4) as server:
        statuses = run_live_fuzz(server, examples)
        alive = server.process.poll() is None
        healthy = server.healthy()
        memory = server.memory_kb()
    return {"statuses": statuses, "alive": alive, "healthy": healthy, "memory_kb": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--live", type=int, default=300)
    args = parser.parse_args()
    started = time.monotonic()
    target = run_fuzz(args.requests)  # raises on a 5xx, a dead worker or a failing health check
    print(
        f"test client + fake engine: {target.sent} requests ({args.requests} generated) in "
        f"{time.monotonic() - started:.0f} s; statuses {dict(sorted(target.statuses.items()))}; "
        "worker alive, health ok, a job completes afterwards"
    )
    if args.live:
        started = time.monotonic()
        live = live_fuzz(args.live)
        print(
            f"real server + real engine: {sum(live['statuses'].values())} requests in "
            f"{time.monotonic() - started:.0f} s; "
            f"statuses {dict(sorted(live['statuses'].items()))}; "
            f"process alive {live['alive']}, health ok {live['healthy']}, "
            f"peak RSS {live['memory_kb']['VmHWM'] / 1024:.0f} MB"
        )
        if any(s >= 500 for s in live["statuses"]) or not live["healthy"]:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
