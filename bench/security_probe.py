"""Issue 11's attacks, each as a figure, against two versions of the server side by side.

Starts ``python -m nst_server serve`` from each checkout given (real engine, waitress, a free
127.0.0.1 port, its own config/state/runtime folders) and runs every probe on each in turn
(A B A B ...: load from other work falls on both); timings are medians over ``--rounds``.
A version from before tokens is probed without one.

    git archive eb9385d | (mkdir -p /tmp/nst-before && tar -x -C /tmp/nst-before)
    .venv/bin/python bench/security_probe.py /tmp/nst-before . [--rounds 3] [--json out.json]

Probes: a hostile page in headless Chromium (jobs it got queued); a foreign Host; a request of
eight 10-megapixel paintings of one colour (memory while it waits); a long thin photo; decoder
bombs (time to the answer, and health's latency meanwhile); eight requests holding every
waiting slot (health's latency); 150 dripping connections (a fresh client's latency); a 150 MB
body without the token (files the server holds open meanwhile); a float TIFF with NaN; a 1 MB
params field; the log file's mode and its 401 lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from tests.browser.attack import PageServer, attack_page, chromium_path, load  # noqa: E402
from tests.live_server import LiveServer, job_form  # noqa: E402
from tests.reliability.helpers import gradient, painting, png  # noqa: E402
from tests.reliability.hostile import (  # noqa: E402
    float_tiff,
    many_chunks_png,
    many_scans_jpeg,
    thin_png16,
)

# Adam runs every step it is given (L-BFGS may stop early once it converges): a job that
# stays running until it is cancelled or finished.
LONG = {"iterations": 5000, "max_size": 64, "coarse_to_fine": False, "optimizer": "adam"}
TINY = {"iterations": 2, "max_size": 64}


def timed(call) -> float:  # noqa: ANN001
    started = time.perf_counter()
    try:
        call()
    except OSError:
        return float("inf")
    return time.perf_counter() - started


def health_latency(server: LiveServer, timeout: float = 30.0) -> float:
    return timed(lambda: server.request("GET", "/v1/health", timeout=timeout))


def rss_mb(server: LiveServer) -> float:
    return server.memory_kb()["VmRSS"] / 1024


def cancel_all(server: LiveServer, ids: list[str]) -> None:
    for job_id in ids:
        with contextlib.suppress(OSError):
            server.request("DELETE", f"/v1/jobs/{job_id}", timeout=10)
    with contextlib.suppress(AssertionError, OSError, KeyError):
        server.wait_idle(timeout=60)


def submit(server: LiveServer, fields, timeout: float = 120.0) -> tuple[int, dict]:  # noqa: ANN001
    status, _, data = server.post_form("/v1/jobs", fields, timeout=timeout)
    try:
        return status, json.loads(data)
    except ValueError:
        return status, {}


def open_body_files(server: LiveServer) -> list[str]:
    own = {str(server.log_file), str(server.stderr_file)}
    out = []
    for fd in os.listdir(f"/proc/{server.process.pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{server.process.pid}/fd/{fd}")
            if target.startswith("/") and target not in own and not target.startswith("/dev/"):
                out.append(target)
    return out


# --- the probes: each returns {figure: value} ---------------------------------------------------


def probe_browser(server: LiveServer) -> dict:
    if chromium_path() is None:
        return {"browser": "chromium not installed"}
    before = server.log_text().count(" queued: ")
    with PageServer(attack_page(server.port)) as page:
        load(f"http://localhost:{page.port}/")
    time.sleep(1.0)
    queued = server.log_text().count(" queued: ") - before
    with contextlib.suppress(AssertionError, OSError, KeyError):
        server.wait_idle(timeout=120)
    return {"jobs queued by a hostile page": queued}


def probe_foreign_host(server: LiveServer) -> dict:
    status, _, data = server.request("GET", "/v1/health", headers={"Host": "evil.example:80"})
    leaked = [key for key in ("log", "weights") if f'"{key}"' in data.decode(errors="replace")]
    return {"foreign Host: health status": status, "foreign Host: health fields read": leaked}


def probe_amplification(server: LiveServer) -> dict:
    """One request of eight 10-megapixel paintings of one colour, waiting behind a long job."""
    solid = png(Image.new("RGB", (3650, 2740), (30, 90, 200)), compress_level=9)
    _, running = submit(server, job_form(png(gradient(64, 48)), painting(), LONG))
    time.sleep(1.0)
    idle = rss_mb(server)
    fields = [("content", "c.png", solid)] + [("style", f"s{i}.png", solid) for i in range(8)]
    fields.append(("params", None, json.dumps(TINY).encode()))
    status, body = submit(server, fields)
    time.sleep(1.0)
    held = rss_mb(server) - idle
    cancel_all(server, [running.get("id", ""), body.get("id", "")])
    return {
        "8 x 10 MP request: bytes sent": 9 * len(solid),
        "8 x 10 MP request: status": status,
        "8 x 10 MP request: MB held while queued": round(held),
    }


def probe_thin_photo(server: LiveServer) -> dict:
    """A 12000 x 40 photo at max_size 64, 2 steps: given 120 s, then cancelled."""
    thin = png(Image.new("RGB", (12000, 40), (80, 80, 80)))
    idle_peak = server.memory_kb()["VmHWM"] / 1024
    started = time.perf_counter()
    status, body = submit(server, job_form(thin, painting(), TINY))
    out = {"12000x40 photo at max_size 64: status": status}
    if status == 202:
        final: dict = {}
        while time.perf_counter() - started < 120:
            final = server.get_json(f"/v1/jobs/{body['id']}")[1]
            if final["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(1.0)
        out["12000x40 photo: state after at most 120 s"] = final.get("state")
        out["12000x40 photo: processed at"] = final.get("progress", {}).get("size")
        out["12000x40 photo: peak RSS growth MB"] = round(
            server.memory_kb()["VmHWM"] / 1024 - idle_peak
        )
        if final.get("state") not in ("done", "failed", "cancelled"):
            server.stop()  # a cancel lands only at its next step: start afresh instead
            server.start()
        else:
            cancel_all(server, [body["id"]])
    return out


def probe_decoder_bombs(server: LiveServer) -> dict:
    out = {}
    for name, data in (
        ("thin 16-bit PNG (1 x 4,000,000)", thin_png16(4_000_000)),
        ("PNG of 600,000 empty chunks", many_chunks_png(600_000)),
        ("JPEG of 10,000 scans", many_scans_jpeg(10_000)),
    ):
        latencies: list[float] = []
        done = threading.Event()

        def watch(latencies: list[float] = latencies, done: threading.Event = done) -> None:
            while not done.is_set():
                latencies.append(health_latency(server))
                done.wait(0.2)

        watcher = threading.Thread(target=watch)
        started = time.perf_counter()
        watcher.start()
        status, body = submit(server, job_form(png(gradient(64, 48)), data, TINY), timeout=600)
        seconds = time.perf_counter() - started
        done.set()
        watcher.join()
        if status == 202:  # decoded in the request: the job itself is tiny
            cancel_all(server, [body["id"]])
        out[f"{name}: s to answer ({status})"] = round(seconds, 2)
        out[f"{name}: health worst s meanwhile"] = round(max(latencies, default=0.0), 3)
    return out


def probe_starvation(server: LiveServer) -> dict:
    """A long job, a queued one, and 8 long polls on the queued one (nothing changes for it):
    with 8 threads all are held."""
    _, running = submit(server, job_form(png(gradient(64, 48)), painting(), LONG))
    _, waiting = submit(server, job_form(png(gradient(64, 48)), painting(), LONG))
    version = server.get_json(f"/v1/jobs/{waiting['id']}")[1]["version"]
    holders = [
        threading.Thread(
            target=lambda: server.request(
                "GET", f"/v1/jobs/{waiting['id']}?since={version}&wait=10", timeout=60
            ),
            daemon=True,
        )
        for _ in range(8)
    ]
    for thread in holders:
        thread.start()
    time.sleep(0.5)
    worst = max(health_latency(server) for _ in range(3))
    for thread in holders:
        thread.join(30)
    cancel_all(server, [running["id"], waiting["id"]])
    return {"8 long polls held: health s": round(worst, 3)}


def probe_slow_connections(server: LiveServer) -> dict:
    drippers = []
    for _ in range(150):
        with contextlib.suppress(OSError):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            drippers.append(sock)
    stop = threading.Event()

    def drip() -> None:
        while not stop.is_set():
            for sock in drippers:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
            stop.wait(0.5)

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    time.sleep(1.0)
    seconds = health_latency(server, timeout=20.0)
    stop.set()
    thread.join(5)
    for sock in drippers:
        sock.close()
    return {"150 slow connections: fresh health s (20 s cap)": round(seconds, 3)}


def probe_body_on_disk(server: LiveServer) -> dict:
    body = b"\0" * (150 * 2**20)
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\nConnection: close\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(head.encode())
    with contextlib.suppress(OSError):
        sock.sendall(body[: 120 * 2**20])
    time.sleep(0.5)
    files = open_body_files(server)
    on_disk = 0
    for name in files:
        with contextlib.suppress(OSError):
            on_disk += os.stat(name.removesuffix(" (deleted)")).st_size
    with contextlib.suppress(OSError):
        sock.sendall(body[120 * 2**20 :])
    reply = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            reply += chunk
    sock.close()
    status = reply.split(b" ", 2)[1].decode() if reply else "none"
    return {
        "150 MB body without the token: answer": status,
        "150 MB body: files open mid-upload": [f.rsplit("/", 2)[-2:] for f in files],
    }


def probe_small_ones(server: LiveServer) -> dict:
    out = {}
    status, body = submit(server, job_form(float_tiff(float("nan")), painting(), TINY))
    if status == 202:
        body = server.wait_state(body["id"], timeout=120)
        status = f"202, then {body['state']} {body.get('error_code')}"
    out["float TIFF with NaN"] = status
    status, _, data = server.post_form(
        "/v1/jobs", job_form(png(gradient(64, 48)), painting(), "{" + " " * 2**20 + "}")
    )
    message = json.loads(data)["error"]["message"] if status >= 400 else ""
    out["1 MB params: answer"] = f"{status}: {message[:70]}"
    server.request("GET", "/v1/params", token=False)
    log_lines = [
        line for line in server.log_text().splitlines() if " 401" in line or "-> 401" in line
    ]
    out["401 logged with the address"] = any("127.0.0.1" in line for line in log_lines)
    out["log file mode"] = oct(server.log_file.stat().st_mode & 0o777)
    return out


PROBES = (
    probe_browser,
    probe_foreign_host,
    probe_amplification,
    probe_thin_photo,
    probe_decoder_bombs,
    probe_body_on_disk,
    probe_small_ones,
    probe_starvation,
    probe_slow_connections,  # last: an old server may stay wedged for a while
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="repositories to compare")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the timed probes")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    results: dict[str, dict[str, list]] = {str(c): {} for c in args.checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        servers = []
        for i, checkout in enumerate(args.checkouts):
            server = LiveServer(
                Path(tmp) / f"server{i}", repo=checkout.resolve(), abandon_after_s=30
            )
            servers.append(server.start())
        try:
            for probe in PROBES:
                rounds = args.rounds if probe in (probe_decoder_bombs, probe_starvation) else 1
                for _ in range(rounds):
                    for checkout, server in zip(args.checkouts, servers, strict=True):
                        print(f"{probe.__name__} on {checkout} ...", flush=True)
                        if not server.healthy():
                            server.stop()
                            server.start()
                        for key, value in probe(server).items():
                            results[str(checkout)].setdefault(key, []).append(value)
        finally:
            for server in servers:
                server.stop()
    print()
    for checkout, figures in results.items():
        print(f"== {checkout}")
        for key, values in figures.items():
            numbers = [v for v in values if isinstance(v, (int, float))]
            shown = (
                statistics.median(numbers)
                if len(numbers) == len(values) and len(values) > 1
                else values[0]
            )
            print(f"  {key}: {shown}" + (f"  (rounds: {values})" if len(values) > 1 else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
