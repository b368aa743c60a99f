"""A studio's job queue: jobs in Redis, run by `nst-server worker` processes (README "Studio").

Dramatiq (its Redis broker) carries one message per job, the job's id, from the front to
exactly one worker: it enqueues, dispatches, acknowledges, and notices dead workers (each
worker process heartbeats while it runs; a worker silent for ``worker_timeout_s`` is taken for
dead and the messages it had not acknowledged go back to the queue), so a long job on a live
worker is never delivered twice. Dramatiq knows nothing of progress, previews, cancel or
finish: those, the job's state, its uploads and its result are our own Redis keys below, JSON
or raw PNG bytes (never pickles), each with a time-to-live.

    nst:job:<id>           hash: owner, state, progress (JSON), params (JSON), version, ...
    nst:job:<id>:in        hash: the uploads as they came (content, style0.., mask, init)
    nst:job:<id>:seen      exists while a client asked about the job in the last
                           abandon_after_s (its expiry is the abandonment)
    nst:job:<id>:preview   the latest picture, PNG at the processing size
    nst:job:<id>:result    the result PNG
    nst:queued             sorted set: waiting jobs by submission (queue positions)
    nst:jobs               sorted set: every job by submission (GET /v1/jobs)
    nst:admission          a lock a submit holds while it checks the caps and queues its job
    nst:worker:<wid>       hash: a worker's device, status, job; expires unless refreshed

The front (:class:`RedisQueue`, the API's queue when ``--broker`` is given) holds no network
and no job in memory: restarting it loses nothing. The worker side is nst_server/worker.py.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from PIL import Image

from nst_server.budget import MemoryBudget, NotNow
from nst_server.images import PNG_LEVEL
from nst_server.jobmodel import (
    FINISHED,
    LONG_POLL_GAP_S,
    PREVIEW_SIZE,
    ArtistQueueFull,
    BrokerUnavailable,
    ErrorCode,
    JobInputs,
    JobNeeds,
    JobSnapshot,
    JobState,
    JobView,
    NotRunning,
    QueueFull,
    abandoned_message,
)
from nst_server.params import StyleParams
from nst_server.settings import ServerSettings

log = logging.getLogger(__name__)

PREFIX = "nst:"
QUEUED = PREFIX + "queued"
ALL_JOBS = PREFIX + "jobs"
#: Taken by a submit while it checks the queue's caps and queues its job.
ADMISSION_LOCK = PREFIX + "admission"
ADMISSION_LOCK_S = 30
#: Dramatiq's queue and actor (the worker declares the same).
QUEUE_NAME = "nst_style"
ACTOR_NAME = "run_style_job"
#: A job still waiting or running is kept this long at most (then Redis forgets it).
ACTIVE_TTL_S = 7 * 86400
#: How often a long poll looks at the job's version (it waits on Redis, not on a thread).
POLL_INTERVAL_S = 0.05
#: How often clients' signs of life (requests about a job) are written to Redis.
TOUCH_INTERVAL_S = 0.25

T = TypeVar("T")


def job_key(job_id: str, part: str = "") -> str:
    return f"{PREFIX}job:{job_id}" + (f":{part}" if part else "")


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}"


def connect(url: str) -> redis.Redis:
    """A client of the studio's Redis (bytes in and out: uploads and PNGs travel raw)."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=15
    )


def make_broker(url: str, settings: ServerSettings) -> Any:
    """Dramatiq's Redis broker for the studio: no retries or time limits of its own (a job's
    errors are values in its state; a restart after a worker's death is decided by us)."""
    from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker

    broker = RedisBroker(
        url=url,
        middleware=[],
        namespace="nst-dramatiq",
        heartbeat_timeout=int(settings.worker_timeout_s * 1000),
        # Dead workers' messages are requeued by "maintenance", which runs on a random share
        # of broker commands (0.1% by default: minutes here). Each worker fetches about once a
        # second, so doing it on every fetch costs one small sorted-set query each.
        maintenance_chance=MAINTENANCE_SCALE,
    )
    broker.declare_queue(QUEUE_NAME)
    return broker


def broker_message(job_id: str) -> Any:
    """The message for one job: its id only, JSON-encoded by Dramatiq."""
    import dramatiq

    return dramatiq.Message(
        queue_name=QUEUE_NAME, actor_name=ACTOR_NAME, args=(job_id,), kwargs={}, options={}
    )


def unavailable(url: str, exc: BaseException) -> BrokerUnavailable:
    where = redis.connection.parse_url(url) if url.startswith("redis") else {}
    host = f"{where.get('host', '?')}:{where.get('port', 6379)}"
    if isinstance(exc, redis.AuthenticationError):  # NOAUTH or WRONGPASS
        given = "a password" if where.get("password") else "no password"
        return BrokerUnavailable(
            f"the studio's Redis at {host} refused this server's password ({given} in the "
            "broker URL): give Redis's requirepass as redis://:PASSWORD@HOST:PORT/DB "
            "(README, Studio)"
        )
    return BrokerUnavailable(
        f"the studio's job queue (Redis at {host}) cannot be reached ({type(exc).__name__}); "
        "queued jobs are kept there and go on when it is back; try again shortly"
    )


def check_password(url: str) -> None:
    """Raise :class:`BrokerUnavailable` when Redis refuses the URL's password, which will not
    mend itself (a Redis that is down may come back: then fronts answer 503 and workers wait)."""
    client = connect(url)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise unavailable(url, exc) from None
    except redis.RedisError:
        pass
    finally:
        client.close()


def text(value: bytes | None, default: str = "") -> str:
    return value.decode() if value is not None else default


def decode_state(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """A job hash as Python values."""
    get = fields.get
    return {
        "id": text(get(b"id")),
        "owner": text(get(b"owner")),
        "state": JobState(text(get(b"state"), "queued")),
        "progress": json.loads(get(b"progress") or b"{}"),
        "error": text(get(b"error")) or None,
        "error_code": ErrorCode(text(get(b"error_code"))) if get(b"error_code") else None,
        "created": float(get(b"created") or 0),
        "size": json.loads(get(b"size") or b"[0, 0]"),
        "styles": int(get(b"styles") or 0),
        "bit_depth": int(get(b"bit_depth") or 8),
        "params": json.loads(get(b"params") or b"{}"),
        "version": int(get(b"version") or 0),
        "started": float(get(b"started")) if get(b"started") else None,
        "finished": float(get(b"finished")) if get(b"finished") else None,
        "finished_early": get(b"finished_early") == b"1",
        "preview_step": int(get(b"preview_step")) if get(b"preview_step") else None,
        "worker": text(get(b"worker")),
        "attempts": int(get(b"attempts") or 0),
    }


def view_of(state: dict[str, Any]) -> JobView:
    return JobView(
        state["id"],
        state["owner"],
        state["state"],
        state["progress"],
        state["error"],
        state["error_code"],
    )


#: End a job unless it has already ended: KEYS job hash, queued set, uploads; ARGV state,
#: error, code, now, ttl, id. Returns 1 if it was ended now.
END_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'done' or state == 'failed' or state == 'cancelled' then return 0 end
local progress = cjson.decode(redis.call('HGET', KEYS[1], 'progress') or '{}')
progress['phase'] = ARGV[1]
progress['eta_s'] = nil
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'error', ARGV[2], 'error_code', ARGV[3],
  'finished', ARGV[4], 'progress', cjson.encode(progress))
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[6])
redis.call('DEL', KEYS[3])
return 1
"""


def end_job(
    script: Any,
    job_id: str,
    state: JobState,
    error: str | None,
    code: ErrorCode | None,
    ttl_s: float,
) -> bool:
    """End a job that has not ended yet (``script``: END_SCRIPT registered); whether it did."""
    keys = [job_key(job_id), QUEUED, job_key(job_id, "in")]
    args = [state.value, error or "", code.value if code else "", time.time(), int(ttl_s) or 1]
    args.append(job_id)
    return bool(script(keys=keys, args=args))


class RedisQueue:
    """The front's :class:`~nst_server.jobmodel.JobQueue` on a studio's Redis.

    Every method talks to Redis and raises :class:`BrokerUnavailable` when it cannot."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        budget: MemoryBudget | None = None,
        artist_cap: int | None = None,
    ) -> None:
        assert settings.broker
        self.url = settings.broker
        self.settings = settings
        self.capacity = settings.queue_size
        self.artist_cap = artist_cap
        self.budget = budget or MemoryBudget(settings.memory_budget_bytes())
        self.redis = connect(self.url)
        self._broker: Any = None
        self._end = self.redis.register_script(END_SCRIPT)
        self._touched: set[str] = set()
        self._touch_lock = threading.Lock()
        self._stopping = threading.Event()
        self._toucher: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """No job runs here (workers are other processes); one thread passes clients' signs of
        life on to Redis. Redis may be down now: requests get 503 until it is up."""
        if self._toucher is None:
            self._toucher = threading.Thread(target=self._flush_touches, name="nst-touch")
            self._toucher.daemon = True
            self._toucher.start()
        self._check_persistence()

    def _check_persistence(self) -> None:
        """Warn when Redis keeps nothing on disk: its restart would lose every job."""
        try:
            aof = self.redis.config_get("appendonly").get(b"appendonly")
            save = self.redis.config_get("save").get(b"save")
        except redis.RedisError:  # down (we answer 503 until it is up) or CONFIG disabled
            return
        if aof == b"no" and not save:
            log.warning(
                "Redis at %s keeps nothing on disk (appendonly no, no save points): if it "
                "restarts, every queued and finished job is lost; turn on appendonly (README)",
                self.url.rsplit("@", 1)[-1],
            )

    def close(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._toucher is not None:
            self._toucher.join(timeout)
        self.redis.close()
        if self._broker is not None:
            self._broker.close()

    @contextmanager
    def _redis(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise unavailable(self.url, exc) from None

    def _call(self, fn: Callable[[], T]) -> T:
        with self._redis():
            return fn()

    @property
    def device(self) -> str:
        """Job defaults are a CPU's unless every live worker has a GPU."""
        workers = self._workers_or_none()
        if workers and all(w.get("device") == "gpu" for w in workers):
            return "gpu"
        return "cpu"

    @property
    def status(self) -> str:
        workers = self._workers_or_none()
        if workers is None:
            return "error"
        if any(w["status"] == "ok" for w in workers):
            return "ok"
        if workers and all(w["status"] == "error" for w in workers):
            return "error"
        return "loading"

    @property
    def status_error(self) -> str | None:
        try:
            workers = self.workers()
        except BrokerUnavailable as exc:
            return str(exc)
        if not workers:
            return "no worker is connected: start `nst-server worker --broker URL`"
        errors = [f"{w['id']}: {w['error']}" for w in workers if w["status"] == "error"]
        if errors and len(errors) == len(workers):
            return "; ".join(errors)
        return None

    # --- submitting -----------------------------------------------------------------------------

    def submit(
        self,
        inputs: JobInputs,
        params: StyleParams,
        *,
        needs: JobNeeds | None = None,
        owner: str = "",
        replacing: object | None = None,
    ) -> JobView:
        if not inputs.styles:
            raise ValueError("at least one style image is needed")
        content = inputs.content.info
        job_id = secrets.token_hex(16)
        if needs is not None:  # a worker has this server's budget: refuse what never fits
            try:
                self.budget.reserve(
                    job_id,
                    held=needs.held,
                    run=needs.run,
                    what=f"this job ({content.size[0]}x{content.size[1]} px, "
                    f"max_size {params.max_size})",
                    replacing=replacing,
                )
            except NotNow:
                pass  # the front keeps nothing of a job in memory: only "never" counts here
            finally:
                self.budget.release(job_id)
        with self._redis():
            now = time.time()
            uploads: dict[str, bytes] = {"content": inputs.content.data}
            for i, style in enumerate(inputs.styles):
                uploads[f"style{i}"] = style.data
            if inputs.mask is not None:
                uploads["mask"] = inputs.mask.data
            if inputs.init is not None:
                uploads["init"] = inputs.init.data
            fields = {
                "id": job_id,
                "owner": owner,
                "state": JobState.QUEUED.value,
                "progress": json.dumps({"phase": "queued"}),
                "created": repr(now),
                "size": json.dumps(list(content.size)),
                "styles": len(inputs.styles),
                "bit_depth": content.bit_depth,
                "params": json.dumps(params.to_dict()),
                "version": 0,
                "attempts": 0,
            }
            pipe = self.redis.pipeline()
            pipe.hset(job_key(job_id), mapping=fields)
            pipe.expire(job_key(job_id), ACTIVE_TTL_S)
            pipe.hset(job_key(job_id, "in"), mapping=uploads)
            pipe.expire(job_key(job_id, "in"), ACTIVE_TTL_S)
            self._touch(pipe, job_id)
            pipe.zadd(QUEUED, {job_id: now})
            pipe.zadd(ALL_JOBS, {job_id: now})
            with self._admission():  # the caps are checked and taken in one step
                self._check_caps(owner)
                pipe.execute()
            try:
                self.broker().enqueue(broker_message(job_id))
            except Exception as exc:  # the job must not wait for a message that never came
                log.exception("job %s: the broker refused its message", job_id)
                self._end_job(job_id, JobState.FAILED, "could not be queued", ErrorCode.INTERNAL)
                raise unavailable(self.url, exc) from exc
        log.info(
            "job %s queued for %s: %dx%d, %d style(s), %s",
            job_id,
            owner,
            *content.size,
            len(inputs.styles),
            params.to_dict(),
        )
        return JobView(job_id, owner, JobState.QUEUED, {"phase": "queued"}, None, None)

    @contextmanager
    def _admission(self) -> Iterator[None]:
        """Held while a submit checks the caps and queues its job: every front's submits take
        turns, so simultaneous ones cannot all see the same free place. Redis expires the lock
        if a front dies holding it."""
        lock = self.redis.lock(ADMISSION_LOCK, timeout=ADMISSION_LOCK_S, blocking_timeout=10)
        if not lock.acquire():
            raise BrokerUnavailable("the studio's job queue is busy; try again shortly")
        try:
            yield
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:  # held past its timeout: already expired
                log.warning("the queue's admission lock expired before it was released")

    def _check_caps(self, owner: str) -> None:
        waiting = self._waiting()
        if len(waiting) >= self.capacity:
            raise QueueFull(self.capacity)
        mine = sum(who == owner for _, who in waiting)
        if self.artist_cap is not None and mine >= self.artist_cap:
            raise ArtistQueueFull(self.artist_cap)

    def broker(self) -> Any:
        if self._broker is None:
            self._broker = make_broker(self.url, self.settings)
        return self._broker

    def _waiting(self) -> list[tuple[str, str]]:
        """(id, owner) of the waiting jobs, in order; abandoned ones are cancelled first."""
        ids = [i.decode() for i in self.redis.zrange(QUEUED, 0, -1)]
        if not ids:
            return []
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hget(job_key(job_id), "owner")
            pipe.exists(job_key(job_id, "seen"))
        answers = pipe.execute()
        out = []
        for job_id, owner, seen in zip(ids, answers[::2], answers[1::2], strict=True):
            if owner is None:  # forgotten (expired): not waiting any more
                self.redis.zrem(QUEUED, job_id)
            elif not seen and self.settings.abandon_after_s > 0:
                self._end_job(job_id, JobState.CANCELLED, self._abandoned(), ErrorCode.CANCELLED)
            else:
                out.append((job_id, owner.decode()))
        return out

    def _abandoned(self) -> str:
        return abandoned_message(self.settings.abandon_after_s)

    def _end_job(self, job_id: str, state: JobState, error: str, code: ErrorCode) -> bool:
        return end_job(self._end, job_id, state, error, code, self.settings.job_ttl_s)

    def _touch(self, pipe: Any, job_id: str, *, only_if_known: bool = False) -> None:
        ttl = self.settings.abandon_after_s
        px = int(ttl * 1000) if ttl > 0 else None
        if only_if_known:  # never make a key for an id a client made up
            pipe.set(job_key(job_id, "seen"), b"1", px=px, xx=True)
        else:
            pipe.set(job_key(job_id, "seen"), b"1", px=px)

    # --- reading --------------------------------------------------------------------------------

    def _state(self, job_id: str, *, touch: bool) -> JobSnapshot | None:
        if not job_id.isalnum() or len(job_id) > 64:
            return None
        with self._redis():
            fields = self.redis.hgetall(job_key(job_id))
            if not fields:
                return None
            state = decode_state(fields)
            if touch and state["state"] not in FINISHED:
                pipe = self.redis.pipeline()
                self._touch(pipe, job_id)
                pipe.execute()
            if state["state"] == JobState.RUNNING and not self.redis.exists(
                worker_key(state["worker"])
            ):
                # Its worker died: Dramatiq hands the job to another (README); until then
                # clients see it waiting again rather than running with no one to run it.
                state["state"] = JobState.QUEUED
                state["progress"] = {
                    "phase": "queued",
                    "note": "its worker stopped; the job restarts from the start on the next "
                    "free worker",
                }
            return state

    def get(self, job_id: str, *, touch: bool = True) -> JobView | None:
        state = self._state(job_id, touch=touch)
        return view_of(state) if state is not None else None

    def touch(self, job_id: str) -> None:
        """A sign of life from a client (the HTTP front's I/O thread calls this as a request's
        headers arrive: it must not wait for Redis); passed on within TOUCH_INTERVAL_S."""
        with self._touch_lock:
            self._touched.add(job_id)

    def _flush_touches(self) -> None:
        while not self._stopping.wait(TOUCH_INTERVAL_S):
            with self._touch_lock:
                touched, self._touched = self._touched, set()
            if not touched:
                continue
            try:
                pipe = self.redis.pipeline()
                for job_id in touched:
                    self._touch(pipe, job_id, only_if_known=True)
                pipe.execute()
            except redis.RedisError as exc:
                log.warning("clients' signs of life not passed on: %s", exc)

    def _snapshot(self, state: dict[str, Any]) -> JobSnapshot:
        position = None
        if state["state"] == JobState.QUEUED:
            with self._redis():
                rank = self.redis.zrank(QUEUED, state["id"])
            position = rank if rank is not None else 0
        elapsed = None
        if state["started"] is not None:
            elapsed = (state["finished"] or time.time()) - state["started"]
        return JobSnapshot(
            view_of(state),
            created=state["created"],
            size=tuple(state["size"]),
            styles=state["styles"],
            bit_depth=state["bit_depth"],
            params=state["params"],
            preview_step=state["preview_step"],
            version=state["version"],
            position=position,
            elapsed_s=elapsed,
            finished_early=state["finished_early"],
        )

    def snapshot(self, job_id: str, *, touch: bool = True) -> JobSnapshot | None:
        state = self._state(job_id, touch=touch)
        return self._snapshot(state) if state is not None else None

    def wait_snapshot(self, job_id: str, since: int, timeout: float) -> JobSnapshot | None:
        """A long poll, as the in-process queue's: a change of state at once, progress at
        most every LONG_POLL_GAP_S; the version is read from Redis every POLL_INTERVAL_S."""
        began = time.monotonic()
        first = self._state(job_id, touch=True)
        if first is None:
            return None
        state = first
        while True:
            now = time.monotonic()
            changed = state["version"] != since
            ended = state["state"] != first["state"] or state["state"] in FINISHED
            if (
                now - began >= timeout
                or (changed and ended)
                or (changed and now - began >= LONG_POLL_GAP_S)
            ):
                return self._snapshot(state)
            time.sleep(POLL_INTERVAL_S)
            latest = self._state(job_id, touch=True)
            if latest is None:
                return None
            state = latest

    def wait_done(self, job_id: str, timeout: float) -> JobView | None:
        deadline = time.monotonic() + timeout
        while True:
            view = self.get(job_id)
            if view is None or view.state in FINISHED or time.monotonic() >= deadline:
                return view
            time.sleep(POLL_INTERVAL_S)

    def result_png(self, job_id: str) -> bytes | None:
        return self._call(lambda: self.redis.get(job_key(job_id, "result")))

    def preview_png(self, job_id: str, longest: int = PREVIEW_SIZE) -> bytes | None:
        data = self._call(lambda: self.redis.get(job_key(job_id, "preview")))
        if data is None:
            return None
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) <= longest:
                return data  # already at most that size: the processing size
            image.thumbnail((longest, longest), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            image.save(out, "PNG", compress_level=PNG_LEVEL)
            return out.getvalue()

    def list_jobs(self, owner: str | None) -> list[JobSnapshot]:
        with self._redis():
            ids = [i.decode() for i in self.redis.zrange(ALL_JOBS, 0, -1)]
        out = []
        for job_id in ids:
            state = self._state(job_id, touch=False)
            if state is None:
                self._call(lambda job_id=job_id: self.redis.zrem(ALL_JOBS, job_id))
                continue
            if owner is None or state["owner"] == owner:
                out.append(self._snapshot(state))
        return out

    # --- control --------------------------------------------------------------------------------

    def cancel(self, job_id: str, reason: str = "cancelled by the client") -> JobSnapshot | None:
        """A waiting job ends now; a running one is marked and its worker stops within a step."""
        state = self._state(job_id, touch=True)
        if state is None:
            return None
        with self._redis():
            if state["state"] == JobState.QUEUED:
                if self._end_job(job_id, JobState.CANCELLED, reason, ErrorCode.CANCELLED):
                    log.info("job %s %s (while queued)", job_id, reason)
                    # the worker that takes its message sees it ended and skips it
            elif state["state"] == JobState.RUNNING and self.redis.hsetnx(
                job_key(job_id), "cancel", reason
            ):
                log.info("job %s %s (while running)", job_id, reason)
        return self.snapshot(job_id)

    def finish(self, job_id: str) -> JobSnapshot | None:
        state = self._state(job_id, touch=True)
        if state is None:
            return None
        if state["state"] != JobState.RUNNING:
            raise NotRunning(state["state"])
        with self._redis():
            if self.redis.hsetnx(job_key(job_id), "finish", b"1"):
                log.info("job %s: finish asked", job_id)
        return self.snapshot(job_id)

    # --- the studio -----------------------------------------------------------------------------

    def _workers_or_none(self) -> list[dict[str, Any]] | None:
        try:
            return self.workers()
        except BrokerUnavailable:
            return None

    def workers(self) -> list[dict[str, Any]]:
        """Each live worker: id, device, status (ok, loading, error), busy with which job,
        seconds since its last heartbeat."""
        with self._redis():
            keys = sorted(self.redis.scan_iter(match=worker_key("*"), count=1000))
            pipe = self.redis.pipeline()
            for key in keys:
                pipe.hgetall(key)
            rows = pipe.execute()
        now = time.time()
        out = []
        for row in rows:
            if not row:
                continue
            fields = {k.decode(): v.decode() for k, v in row.items()}
            out.append(
                {
                    "id": fields.get("id", "?"),
                    "device": fields.get("device", "?"),
                    "status": fields.get("status", "loading"),
                    "error": fields.get("error") or None,
                    "busy": bool(fields.get("job")),
                    "job": fields.get("job") or None,
                    "heartbeat_s": round(now - float(fields.get("heartbeat", now)), 1),
                    "jobs_done": int(fields.get("jobs_done", 0)),
                }
            )
        return out

    def stats(self) -> dict[str, Any]:
        with self._redis():
            queued = self.redis.zcard(QUEUED)
        workers = self.workers()
        return {
            "queued": queued,
            "running": sum(w["busy"] for w in workers),
            "capacity": self.capacity,
            "workers": len(workers),
        }

    def health(self) -> dict[str, Any]:
        workers = self.workers()
        return {
            "broker": "redis",
            "device": "studio",
            "loaded": any(w["status"] == "ok" for w in workers),
            "workers": workers,
        }
