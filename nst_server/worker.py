"""`nst-server worker --broker URL`: one studio worker process (README "Studio").

It builds VGG19 once, keeps it warm and takes one job at a time from the studio's Redis through
a Dramatiq worker with one thread, started inside this process: nothing forks (TensorFlow is not
fork-safe, and a forked child would lose the warm network). A job's run is the same as in the
in-process queue (nst_server/runner.py); what differs is where its inputs, progress, previews,
cancel and finish live: the Redis keys of nst_server/studio.py.

A worker that cannot load its weights or its device takes no job: it stays up, says why in its
heartbeat (``/v1/health`` lists it with ``status: error``) and waits to be stopped. Every job it
starts and ends is a line in its log with the job's id. Asked to stop, it lets its job run for
``stop_grace_s``, then puts it back at the head of the queue for another worker.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from typing import Any

import numpy as np
import redis

from nst_server.engine.planning import plan_job
from nst_server.images import ImageError, inspect_image, thumbnail_png
from nst_server.jobmodel import (
    ErrorCode,
    JobInputs,
    JobState,
    Upload,
    abandoned_message,
    job_needs,
)
from nst_server.params import StyleParams
from nst_server.runner import EngineHost, Outcome, run_job
from nst_server.settings import ServerSettings
from nst_server.studio import (
    ACTOR_NAME,
    END_SCRIPT,
    QUEUE_NAME,
    QUEUED,
    broker_message,
    connect,
    decode_state,
    end_job,
    job_key,
    make_broker,
    worker_key,
)

log = logging.getLogger(__name__)

#: Take a job atomically: KEYS job hash, queued set, preview; ARGV worker id, now, worker key
#: prefix, job id, job key prefix. A job running on a live worker is left to it ("busy"); one
#: whose worker died restarts once ("run" with attempt 2), then fails ("died"). The jobs behind
#: it in the queue get a new version (their position changed: long polls wake).
CLAIM_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'gone', ''} end
if state == 'done' or state == 'failed' or state == 'cancelled' then return {'ended', state} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if state == 'running' then
  local previous = redis.call('HGET', KEYS[1], 'worker') or ''
  if previous ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. previous) == 1 then
    return {'busy', previous}
  end
  if attempts >= 2 then return {'died', previous} end
end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started', ARGV[2],
  'attempts', attempts + 1, 'progress', cjson.encode({phase = 'preparing'}))
redis.call('HDEL', KEYS[1], 'finish', 'preview_step', 'finished_early')
redis.call('HINCRBY', KEYS[1], 'version', 1)
if redis.call('ZREM', KEYS[2], ARGV[4]) == 1 then
  -- the jobs behind it moved up: their long polls wake
  for _, behind in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    redis.call('HINCRBY', ARGV[5] .. behind, 'version', 1)
  end
end
redis.call('DEL', KEYS[3])
return {'run', tostring(attempts + 1)}
"""


#: Put a job this worker is stopping back at the head of the queue: KEYS job hash, queued set,
#: preview; ARGV worker id, progress JSON, job id, job key prefix. Only while it is still
#: running here; the attempt does not count (the job was not lost to a dead worker).
REQUEUE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '1')
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', math.max(0, attempts - 1),
  'progress', ARGV[2])
redis.call('HDEL', KEYS[1], 'worker', 'started', 'preview_step')
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], 'created'), ARGV[3])
for _, behind in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if behind ~= ARGV[3] then redis.call('HINCRBY', ARGV[4] .. behind, 'version', 1) end
end
redis.call('DEL', KEYS[3])
return 1
"""


#: Longest an idle worker waits between looks at the queue, in milliseconds.
IDLE_FETCH_MS = 100

#: How long a worker keeps trying to record a job's end while Redis is unreachable.
RECORD_PATIENCE_S = 600.0


class WorkerProcess:
    """The worker: engine, heartbeat, Dramatiq consumer, one job at a time."""

    def __init__(
        self, settings: ServerSettings, engine: Any, *, device: str, problem: str | None = None
    ) -> None:
        """``engine`` None: it could not be built, ``problem`` says why (no job is taken)."""
        assert settings.broker
        self.settings = settings
        self.host = EngineHost(engine, log_path=settings.log_file)
        self.device_asked = device
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.redis = connect(settings.broker)
        self._claim = self.redis.register_script(CLAIM_SCRIPT)
        self._end = self.redis.register_script(END_SCRIPT)
        self._requeue = self.redis.register_script(REQUEUE_SCRIPT)
        self.job: str | None = None
        self.jobs_done = 0
        self.problem = problem
        self._stop = threading.Event()
        #: Set when stopping and the job outlived the grace: it goes back to the queue.
        self.handing_over = threading.Event()
        self._dramatiq: Any = None

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        """Load, then take jobs until SIGTERM or SIGINT."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        beat = threading.Thread(target=self._heartbeat, name="nst-heartbeat", daemon=True)
        beat.start()
        if self.problem is None:
            self.problem = self._device_problem() or self.host.ensure_loaded()
        if self.problem is not None:
            log.error("worker %s takes no jobs: %s", self.id, self.problem)
        else:
            self._start_consuming()
            log.info("worker %s ready on %s: taking jobs", self.id, self.host.engine.device)
        self._beat_once()
        while not self._stop.wait(0.5):
            pass
        log.info("worker %s stopping", self.id)
        if self._dramatiq is not None:
            self._hand_over_after(self.settings.stop_grace_s)
            self._dramatiq.stop(timeout=30_000)
        self._beat_once(gone=True)

    def _hand_over_after(self, grace_s: float) -> None:
        """Let the running job (if any) end within ``grace_s``; after that it stops at its next
        step and goes back to the queue for another worker, at once (not after the timeout
        that tells a dead worker)."""
        deadline = time.monotonic() + grace_s
        while self.job is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.job is not None:
            log.info("job %s: handing it over, this worker is stopping", self.job)
            self.handing_over.set()

    @property
    def device(self) -> str:
        engine = self.host.engine
        return engine.device if engine is not None and self.problem is None else self.device_asked

    def _device_problem(self) -> str | None:
        if self.device_asked.startswith("gpu") and self.host.engine.device != "gpu":
            return (
                f"--device {self.device_asked}: TensorFlow sees no GPU here "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}); check "
                "the driver and CUDA libraries with nvidia-smi, or run this worker with "
                "--device cpu"
            )
        return None

    def _start_consuming(self) -> None:
        import dramatiq

        broker = make_broker(self.settings.broker or "", self.settings)
        dramatiq.actor(self.process, broker=broker, actor_name=ACTOR_NAME, queue_name=QUEUE_NAME)
        # An idle consumer looks for work at least every IDLE_FETCH_MS (Dramatiq's default
        # backs off to a second, which a job would wait for half of on average).
        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=IDLE_FETCH_MS)
        # One message at a time: a busy worker must not hold the next job while another idles.
        worker.queue_prefetch = 1
        worker.start()
        self._dramatiq = worker

    def _heartbeat(self) -> None:
        interval = max(0.5, min(2.0, self.settings.worker_timeout_s / 4))
        while not self._stop.wait(interval):
            self._beat_once()

    def _beat_once(self, *, gone: bool = False) -> None:
        key = worker_key(self.id)
        try:
            if gone:
                self.redis.delete(key)
                return
            status = "error" if self.problem else self.host.status
            fields = {
                "id": self.id,
                "device": self.device,
                "status": status,
                "error": self.problem or self.host.status_error or "",
                "job": self.job or "",
                "heartbeat": repr(time.time()),
                "pid": os.getpid(),
                "jobs_done": self.jobs_done,
            }
            pipe = self.redis.pipeline()
            pipe.hset(key, mapping=fields)
            pipe.expire(key, max(1, int(self.settings.worker_timeout_s)))
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("worker %s: heartbeat failed: %s", self.id, exc)

    # --- one job --------------------------------------------------------------------------------

    def process(self, job_id: str) -> None:
        """Dramatiq's actor: run the job ``job_id`` names, unless it ended or runs elsewhere."""
        try:
            self._process(job_id)
        except Exception:  # noqa: BLE001 - the worker outlives any job (Redis down, our bug)
            log.exception("job %s: the worker could not run or record it", job_id)
        finally:
            self.job = None
            self._beat_once()

    def _process(self, job_id: str) -> None:
        action, detail = self._claim_job(job_id)
        # "busy": its worker's heartbeat key has not expired yet. Either Dramatiq noticed that
        # worker's death first (its key goes within worker_timeout_s) or the message came
        # twice and the job runs elsewhere: wait that long before leaving it to that worker.
        deadline = time.monotonic() + 2 * self.settings.worker_timeout_s
        while action == "busy" and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.5)
            action, detail = self._claim_job(job_id)
        if action in ("gone", "ended", "busy"):
            log.info("job %s skipped: %s %s", job_id, action, detail)
            return
        if action == "died":
            self._finish(
                job_id,
                Outcome(
                    JobState.FAILED,
                    "the workers running this job stopped twice (killed, or out of memory?); it "
                    "was not started a third time: see the workers' logs",
                    ErrorCode.INTERNAL,
                ),
            )
            return
        self.job = job_id
        self._beat_once()
        state = decode_state(self.redis.hgetall(job_key(job_id)))
        log.info("job %s started (attempt %s) for %s", job_id, detail, state["owner"])
        started = time.monotonic()
        outcome = self._run(job_id, state)
        if outcome.state == JobState.CANCELLED and self._hand_back(job_id):
            log.info(
                "job %s handed back to the queue after %.1f s", job_id, time.monotonic() - started
            )
            return
        self._finish(job_id, outcome)
        log.info(
            "job %s ended %s in %.1f s%s",
            job_id,
            outcome.state.value,
            time.monotonic() - started,
            f": {outcome.error}" if outcome.error else "",
        )

    def _hand_back(self, job_id: str) -> bool:
        """When the job stopped because this worker is stopping (not cancelled by a client),
        queue it again with a new message for another worker; True if it was."""
        if not self.handing_over.is_set() or self.redis.hexists(job_key(job_id), "cancel"):
            return False
        progress = json.dumps({"phase": "queued", "note": "its worker stopped; it starts again"})
        keys = [job_key(job_id), QUEUED, job_key(job_id, "preview")]
        if not self._requeue(keys=keys, args=[self.id, progress, job_id, job_key("")]):
            return False
        self._dramatiq.broker.enqueue(broker_message(job_id))
        return True

    def _claim_job(self, job_id: str) -> tuple[str, str]:
        keys = [job_key(job_id), QUEUED, job_key(job_id, "preview")]
        args = [self.id, repr(time.time()), worker_key(""), job_id, job_key("")]
        action, detail = (part.decode() for part in self._claim(keys=keys, args=args))
        return action, detail

    def _run(self, job_id: str, state: dict[str, Any]) -> Outcome:
        try:
            inputs = self._inputs(job_id)
            params = StyleParams.from_mapping(state["params"], self.host.engine.device)
            content = inputs.content.info
            plan = plan_job(
                (content.height, content.width),
                [(s.info.height, s.info.width) for s in inputs.styles],
                params,
                has_mask=inputs.mask is not None,
            )
            needs = job_needs(inputs, params, plan.peak_bytes)
        except ImageError as exc:
            return Outcome(JobState.FAILED, str(exc), ErrorCode.BAD_IMAGE)
        except ValueError as exc:  # ParamsError, EngineError's plan refusals
            return Outcome(JobState.FAILED, str(exc), ErrorCode.BAD_INPUT)
        budget = self.settings.memory_budget_bytes()
        if needs.run > budget:
            return Outcome(
                JobState.FAILED,
                f"this job needs about {needs.run // 2**20} MB to run, more than this worker's "
                f"memory budget of {budget // 2**20} MB (NST_MEMORY_BUDGET); choose a smaller "
                "max_size",
                ErrorCode.OUT_OF_MEMORY,
            )
        control = _RedisControl(self, job_id)
        return run_job(
            self.host,
            inputs,
            params,
            control,
            bit_depth=state["bit_depth"],
            max_pixels=self.settings.max_pixels,
        )

    def _inputs(self, job_id: str) -> JobInputs:
        """The job's uploads, checked again with this worker's limits (never trusted blindly)."""
        stored = {k.decode(): v for k, v in self.redis.hgetall(job_key(job_id, "in")).items()}
        if "content" not in stored:
            raise ImageError("the job's uploads are no longer in the queue (expired)")

        def upload(name: str, what: str) -> Upload:
            data = stored[name]
            return Upload(
                data, inspect_image(data, what=what, max_pixels=self.settings.max_pixels), what
            )

        styles = sorted((k for k in stored if k.startswith("style")), key=lambda k: int(k[5:]))
        return JobInputs(
            upload("content", "content"),
            tuple(upload(k, "style") for k in styles),
            upload("mask", "mask") if "mask" in stored else None,
            upload("init", "init") if "init" in stored else None,
        )

    def _finish(self, job_id: str, outcome: Outcome) -> None:
        """Record the outcome; while Redis is down, keep trying for a while (the job's
        clients are waiting for it), then give up with a log line."""
        deadline = time.monotonic() + RECORD_PATIENCE_S
        while True:
            try:
                self._record(job_id, outcome)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("job %s: cannot record its end yet (%s); retrying", job_id, exc)
                time.sleep(1.0)

    def _record(self, job_id: str, outcome: Outcome) -> None:
        ttl = self.settings.job_ttl_s
        if outcome.state == JobState.DONE:
            assert outcome.png is not None
            pipe = self.redis.pipeline()
            pipe.set(job_key(job_id, "result"), outcome.png, px=int(ttl * 1000))
            if outcome.finished_early:
                pipe.hset(job_key(job_id), "finished_early", b"1")
            pipe.delete(job_key(job_id, "preview"))
            pipe.execute()
            end_job(self._end, job_id, JobState.DONE, None, None, ttl)
            self.jobs_done += 1
            return
        self.redis.delete(job_key(job_id, "preview"))
        error = outcome.error
        if outcome.state == JobState.CANCELLED:
            reason = self.redis.hget(job_key(job_id), "cancel")
            error = reason.decode() if reason else "cancelled"
        end_job(
            self._end,
            job_id,
            outcome.state,
            error or "",
            outcome.code or ErrorCode.INTERNAL,
            ttl,
        )


class _RedisControl:
    """A running job's link to its clients through Redis (see runner.JobControl): one round
    trip per step reads cancel, finish and whether a client still asks about the job."""

    def __init__(self, worker: WorkerProcess, job_id: str) -> None:
        self.worker = worker
        self.redis = worker.redis
        self.key = job_key(job_id)
        self.job_id = job_id
        self.progress: dict[str, Any] = {"phase": "preparing"}
        self._finish = False
        self._previews = 0
        self._offline = False

    def cancelled(self) -> bool:
        pipe = self.redis.pipeline()
        pipe.hmget(self.key, "cancel", "finish")
        pipe.exists(job_key(self.job_id, "seen"))
        try:
            (cancel, finish), seen = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError):
            return False  # Redis is away: the job goes on, its clients cannot ask anything
        self._finish = finish is not None
        if (
            self.worker.handing_over.is_set()
            and cancel is None
            and not self._finish  # a Keep asked still lands
            and self.progress.get("phase") != "encoding"  # the result is there: record it
        ):
            return True  # stops here; the worker queues it again
        abandon = self.worker.settings.abandon_after_s
        if cancel is None and not seen and abandon > 0:
            self.redis.hsetnx(self.key, "cancel", abandoned_message(abandon))
            log.info("job %s abandoned", self.job_id)
            return True
        return cancel is not None

    def finish_asked(self) -> bool:
        return self._finish

    def report(self, update: dict[str, Any], preview: np.ndarray | None, step: int | None) -> None:
        self.progress.update(update)
        pipe = self.redis.pipeline()
        if preview is not None:
            self._previews += 1
            png = thumbnail_png(preview, longest=max(preview.shape[:2]))
            pipe.set(job_key(self.job_id, "preview"), png, ex=int(self.worker.settings.job_ttl_s))
            pipe.hset(self.key, "preview_step", step if step is not None else self._previews)
        pipe.hset(self.key, "progress", json.dumps(self.progress))
        pipe.hincrby(self.key, "version", 1)
        try:
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not self._offline:
                log.warning("job %s: progress not recorded, Redis is away: %s", self.job_id, exc)
            self._offline = True
            return
        self._offline = False

    def decoded(self) -> None:
        """The uploads stay in Redis until the job ends: a restart after this worker's death
        needs them."""


def run_worker(
    settings: ServerSettings, *, device: str = "auto", tf_threads: int = 0, weights: Any = None
) -> None:
    """Configure TensorFlow for ``device`` and ``tf_threads``, build the engine, work."""
    if device.startswith("gpu:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    elif device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # leave the GPUs to the other workers
    if tf_threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(tf_threads)
    from nst_server.engine import StyleEngine
    from nst_server.engine.device import import_tensorflow
    from nst_server.weights import resolve_weights

    tf = import_tensorflow()
    if tf_threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    try:
        engine = StyleEngine(weights if weights is not None else resolve_weights(settings.weights))
    except Exception as exc:  # noqa: BLE001 - said in health; the worker waits to be stopped
        log.exception("the engine could not be built")
        WorkerProcess(settings, None, device=device, problem=str(exc)).run()
        return
    WorkerProcess(settings, engine, device=device).run()
