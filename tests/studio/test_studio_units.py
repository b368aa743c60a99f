"""The studio's parts one at a time: the tokens file, the per-artist cap, and the claim a worker
makes on a job (a real redis-server; no worker process, no network)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from nst_server.auth import ArtistTokens, Principal, TokenError, parse_tokens_file
from nst_server.cli import main
from nst_server.jobmodel import ArtistQueueFull, BrokerUnavailable, JobState, QueueFull
from nst_server.jobs import LocalQueue
from nst_server.params import StyleParams
from nst_server.settings import ServerSettings
from nst_server.studio import END_SCRIPT, QUEUED, RedisQueue, job_key, worker_key
from nst_server.worker import CLAIM_SCRIPT
from tests.api.helpers import as_json, job_inputs
from tests.fake_engine import FakeEngine
from tests.studio.cluster import RedisServer

A = "a" * 40
B = "b" * 40
C = "c" * 40
PICTURE = np.full((32, 40, 3), 0.5, np.float32)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    client = redis_server.client()
    client.flushdb()
    return client


def test_tokens_file_names_artists_and_admins(tmp_path: Path) -> None:
    text = f"# the studio\nalice {A}\nbob {B}  # nights\n\nboss {C} admin\n"
    assert parse_tokens_file(text, "tokens") == {
        A: Principal("alice"),
        B: Principal("bob"),
        C: Principal("boss", admin=True),
    }
    path = tmp_path / "tokens"
    path.write_text(text)
    path.chmod(0o600)
    artists = ArtistTokens(path)
    assert artists.identify(f"Bearer {B}") == Principal("bob")
    assert artists.identify(f"Bearer {C}").admin
    assert artists.identify("Bearer " + "d" * 40) is None and artists.identify(None) is None
    path.write_text(f"carol {A}\n")  # edited: the new list at the next request
    assert artists.identify(f"Bearer {A}") == Principal("carol")
    assert artists.identify(f"Bearer {B}") is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f"alice {A} boss\n", "line 1: expected"),
        ("alice short\n", "at least 32"),
        (f"alice {A}\nalice {B}\n", "line 2: the name or the token is already used"),
        (f"alice {A}\nbob {A}\n", "line 2"),
        ("# nobody\n", "names no artist"),
    ],
)
def test_a_bad_tokens_file_says_which_line(text: str, words: str) -> None:
    with pytest.raises(TokenError, match=words):
        parse_tokens_file(text, "tokens")


def test_the_in_process_queue_caps_each_artist(tmp_path: Path) -> None:
    queue = LocalQueue(FakeEngine(step_s=0.05), capacity=8, artist_cap=2, tick_s=0.02)
    try:  # not started: every job stays queued
        for _ in range(2):
            queue.submit(job_inputs(PICTURE, [PICTURE]), StyleParams(iterations=1), owner="al")
        with pytest.raises(ArtistQueueFull, match="2 job"):
            queue.submit(job_inputs(PICTURE, [PICTURE]), StyleParams(iterations=1), owner="al")
        queue.submit(job_inputs(PICTURE, [PICTURE]), StyleParams(iterations=1), owner="bo")
    finally:
        queue.close()


def redis_queue(url: str, **settings) -> RedisQueue:
    values = {"broker": url, "queue_size": 3, "abandon_after_s": 30.0, **settings}
    return RedisQueue(ServerSettings(**values), artist_cap=2)


def test_the_studio_queue_caps_each_artist_and_the_whole_queue(redis_server, redis_client):
    queue = redis_queue(redis_server.url)
    submit = lambda owner: queue.submit(  # noqa: E731
        job_inputs(PICTURE, [PICTURE]), StyleParams(iterations=1, max_size=64), owner=owner
    )
    first = submit("alice")
    submit("alice")
    with pytest.raises(ArtistQueueFull):
        submit("alice")
    submit("bob")
    with pytest.raises(QueueFull):
        submit("bob")
    assert as_json(queue.snapshot(first.id))["progress"]["position"] == 0
    assert [j.view.id for j in queue.list_jobs("alice")][0] == first.id
    assert {j.view.owner for j in queue.list_jobs(None)} == {"alice", "bob"}
    # What travels: JSON and the uploads' own bytes, never a pickle.
    fields = redis_client.hgetall(job_key(first.id))
    assert fields[b"params"].startswith(b"{") and fields[b"state"] == b"queued"
    assert redis_client.hget(job_key(first.id, "in"), "content").startswith(b"\x89PNG")
    queue.close()


def test_simultaneous_submits_never_exceed_the_caps(redis_server, redis_client) -> None:
    """Two fronts on one Redis, eight submits at once: the caps are checked and taken in one
    step, so exactly the capped number gets in (each front's threads and the other front alike)."""
    fronts = [redis_queue(redis_server.url, queue_size=8) for _ in range(2)]
    start = threading.Barrier(8)

    def submit(i: int) -> str:
        start.wait()
        try:
            fronts[i % 2].submit(
                job_inputs(PICTURE, [PICTURE]), StyleParams(iterations=1), owner="alice"
            )
        except ArtistQueueFull:
            return "refused"
        return "queued"

    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(submit, range(8)))
        assert answers.count("queued") == 2 and answers.count("refused") == 6, answers
        assert redis_client.zcard(QUEUED) == 2
    finally:
        for front in fronts:
            front.close()


def test_an_abandoned_waiting_job_is_cancelled_and_frees_its_place(redis_server, redis_client):
    queue = redis_queue(redis_server.url, abandon_after_s=0.3)
    job = queue.submit(job_inputs(PICTURE, [PICTURE]), StyleParams(iterations=1), owner="al")
    time.sleep(0.5)
    assert queue.stats()["queued"] == 1  # counted until the next look at the queue
    queue.submit(job_inputs(PICTURE, [PICTURE]), StyleParams(iterations=1), owner="al")
    snapshot = as_json(queue.snapshot(job.id))
    assert snapshot["state"] == "cancelled" and "abandoned" in snapshot["error"]
    queue.close()


def test_a_redis_with_a_password_works_and_a_wrong_one_says_so(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """README's studio Redis has a password: the front's keys and Dramatiq's messages both go
    through the URL's password; a wrong one is a clear error, not a hang or a traceback."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # the front's token file
    server = RedisServer(tmp_path / "redis", password="s3cret-studio-password").start()
    try:
        queue = redis_queue(server.url)
        job = queue.submit(job_inputs(PICTURE, [PICTURE]), StyleParams(iterations=1), owner="al")
        assert as_json(queue.snapshot(job.id))["state"] == "queued"
        messages = [k for k in server.client().keys("nst-dramatiq*") if b"msgs" in k]
        assert messages, "Dramatiq's message did not reach the password-protected Redis"
        queue.close()
        for url, given in [
            (server.url.replace("s3cret", "wrong"), "a password"),
            (server.url.replace(":s3cret-studio-password@", ""), "no password"),
        ]:
            refused = redis_queue(url)
            with pytest.raises(BrokerUnavailable, match=f"refused .*{given} in the broker URL"):
                refused.snapshot(job.id)
            assert refused.status == "error" and "requirepass" in str(refused.status_error)
            assert "wrong" not in str(refused.status_error)  # no password in health
            refused.close()
        # A worker or a front started with a refused password stops at once and says why
        # (a worker would otherwise build its network and retry forever).
        for command in ("worker", "serve"):
            argv = [command, "--broker", server.url.replace("s3cret", "wrong")]
            argv += ["--log-file", str(tmp_path / f"{command}.log")]
            assert main(argv) == 2, command
            assert "refused this server's password" in capsys.readouterr().err
    finally:
        server.stop()


def test_redis_unreachable_is_broker_unavailable() -> None:
    queue = redis_queue("redis://127.0.0.1:1/0")
    with pytest.raises(BrokerUnavailable, match="Redis at 127.0.0.1:1"):
        as_json(queue.snapshot("ab" * 16))
    assert queue.status == "error"


def claim(client, job_id: str, worker_id: str) -> list[str]:
    script = client.register_script(CLAIM_SCRIPT)
    keys = [job_key(job_id), QUEUED, job_key(job_id, "preview")]
    args = [worker_id, time.time(), worker_key(""), job_id, job_key("")]
    answer = script(keys=keys, args=args)
    return [part.decode() for part in answer]


def test_a_job_restarts_once_after_its_worker_died_then_fails(redis_client) -> None:
    job, behind = "f" * 32, "e" * 32
    for queued in (job, behind):
        redis_client.hset(job_key(queued), mapping={"state": "queued", "version": 0})
        redis_client.zadd(QUEUED, {queued: time.time()})
    assert claim(redis_client, job, "w1") == ["run", "1"]
    assert redis_client.hget(job_key(job), "state") == b"running"
    assert redis_client.zrange(QUEUED, 0, -1) == [behind.encode()]
    assert redis_client.hget(job_key(behind), "version") == b"1"  # its position changed
    # w1 is alive: another delivery of the message leaves the job to it.
    redis_client.set(worker_key("w1"), b"1")
    assert claim(redis_client, job, "w2") == ["busy", "w1"]
    # w1 died (its key expired): w2 restarts it from the start, attempt 2.
    redis_client.delete(worker_key("w1"))
    assert claim(redis_client, job, "w2") == ["run", "2"]
    # w2 died too: no third run.
    assert claim(redis_client, job, "w3") == ["died", "w2"]
    end = redis_client.register_script(END_SCRIPT)
    keys = [job_key(job), QUEUED, job_key(job, "in")]
    assert end(keys=keys, args=["failed", "stopped twice", "internal", time.time(), 5, job])
    assert not end(keys=keys, args=["done", "", "", time.time(), 5, job])  # ends once
    assert claim(redis_client, job, "w3") == ["ended", JobState.FAILED.value]
    assert 0 < redis_client.ttl(job_key(job)) <= 5  # finished jobs expire
