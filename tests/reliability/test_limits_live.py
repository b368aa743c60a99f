"""Issue 11's classes against the real server (``python -m nst_server serve``: waitress, the
front, the real VGG19 engine) on 127.0.0.1, each measuring what it promises: which files the
server process holds open while a body arrives, how long health and polls take with every
waiting slot and the queue busy or 150 slow connections open, how long hostile images take to be
refused, and its peak memory above idle against the memory budget.

The browser (cross-origin pages, DNS rebinding) is in tests/browser.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.live_server import LiveServer, job_form, multipart
from tests.reliability.helpers import gradient, painting, png
from tests.reliability.hostile import many_chunks_png, many_scans_jpeg, thin_png16

UPLOAD_LIMIT = 20 * 2**20
BUDGET_MB = 1024
BUDGET = BUDGET_MB * 2**20
# Adam runs every step it is given (L-BFGS may stop early once it converges): a job that
# stays running until it is cancelled or finished.
LONG = {"iterations": 5000, "max_size": 64, "coarse_to_fine": False, "optimizer": "adam"}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    srv = LiveServer(
        tmp_path_factory.mktemp("limits-live"),
        queue_size=4,
        abandon_after_s=5.0,
        env={
            "NST_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
            "NST_THREADS": "8",  # 4 may wait (stylize, long polls), 4 stay free
            "NST_HEADER_TIMEOUT_S": "3",
        },
    )
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def open_files(pid: int) -> list[str]:
    """What the process' file descriptors point at, sockets and pipes left out."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if not target.startswith(("socket:", "pipe:", "anon_inode:", "/dev/")):
            out.append(target)
    return out


def raw_post(
    server: LiveServer,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    declared: int | None = None,
) -> tuple[bytes, list[str]]:
    """POST ``body`` over a raw socket (declaring ``declared`` bytes, default its length),
    pausing half way to note the server's open files. Returns (the answer, those files)."""
    length = len(body) if declared is None else declared
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "Connection: close\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(head.encode())
    cut = len(body) // 2
    with contextlib.suppress(OSError):  # a body cut off: the server stops reading
        sock.sendall(body[:cut])
    time.sleep(0.5)  # let the server read what it got
    files = open_files(server.process.pid)
    with contextlib.suppress(OSError):
        sock.sendall(body[cut:])
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    sock.close()
    return data, files


def bodies_held(server: LiveServer, files: list[str]) -> list[str]:
    """Open files that could hold a request body: anything but the server's log and output."""
    own = {str(server.log_file), str(server.stderr_file)}
    return [f for f in files if f not in own and not f.startswith(("/proc/", "/sys/"))]


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return png(Image.fromarray(pixels))


# --- uploads on disk ---------------------------------------------------------------------------


def test_a_refused_body_is_never_stored_in_memory_or_on_disk(server: LiveServer) -> None:
    """Without the token, 15 MB (read and thrown away, then 401) and 150 MB (once written to
    /tmp before the 401; now cut off: 413 at once, not read); with it, just over the upload
    limit (thrown away, 413 naming the limit). No file is held open, peak memory is unmoved."""
    server.wait_idle()
    before = server.memory_kb()
    multi = {"Content-Type": "multipart/form-data; boundary=x"}
    reply, files = raw_post(server, "/v1/jobs", b"\0" * (15 * 2**20), multi)
    assert status_of(reply) == 401 and b"nst-server token --show" in reply
    assert bodies_held(server, files) == [], files
    # 150 MB declared, 2 MB sent: the answer comes at once, the rest is never read
    reply, files = raw_post(server, "/v1/jobs", b"\0" * 2**21, multi, declared=150 * 2**20)
    assert status_of(reply) == 413 and b"max_upload_bytes" in reply and b"not read" in reply
    assert bodies_held(server, files) == [], files
    over = b"\0" * (UPLOAD_LIMIT + 2**19)
    reply, files = raw_post(server, "/v1/jobs", over, {**server.auth, **multi})
    assert status_of(reply) == 413 and b"max_upload_bytes" in reply, reply[-300:]
    assert bodies_held(server, files) == [], files
    grown_mb = (server.memory_kb()["VmHWM"] - before["VmHWM"]) / 1024
    assert grown_mb < 40, f"peak RSS grew by {grown_mb:.0f} MB for discarded bodies"


def test_an_accepted_upload_spools_only_into_the_private_folder(server: LiveServer) -> None:
    """A 9 MB upload (waitress spools bodies over 512 KB): the file is in the private folder,
    unlinked, and the folder is empty afterwards; nothing in /tmp."""
    server.wait_idle()
    content = noise_png(1800, 1300)
    assert len(content) > 6 * 2**20
    body, ctype = multipart(job_form(content, painting(), {"iterations": 2, "max_size": 64}))
    reply, files = raw_post(server, "/v1/jobs", body, {**server.auth, "Content-Type": ctype})
    assert status_of(reply) == 202, reply[-300:]
    held = bodies_held(server, files)
    assert held and all(f.startswith(f"{server.spool_dir}/") and "(deleted)" in f for f in held)
    assert stat.S_IMODE(server.spool_dir.stat().st_mode) == 0o700
    # The folder is the process' temporary folder: TensorFlow writes its generated code there
    # too. Nothing else is left, and nothing of the upload.
    left = [p for p in server.spool_dir.iterdir() if not p.name.startswith("__autograph")]
    assert left == []
    assert not any(content[1000:1100] in p.read_bytes() for p in server.spool_dir.iterdir())
    job_id = json.loads(reply.split(b"\r\n\r\n", 1)[1])["id"]
    assert server.wait_state(job_id, timeout=60)["state"] == "done"


def test_the_log_is_private(server: LiveServer) -> None:
    assert stat.S_IMODE(server.log_file.stat().st_mode) == 0o600


# --- nobody starves ----------------------------------------------------------------------------


def timed(call) -> float:  # noqa: ANN001
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def test_health_and_polls_answer_within_a_second_with_everything_busy(server: LiveServer) -> None:
    """A running job, the queue full, every waiting slot held by long polls and /v1/stylize,
    more of both knocking: a fresh client's health and polls still answer within 1 s."""
    server.wait_idle()
    running = json.loads(
        server.post_form("/v1/jobs", job_form(png(gradient(64, 48)), painting(), LONG))[2]
    )["id"]
    server.wait_state(running, ("done", "failed", "cancelled"), min_step=1)
    held: list[threading.Thread] = []
    answers: list[int] = []

    def hold(method: str, path: str, fields=None) -> None:  # noqa: ANN001
        def run() -> None:
            if fields is None:
                answers.append(server.request(method, path, timeout=60)[0])
            else:
                answers.append(server.post_form(path, fields, timeout=60)[0])

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        held.append(thread)

    form = job_form(png(gradient(64, 48)), painting(), LONG)
    short = job_form(png(gradient(64, 48)), painting(), {"iterations": 2, "max_size": 64})
    for _ in range(2):
        hold("POST", "/v1/stylize", short)  # each waits for its job: 2 waiting slots
    time.sleep(1.0)
    queued = [json.loads(server.post_form("/v1/jobs", form)[2])["id"] for _ in range(2)]
    status, _, data = server.post_form("/v1/jobs", form)
    assert status == 429 and b"queue_full" in data  # the queue is full
    # long polls of a waiting job: nothing changes for it, so each holds its thread 10 s
    snapshot = server.get_json(f"/v1/jobs/{queued[-1]}")[1]
    for _ in range(6):  # 2 more fill the waiting slots; 4 find them taken
        hold("GET", f"/v1/jobs/{queued[-1]}?since={snapshot['version']}&wait=10")
    time.sleep(1.0)
    status, _, data = server.post_form("/v1/stylize", form)
    assert status == 429 and b"too_busy" in data

    latencies = []
    for _ in range(10):
        latencies.append(timed(lambda: server.get_json("/v1/health", timeout=10)))
        latencies.append(timed(lambda: server.get_json(f"/v1/jobs/{queued[0]}", timeout=10)))
        time.sleep(0.1)
    for job_id in [running, *queued]:
        server.request("DELETE", f"/v1/jobs/{job_id}")
    for thread in held:
        thread.join(30)
    print(f"\nhealth/poll latency under load: max {max(latencies):.3f} s")
    assert max(latencies) < 1.0, latencies
    server.wait_idle(timeout=60)


def test_150_slow_connections_do_not_stop_a_fresh_client(server: LiveServer) -> None:
    """150 connections dripping header bytes: a fresh client is answered within 2 s, and the
    drippers are cut off once the header timeout (3 s here) has passed."""
    drippers = []
    for _ in range(150):
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
    try:
        time.sleep(1.0)
        latencies = [timed(lambda: server.get_json("/v1/health", timeout=10)) for _ in range(5)]
        print(f"\nhealth latency with 150 slow connections: max {max(latencies):.3f} s")
        assert max(latencies) < 2.0, latencies
        time.sleep(3.5)  # past the header timeout
        cut = 0
        for sock in drippers:
            sock.settimeout(0.05)
            try:
                cut += sock.recv(1) == b""
            except TimeoutError:
                pass
            except OSError:
                cut += 1
        assert cut == len(drippers), f"{len(drippers) - cut} slow connections still open"
    finally:
        stop.set()
        thread.join(5)
        for sock in drippers:
            sock.close()


# --- decoder bombs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "make", "status"),
    [
        ("thin 16-bit PNG", lambda: thin_png16(4_000_000), 413),
        ("PNG of 600,000 empty chunks", lambda: many_chunks_png(600_000), 400),
        ("JPEG of 10,000 scans", lambda: many_scans_jpeg(10_000), 400),
    ],
)
def test_decoder_bombs_are_refused_at_once(server: LiveServer, name: str, make, status) -> None:  # noqa: ANN001
    data = make()
    started = time.perf_counter()
    reply_status, _, reply = server.post_form("/v1/jobs", job_form(png(gradient(64, 48)), data))
    seconds = time.perf_counter() - started
    assert reply_status == status, reply[:300]
    assert json.loads(reply)["error"]["message"].startswith("style:")
    print(f"\n{name} ({len(data) / 2**20:.1f} MB): {reply_status} in {seconds:.2f} s")
    assert seconds < 2.0


# --- the memory budget -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def budget_server(tmp_path_factory) -> Iterator[LiveServer]:
    """A server with a 1 GB memory budget and room for 16 waiting jobs."""
    srv = LiveServer(
        tmp_path_factory.mktemp("budget-live"),
        queue_size=16,
        abandon_after_s=60.0,
        env={"NST_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT), "NST_MEMORY_BUDGET": str(BUDGET)},
    )
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def solid_png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    """A picture of one colour: a few KB on the wire, 12-16 bytes a pixel once decoded."""
    return png(Image.new("RGB", (width, height), colour), compress_level=9)


@pytest.mark.slow  # about 40 s: a second server and a dozen 3-megapixel jobs
def test_peak_memory_above_idle_stays_within_the_budget(budget_server: LiveServer) -> None:
    """Requests built to take memory against a 1 GB budget: eight 10-megapixel paintings of one
    colour in one request (1.3 GB of floats once decoded, a few KB on the wire), a style pass
    at style_scale 4, a long thin photo, then a dozen 3-megapixel photos of noise sent at once.
    Each is accepted, refused as never fitting (413) or not fitting now (429, Retry-After), or
    refused as too thin (400); the server's peak resident size above its idle size stays within
    the budget while the accepted ones run."""
    server = budget_server
    idle_kb = server.memory_kb()["VmRSS"]
    outcomes: dict[str, list[int]] = {}
    accepted: list[str] = []

    def submit(what: str, content: bytes, styles: list[bytes], params: dict) -> None:
        fields = [("content", "c.png", content)]
        fields += [("style", f"s{i}.png", s) for i, s in enumerate(styles)]
        fields.append(("params", None, json.dumps(params).encode()))
        status, headers, data = server.post_form("/v1/jobs", fields)
        outcomes.setdefault(what, []).append(status)
        if status == 202:
            accepted.append(json.loads(data)["id"])
        elif status == 429:
            assert b"memory_full" in data and headers["Retry-After"], data[:300]
        else:
            assert status in (400, 413), data[:300]

    small = {"iterations": 2, "max_size": 64}
    tens = [solid_png(3650, 2740, (9, i * 30, 99)) for i in range(8)]
    submit("8 x 10 MP paintings", solid_png(3650, 2740, (200, 30, 30)), tens, small)
    submit(
        "style_scale 4",
        solid_png(1600, 1200, (10, 120, 10)),
        [solid_png(1600, 1200, (1, 2, 3))],
        {**small, "max_size": 512, "style_scale": 4.0},
    )
    submit("thin photo", solid_png(20000, 40, (50, 50, 50)), [painting()], small)
    # the first runs until told to finish, so the others wait, holding their uploads
    submit("3 MP noise photo", noise_png(2000, 1500), [painting()], {**small, **LONG})
    for i in range(1, 12):
        submit("3 MP noise photo", noise_png(2000, 1500, seed=i), [painting()], small)
    first = server.wait_state(accepted[0], ("done", "failed", "cancelled"), min_step=1, timeout=60)
    status, _, data = server.request("POST", f"/v1/jobs/{accepted[0]}/finish")
    assert status == 202, (first, data)
    for job_id in accepted:
        assert server.wait_state(job_id, timeout=240)["state"] == "done"
    peak_mb = (server.memory_kb()["VmHWM"] - idle_kb) / 1024
    print(f"\noutcomes: {outcomes}\npeak above idle: {peak_mb:.0f} MB, budget {BUDGET_MB} MB")
    assert outcomes["8 x 10 MP paintings"] == [413]
    assert outcomes["style_scale 4"] == [413]
    assert outcomes["thin photo"] == [400]
    noise = outcomes["3 MP noise photo"]
    assert noise[0] == 202 and 429 in noise, noise
    assert peak_mb <= BUDGET_MB, f"peak {peak_mb:.0f} MB above idle, budget {BUDGET_MB} MB"
    assert server.healthy()
