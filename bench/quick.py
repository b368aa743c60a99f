"""Per-step time of the engine, and one job through the real server next to the engine alone.

    .venv/bin/python bench/quick.py [--sizes 128 256] [--steps 20] [--job-size 256]
                                    [--job-steps N]

Run it on an otherwise idle machine: every figure is wall time on this CPU. Images are made in
code (a smooth synthetic photo and a striped 'painting'), so it needs nothing from ../shared.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nst_server.engine import StyleEngine  # noqa: E402
from nst_server.images import encode_png  # noqa: E402
from nst_server.params import StyleParams  # noqa: E402
from tests.conftest import synthetic_painting, synthetic_photo  # noqa: E402


def step_times(engine: StyleEngine, size: int, steps: int) -> list[float]:
    """Seconds per L-BFGS step after the first (which includes tracing) at ``size`` px."""
    stamps: list[float] = []
    content = synthetic_photo(size * 3 // 4, size)
    params = StyleParams.from_mapping({"iterations": steps + 1, "max_size": size}, engine.device)
    engine.stylize(
        content,
        [synthetic_painting(size, size)],
        params,
        lambda e: stamps.append(time.perf_counter()) if e.phase == "optimising" else None,
    )
    return [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(fields: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, (filename, data, ctype) in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode())
        if filename:
            body.write(f'; filename="{filename}"'.encode())
        body.write(f"\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def server_job(url: str, content: np.ndarray, style: np.ndarray, params: dict) -> float:
    """Wall time of POST /v1/jobs -> poll every 0.5 s -> GET result, as the plug-in does it."""
    body, ctype = multipart(
        {
            "content": ("c.png", encode_png(content), "image/png"),
            "style": ("s.png", encode_png(style), "image/png"),
            "params": ("", json.dumps(params).encode(), "application/json"),
        }
    )
    started = time.perf_counter()
    req = urllib.request.Request(url + "/v1/jobs", body, {"Content-Type": ctype})
    job = json.load(urllib.request.urlopen(req))["id"]
    while True:
        state = json.load(urllib.request.urlopen(f"{url}/v1/jobs/{job}"))["state"]
        if state == "done":
            break
        if state in ("failed", "cancelled"):
            raise RuntimeError(f"job {state}")
        time.sleep(0.5)
    urllib.request.urlopen(f"{url}/v1/jobs/{job}/result").read()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--job-size", type=int, default=256)
    ap.add_argument("--job-steps", type=int, default=None, help="default: the device's")
    args = ap.parse_args()

    engine = StyleEngine()
    engine.load()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"device {engine.device}; weights: {engine.weights_description}\n"
    )
    print("| size | median s/step | min | max |\n|---|---|---|---|")
    for size in args.sizes:
        times = step_times(engine, size, args.steps)
        print(
            f"| {size} px | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |"
        )

    size, steps = args.job_size, args.job_steps
    content, style = synthetic_photo(size * 3 // 4, size), synthetic_painting(size, size)
    steps = steps or StyleParams.for_device(engine.device).iterations
    params = {"iterations": steps, "max_size": size}
    p = StyleParams.from_mapping(params, engine.device)
    engine.stylize(content, [style], p)  # warm: the server's engine is warm too
    started = time.perf_counter()
    engine.stylize(content, [style], p)
    alone = time.perf_counter() - started

    port = free_port()
    log = Path(tempfile.mkdtemp()) / "server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "nst_server", "serve", "--port", str(port), "--log-file", str(log)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if json.load(urllib.request.urlopen(url + "/v1/health"))["status"] == "ok":
                    break
            except OSError:
                pass
            time.sleep(0.5)
        server_job(url, content, style, params)  # warm-up, as for the engine
        through = server_job(url, content, style, params)
    finally:
        server.terminate()
        server.wait(30)
    print(
        f"\none {size} px job, {steps} L-BFGS steps, warm: engine alone {alone:.1f} s, "
        f"through HTTP + PNG + polling {through:.1f} s "
        f"(overhead {100 * (through - alone) / alone:+.1f}%)"
    )


if __name__ == "__main__":
    main()
