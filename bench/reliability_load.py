"""Load and memory on a real server (waitress + real VGG19, subprocess on a free 127.0.0.1 port):
bombs first (peak RSS before/after), then C concurrent clients (default 20) each submitting J
small jobs (64 px, 2 steps) against a queue of Q (default 4), honouring 429 + Retry-After; each
result is checked to be the client's own (size + alpha hash). Prints p50/p99 latency, 429s and
the server's peak RSS.

    .venv/bin/python bench/reliability_load.py [--clients 20] [--jobs 3] [--queue 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.live_server import TINY, LiveServer, job_form  # noqa: E402
from tests.reliability.helpers import painting, percentile  # noqa: E402
from tests.reliability.hostile import bomb_png, huge_jpeg, zlib_bomb_png  # noqa: E402
from tests.reliability.test_live import run_clients  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--queue", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = LiveServer(Path(tmp), queue_size=args.queue).start()
        try:
            idle = server.memory_kb()
            print(
                f"idle server: RSS {idle['VmRSS'] / 1024:.0f} MB, "
                f"peak {idle['VmHWM'] / 1024:.0f} MB"
            )
            bombs = {
                "30000x30000 PNG bomb": bomb_png(30_000),
                "65000x65000 JPEG": huge_jpeg(),
                "100 MB zlib stream in a 16-bit PNG": zlib_bomb_png(16),
            }
            for name, data in bombs.items():
                codes = {
                    server.post_form("/v1/jobs", job_form(painting(), data, TINY))[0]
                    for _ in range(5)
                }
                print(f"  5 x {name} ({len(data) // 1024} KB): HTTP {sorted(codes)}")
            after = server.memory_kb()
            print(
                f"after bombs: RSS {after['VmRSS'] / 1024:.0f} MB, "
                f"peak {after['VmHWM'] / 1024:.0f} MB "
                f"(+{(after['VmHWM'] - idle['VmHWM']) / 1024:.0f} MB)"
            )
            started = time.monotonic()
            stats = run_clients(server, clients=args.clients, jobs_each=args.jobs)
            wall = time.monotonic() - started
            lat = stats["latencies"]
            loaded = server.memory_kb()
            print(
                f"load: {args.clients} clients x {args.jobs} jobs = {len(lat)} jobs done, "
                f"0 mix-ups, {stats['refused']} x 429 (all with Retry-After), {wall:.0f} s wall"
            )
            print(
                f"  latency submit->result: p50 {percentile(lat, 50):.2f} s, "
                f"p99 {percentile(lat, 99):.2f} s, max {max(lat):.2f} s"
            )
            print(f"  server peak RSS {loaded['VmHWM'] / 1024:.0f} MB; healthy {server.healthy()}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
