"""The HTTP API: a Flask app factory and the ``/v1`` blueprint. Described in ``openapi.yaml``.

Every error, including Flask's own 404/405/413 and unhandled 500s, is JSON
``{"error": {"code": ..., "message": ...}}``; tracebacks go to the server log, never to a client.

``create_app(settings, engine=..., authenticator=...)``: the settings (nst_server/settings.py)
decide the limits; the authenticator who may use it (nst_server/auth.py). Before any route,
``RequestGuard`` (nst_server/guard.py) refuses foreign Host names, other origins and missing
tokens; the HTTP front applies the same rules before reading a body (nst_server/server.py).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, NoReturn

from flask import Blueprint, Flask, Request, Response, current_app, g, jsonify, request, url_for
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException, InternalServerError

from nst_server import __version__
from nst_server.auth import Authenticator, Principal
from nst_server.budget import BudgetExceeded, MemoryBudget, NeverFits
from nst_server.engine import ENGINE_VERSION, EngineError
from nst_server.engine.planning import JobPlan, plan_job
from nst_server.guard import RequestGuard
from nst_server.images import ImageError, ImageTooLarge, inspect_image
from nst_server.jobmodel import (
    FINISHED,
    PREVIEW_SIZE,
    ArtistQueueFull,
    BrokerUnavailable,
    ErrorCode,
    JobInputs,
    JobQueue,
    JobSnapshot,
    JobState,
    JobView,
    NotRunning,
    QueueFull,
    Upload,
    job_needs,
)
from nst_server.params import ParamsError, StyleParams
from nst_server.settings import ServerSettings
from nst_server.weights import WeightsSource, weights_warning

log = logging.getLogger(__name__)

#: Set in the WSGI environ by the HTTP front when it discarded a request's body unread.
BODY_DROPPED = "nst.body_dropped"

#: How a job that did not end ``done`` is answered where its result is asked for
#: (GET /v1/jobs/<id>/result and POST /v1/stylize): status and error code.
FAILURE_STATUS: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.BAD_IMAGE: (400, "bad_image"),  # an upload could not be decoded
    ErrorCode.BAD_INPUT: (422, "job_failed"),  # the client's to fix
    ErrorCode.ENGINE_ERROR: (422, "job_failed"),  # e.g. too small for VGG19
    ErrorCode.OUT_OF_MEMORY: (503, "job_failed"),  # this server cannot right now
    ErrorCode.INTERNAL: (500, "job_failed"),  # our bug: see the log
    ErrorCode.CANCELLED: (409, "job_cancelled"),
}


def job_json(snapshot: JobSnapshot, *, with_owner: bool = False) -> dict[str, Any]:
    """A job as clients read it (GET /v1/jobs/<id>, the OpenAPI file's Job), from either
    queue's snapshot; ``with_owner`` for an admin's list."""
    view = snapshot.view
    progress = dict(view.progress)
    if snapshot.elapsed_s is not None:
        progress["elapsed_s"] = round(snapshot.elapsed_s, 3)
    if view.state == JobState.QUEUED and snapshot.position is not None:
        progress["position"] = snapshot.position
    if snapshot.finished_early:
        progress["finished_early"] = True
    body = {
        "id": view.id,
        "state": view.state.value,
        "progress": progress,
        "error": view.error,
        "error_code": view.error_code.value if view.error_code else None,
        "created": snapshot.created,
        "size": list(snapshot.size),
        "styles": snapshot.styles,
        "bit_depth": snapshot.bit_depth,
        "params": snapshot.params,
        "engine_version": ENGINE_VERSION,
        "preview": snapshot.preview_step is not None,
        "preview_step": snapshot.preview_step,
        "version": snapshot.version,
    }
    if with_owner:
        body["owner"] = view.owner
    return body


#: HTTP status -> the error code clients see, for errors Flask/werkzeug raise themselves.
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_busy",
    500: "internal_error",
    503: "unavailable",
}

_EXTENSION = "nst_server"

bp = Blueprint("api", __name__, url_prefix="/v1")


@dataclass
class _State:
    """What the routes share: one per app."""

    settings: ServerSettings
    queue: JobQueue
    guard: RequestGuard
    blocking: threading.BoundedSemaphore  # requests that may wait at once (stylize, long polls)


class ApiError(HTTPException):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(description=message)
        self.code = status
        self.error_code = code
        self.extra_headers = dict(headers or {})
        self.logged = False  # already in the log (refusals by the guard, with the address)


class _Request(Request):
    """Uploaded file parts are kept in memory, never spooled to disk.

    werkzeug's default spools any part over 500 KB to an anonymous file in the shared system
    temporary directory; uploads here must not touch disk at all. Memory stays bounded by the
    upload limit, and the memory budget reserves it before the body is read.
    """

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def create_app(
    settings: ServerSettings | None = None,
    *,
    engine: Any = None,
    authenticator: Authenticator,
    start_worker: bool = True,
) -> Flask:
    """Build the app: error handlers, the request guard, the blueprint and the job queue.

    ``engine``: an engine object (tests pass a fake); None builds ``StyleEngine`` from the
    settings' weights. ``start_worker``: start the worker (which loads the network) now.
    """
    settings = settings or ServerSettings()
    app = Flask(__name__)
    app.request_class = _Request
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    # Multipart fields that are not files (our `params`) are held in memory: werkzeug bounds
    # them (it needs room for its 64 KB reads), _parse_params applies max_params_bytes.
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_params_bytes + 2**20

    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(InternalServerError, _http_error)
    app.register_error_handler(BrokerUnavailable, _broker_down)
    app.before_request(_guard)
    app.register_blueprint(bp)

    queue = _make_queue(settings, engine)
    guard = RequestGuard(
        authenticator, bound_host=settings.host, allowed_hosts=settings.allowed_hosts
    )
    app.extensions[_EXTENSION] = _State(
        settings, queue, guard, threading.BoundedSemaphore(settings.blocking_limit)
    )
    if start_worker:
        queue.start()
    return app


def _make_queue(settings: ServerSettings, engine: Any) -> JobQueue:
    """A studio's queue on Redis with ``--broker``, else the in-process one on ``engine``."""
    artist_cap = settings.artist_queue_cap if settings.tokens_file else None
    budget = MemoryBudget(settings.memory_budget_bytes())
    if settings.broker:
        from nst_server.studio import RedisQueue

        return RedisQueue(settings, budget=budget, artist_cap=artist_cap)
    from nst_server.jobs import LocalQueue

    if engine is None:
        from nst_server.engine import StyleEngine  # imports TensorFlow: only when needed
        from nst_server.weights import resolve_weights

        engine = StyleEngine(resolve_weights(settings.weights))
    return LocalQueue(
        engine,
        capacity=settings.queue_size,
        abandon_after_s=settings.abandon_after_s,
        ttl_s=settings.job_ttl_s,
        max_finished=settings.max_finished_jobs,
        idle_unload_s=settings.idle_unload_s,
        max_pixels=settings.max_pixels,
        budget=budget,
        log_path=settings.log_file,
        artist_cap=artist_cap,
    )


def get_queue(app: Flask | None = None) -> JobQueue:
    """The app's job queue (one per app, created by ``create_app``)."""
    return _state(app).queue


def get_guard(app: Flask) -> RequestGuard:
    return _state(app).guard


def _state(app: Flask | None = None) -> _State:
    return (app or current_app).extensions[_EXTENSION]


# --- errors and the guard -----------------------------------------------------------------------


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if isinstance(exc, ApiError):
        code, message = exc.error_code, exc.description
    elif status >= 500:
        # Flask has already logged the traceback (app.logger); the client gets none of it.
        code = _CODES.get(status, "internal_error")
        message = f"internal server error (see the server log at {_log_location()})"
    elif status == 413:
        code, message = "too_large", _too_large_message()
    else:
        code = _CODES.get(status, "http_error")
        message = exc.description or exc.name
    if status < 500 and not getattr(exc, "logged", False):  # worth a line when debugging a client
        log.info("%s %s -> %d %s: %s", request.method, request.path, status, code, message)
    response = exc.get_response()  # keeps headers such as Allow (405)
    response.set_data(json.dumps({"error": {"code": code, "message": message}}))
    response.content_type = "application/json"
    if isinstance(exc, ApiError):
        response.headers.update(exc.extra_headers)
    return response


def _broker_down(exc: BrokerUnavailable) -> Response:
    log.warning("%s %s -> 503: %s", request.method, request.path, exc)
    response = jsonify({"error": {"code": "queue_unavailable", "message": str(exc)}})
    response.status_code = 503
    response.headers["Retry-After"] = str(_state().settings.retry_after_s)
    return response


def _params_too_large() -> str:
    return (
        f"params: the field is larger than this server's limit of "
        f"{_state().settings.max_params_bytes} bytes (max_params_bytes); send the job's JSON "
        "only"
    )


def _too_large_message() -> str:
    settings = _state().settings
    limit = settings.max_upload_bytes
    length = request.content_length
    if length is not None and length <= limit:
        # werkzeug refused a form field over MAX_FORM_MEMORY_SIZE: the params.
        return _params_too_large()
    return (
        f"the upload is larger than this server's limit of {limit} bytes "
        f"({limit / 1024 / 1024:g} MB, max_upload_bytes); send smaller images"
    )


def _fail(status: int, code: str, message: str, **headers: str) -> NoReturn:
    raise ApiError(status, code, message, {k.replace("_", "-"): v for k, v in headers.items()})


def _guard() -> None:
    """Before every route: the request guard, then the front's note of a discarded body."""
    principal, refusal = _state().guard.check(request.method, request.path, request.headers.get)
    if refusal is not None:
        log.warning(
            "%d %s %s from %s: %s",
            refusal.status,
            request.method,
            request.path[:200],
            request.remote_addr,
            refusal.code,
        )
        refused = ApiError(refusal.status, refusal.code, refusal.message, refusal.headers)
        refused.logged = True
        raise refused
    if request.environ.get(BODY_DROPPED):
        _fail(413, "too_large", _too_large_message())
    g.principal = principal


def _principal() -> Principal | None:
    return g.get("principal")


# --- routes -----------------------------------------------------------------------------------


@bp.get("/health")
def health() -> Response:
    queue = get_queue()
    if _principal() is None:  # without the token: only whether it is up, and its version
        return jsonify({"status": queue.status, "version": __version__})
    body = {
        "status": queue.status,
        "version": __version__,
        "backbone": "VGG19",
        "engine_version": ENGINE_VERSION,
        **queue.health(),
        "queue": queue.stats(),
        "memory": queue.budget.stats(),
        "log": _state().settings.log_file,
    }
    source = getattr(getattr(queue, "engine", None), "weights", None)
    warning = weights_warning(source) if isinstance(source, WeightsSource) else None
    if warning:
        body["weights_warning"] = warning
    if queue.status_error:
        body["error"] = queue.status_error
    return jsonify(body)


@bp.get("/params")
def params() -> Response:
    settings = _state().settings
    described = StyleParams.describe(get_queue().device)
    # Advertise this server's limits as the ranges, so clients never offer what we refuse.
    described["iterations"]["maximum"] = min(
        described["iterations"]["maximum"], settings.max_iterations
    )
    described["max_size"]["maximum"] = min(
        described["max_size"]["maximum"], settings.max_processing_size
    )
    return jsonify({"params": described, "limits": settings.public_limits()})


@bp.post("/plan")
def plan() -> Response:
    """What a job on a photo of this size would do, before sending any picture: its processing
    size, the enlargement to the photo, its steps, and its work against the same job enlarged
    plainly (``work_vs_plain``: how much longer ``upscale: detail`` takes)."""
    settings = _state().settings
    raw = request.stream.read(settings.max_params_bytes + 1)  # chunked bodies too
    if len(raw) > settings.max_params_bytes:
        _fail(
            413,
            "too_large",
            f"plan: the request is larger than this server's limit of "
            f"{settings.max_params_bytes} bytes (max_params_bytes); send the sizes and params only",
        )
    doc = _json_value(raw, "plan")
    if not isinstance(doc, dict):
        _fail(400, "bad_params", 'plan: send a JSON object {"width", "height", "params"}')
    size = _picture_size(doc, "photo", settings)
    paintings = doc.get("paintings", [{"width": size[1], "height": size[0]}])
    if not isinstance(paintings, list) or not 1 <= len(paintings) <= settings.max_styles:
        _fail(
            400,
            "bad_params",
            f"paintings: a list of 1 to {settings.max_styles} objects with width and height",
        )
    painting_sizes = [_picture_size(p, "painting", settings) for p in paintings]
    params = _params_from(doc.get("params", {}), get_queue().device, settings)
    job = _plan(size, painting_sizes, params, settings)
    plain = job
    if params.upscale != "plain":
        plain = _plan(size, painting_sizes, dataclasses.replace(params, upscale="plain"), settings)
    return jsonify(
        {
            "processing_size": list(job.processing_hw[::-1]),
            "result_size": list(job.result_hw[::-1]),
            "enlargement": round(job.enlargement, 3),
            "steps": job.total_steps,
            "passes": [[w, h, steps] for h, w, steps in job.passes],
            "work_vs_plain": round(job.pixel_steps / plain.pixel_steps, 3),
        }
    )


@bp.post("/jobs")
def create_job() -> tuple[Response, int, dict[str, str]]:
    job = _submit_from_form()
    location = url_for("api.get_job", job_id=job.id)
    return (
        jsonify({"id": job.id, "state": job.state.value, "location": location}),
        202,
        {"Location": location},
    )


@bp.get("/jobs")
def list_jobs() -> Response:
    """The caller's jobs, oldest first; an admin's list has everyone's, each with its owner."""
    principal = _principal()
    owner = None if principal.admin else principal.name
    jobs = get_queue().list_jobs(owner)
    return jsonify({"jobs": [job_json(j, with_owner=principal.admin) for j in jobs]})


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """The job's state; with ``?since=<version>&wait=<s>`` a long poll: the answer comes when
    the job changes (its end at once, progress at most 5 times a second), or after ``wait`` s
    if nothing did."""
    state = _state()
    wait = _query_number("wait", 0.0, state.settings.long_poll_max_s)
    since = _query_number("since", -1, 2**53, integer=True)
    _visible_job(job_id)
    snapshot = None
    # A long poll holds a thread; when too many wait already, answer at once (the client
    # polls again), so health and other polls always find a free thread.
    if wait > 0 and since >= 0 and state.blocking.acquire(blocking=False):
        try:
            snapshot = state.queue.wait_snapshot(job_id, int(since), wait)
        finally:
            state.blocking.release()
    else:
        snapshot = state.queue.snapshot(job_id)
    if snapshot is None:
        _unknown(job_id)
    return jsonify(job_json(snapshot))


@bp.get("/jobs/<job_id>/result")
def get_result(job_id: str) -> Response:
    job = _visible_job(job_id)
    result = get_queue().result_png(job_id) if job.state == JobState.DONE else None
    if result is not None:
        return _png(result, job_id)
    _not_done(job)


@bp.get("/jobs/<job_id>/preview")
def get_preview(job_id: str) -> Response:
    size = int(_query_number("size", PREVIEW_SIZE, 65535, integer=True, minimum=1))
    job = _visible_job(job_id)
    png = get_queue().preview_png(job_id, size)
    if png is None:
        _fail(
            409,
            "no_preview",
            f"job {job_id} has no preview (it is {job.state.value}, phase "
            f"{job.progress.get('phase')}); previews exist from the first optimisation step "
            "until the job ends",
        )
    return Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})


@bp.post("/jobs/<job_id>/finish")
def finish_job(job_id: str) -> tuple[Response, int]:
    """Stop the job after its current step; its picture so far becomes the result."""
    job = _visible_job(job_id)
    try:
        snapshot = get_queue().finish(job_id)
    except NotRunning as exc:
        if exc.state == JobState.QUEUED:
            _fail(
                409,
                "not_started",
                "the job has not started yet, so there is no picture to keep; cancel it "
                "with DELETE /v1/jobs/<id> instead, or wait until it runs",
            )
        _fail(409, "finished", f"the job has already ended ({exc.state.value})")
    if snapshot is None:
        _unknown(job.id)
    return jsonify(job_json(snapshot)), 202


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> tuple[Response, int]:
    _visible_job(job_id)
    snapshot = get_queue().cancel(job_id)
    if snapshot is None:
        _unknown(job_id)
    # 202: a running job stops within one step, after this answer
    running = snapshot.view.state == JobState.RUNNING
    return jsonify(job_json(snapshot)), 202 if running else 200


@bp.post("/stylize")
def stylize() -> Response:
    """Like POST /v1/jobs, but waits and answers with the PNG; the job dies with the client."""
    state = _state()
    if not state.blocking.acquire(blocking=False):
        _fail(
            429,
            "too_busy",
            f"{state.settings.blocking_limit} requests are already waiting on this server; "
            "use POST /v1/jobs and poll, or try again shortly",
            Retry_After=str(state.settings.retry_after_s),
        )
    try:
        job = _submit_from_form()
        disconnected = request.environ.get("waitress.client_disconnected")
        while (view := state.queue.wait_done(job.id, 0.25)) and view.state not in FINISHED:
            state.queue.touch(job.id)  # a waiting request is a client that is still there
            if disconnected is not None and disconnected():
                state.queue.cancel(job.id, "cancelled: the client disconnected")
                log.info("job %s: /v1/stylize client went away", job.id)
                # Nobody reads this answer; it only ends the request cleanly.
                _fail(409, "cancelled", "the client disconnected", X_NST_Job_Id=job.id)
    finally:
        state.blocking.release()
    result = state.queue.result_png(job.id) if view and view.state == JobState.DONE else None
    if result is not None:
        return _png(result, job.id)
    _not_done(view or job)


# --- helpers ----------------------------------------------------------------------------------


def _visible_job(job_id: str) -> JobView:
    """The job if it exists and the caller may see it (its owner or an admin); else 404."""
    job = get_queue().get(job_id)
    principal = _principal()
    if job is None or principal is None or not (principal.admin or job.owner == principal.name):
        _unknown(job_id)
    return job


def _query_number(
    name: str, default: float, maximum: float, *, integer: bool = False, minimum: float = 0
) -> float:
    """A numeric query parameter in [minimum, maximum], ``default`` when absent; else 400."""
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = float("nan")
    if not minimum <= value <= maximum:  # also refuses nan
        kind = "a whole number" if integer else "a number"
        _fail(
            400,
            "bad_query",
            f"{name} must be {kind} between {minimum:g} and {maximum:g}, got {text[:40]!r}",
        )
    return value


def _unknown(job_id: str) -> NoReturn:
    minutes = _state().settings.job_ttl_s / 60
    _fail(
        404,
        "not_found",
        f"no job with id {job_id[:64]!r}; finished jobs are forgotten "
        f"after {minutes:g} min, abandoned ones are cancelled",
    )


def _not_done(job: JobView) -> NoReturn:
    """The answer for the result of a job that is not done: the failure table, or not ready."""
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        status, code = FAILURE_STATUS[job.error_code or ErrorCode.INTERNAL]
        default = "the job was cancelled" if job.state == JobState.CANCELLED else "the job failed"
        _fail(status, code, job.error or default, X_NST_Job_Id=job.id)
    progress = job.progress
    step = f", step {progress['step']} of {progress['total']}" if "step" in progress else ""
    _fail(
        409,
        "not_ready",
        f"the job is {job.state.value} ({progress.get('phase')}{step}); poll "
        "GET /v1/jobs/<id> until its state is 'done'",
    )


def _png(data: bytes, job_id: str) -> Response:
    # wsgi.file_wrapper: waitress sends the bytes from here, no copy into its output buffers.
    body = request.environ.get("wsgi.file_wrapper", _iter_once)(io.BytesIO(data))
    return Response(
        body,
        mimetype="image/png",
        headers={
            "Content-Length": str(len(data)),
            "Content-Disposition": f'inline; filename="nst-{job_id[:8]}.png"',
            "X-NST-Job-Id": job_id,
        },
        direct_passthrough=True,
    )


def _iter_once(stream: io.BytesIO) -> list[bytes]:
    return [stream.getvalue()]


def _submit_from_form() -> JobView:
    """Validate a multipart job request and queue it; every problem is a 4xx ApiError.

    The body is parsed only once its size is reserved in the memory budget; the uploads are
    checked (format, structure, declared size, decode cost) but not decoded; the job's plan
    says whether the photo can be processed at the requested size and what memory it needs."""
    state = _state()
    settings, queue = state.settings, state.queue
    upload_key = object()
    length = request.content_length or settings.max_upload_bytes
    try:
        # The parsed parts and the bytes taken from them: twice the body at most.
        queue.budget.reserve(upload_key, held=2 * length, what="this upload")
    except BudgetExceeded as exc:
        _budget_refusal(exc)
    try:
        return _submit(settings, queue, upload_key)
    finally:
        queue.budget.release(upload_key)  # unless the job took it over


def _submit(settings: ServerSettings, queue: JobQueue, upload_key: object) -> JobView:
    files = request.files  # over the upload limit: werkzeug raises 413 here
    params = _parse_params(queue.device, settings)
    content_file = files.get("content")
    if content_file is None:
        _fail(
            400,
            "missing_field",
            "content: no file; send the photo as the multipart field 'content'",
        )
    style_files = files.getlist("style")
    if not style_files:
        _fail(
            400, "missing_field", "style: no file; send the painting as the multipart field 'style'"
        )
    if len(style_files) > settings.max_styles:
        _fail(
            400,
            "too_many_styles",
            f"style: {len(style_files)} files, over this server's "
            f"limit of {settings.max_styles} (max_styles)",
        )
    content = _upload(content_file, "content", settings)
    styles = tuple(_upload(f, "style", settings) for f in style_files)
    mask_file, init_file = files.get("mask"), files.get("init")  # init: e.g. an earlier result
    mask = _upload(mask_file, "mask", settings) if mask_file is not None else None
    init = _upload(init_file, "init", settings) if init_file is not None else None
    if mask is not None and mask.info.size != content.info.size:
        _fail(
            400,
            "bad_image",
            f"mask: {mask.info.width}x{mask.info.height} px, but the content is "
            f"{content.info.width}x{content.info.height} px; the mask must have the "
            "content's width and height",
        )
    if params.style_blend and len(params.style_blend) != len(styles):
        _fail(
            400,
            "bad_params",
            f"params: style_blend has {len(params.style_blend)} weight(s) but {len(styles)} "
            "style image(s) were sent; give one weight per style image",
        )
    plan = _plan(
        (content.info.height, content.info.width),
        [(s.info.height, s.info.width) for s in styles],
        params,
        settings,
        has_mask=mask is not None,
    )
    inputs = JobInputs(content, styles, mask, init)
    try:
        return queue.submit(
            inputs,
            params,
            needs=job_needs(inputs, params, plan.peak_bytes),
            owner=_principal().name,
            replacing=upload_key,
        )
    except ArtistQueueFull as exc:
        _fail(429, "artist_queue_full", str(exc), Retry_After=str(settings.retry_after_s))
    except QueueFull as exc:
        _fail(429, "queue_full", str(exc), Retry_After=str(settings.retry_after_s))
    except BudgetExceeded as exc:
        _budget_refusal(exc)


def _plan(
    content_hw: tuple[int, int],
    style_hws: list[tuple[int, int]],
    params: StyleParams,
    settings: ServerSettings,
    *,
    has_mask: bool = False,
) -> JobPlan:
    """The job's plan, or a 400 saying why it cannot run on this server."""
    if params.max_size == 0 and max(content_hw) > settings.max_processing_size:
        _fail(
            400,
            "bad_params",
            f"max_size: 0 means the photo's full size, {max(content_hw)} "
            f"px, over this server's limit of "
            f"{settings.max_processing_size} px (max_processing_size); "
            "give a max_size",
        )
    try:
        return plan_job(content_hw, style_hws, params, has_mask=has_mask)
    except EngineError as exc:  # e.g. a photo too thin to process at this size
        _fail(400, "bad_params", str(exc))


def _picture_size(doc: Any, what: str, settings: ServerSettings) -> tuple[int, int]:
    """(height, width) from ``{"width": W, "height": H}``, within this server's pixel limit."""
    if isinstance(doc, dict):
        width, height = doc.get("width"), doc.get("height")
        if all(type(v) is int and v >= 1 for v in (width, height)):
            if width * height <= settings.max_pixels:
                return height, width
            _fail(
                400,
                "bad_params",
                f"{what}: {width}x{height} px is over this server's limit of "
                f"{settings.max_pixels} pixels (max_pixels)",
            )
    _fail(400, "bad_params", f"{what}: give its width and height in pixels (integers from 1)")


def _budget_refusal(exc: BudgetExceeded) -> NoReturn:
    if isinstance(exc, NeverFits):
        _fail(413, "too_large", f"{exc}; send a smaller picture or choose a smaller max_size")
    _fail(429, "memory_full", str(exc), Retry_After=str(_state().settings.retry_after_s))


def _parse_params(device: str, settings: ServerSettings) -> StyleParams:
    raw: str | bytes | None = request.form.get("params")
    if raw is None and "params" in request.files:  # e.g. curl -F params=@job.json
        raw = request.files["params"].read(settings.max_params_bytes + 1)
    if raw is not None and len(raw) > settings.max_params_bytes:
        _fail(413, "too_large", _params_too_large())
    values = {} if raw is None or not raw.strip() else _json_value(raw, "params")
    return _params_from(values, device, settings)  # the defaults meet this server's limits too


def _json_value(raw: str | bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        _fail(400, "bad_params", f"{what}: not valid JSON ({exc})")
    except RecursionError:  # e.g. [[[[...]]]] nested deeper than the parser's stack
        _fail(400, "bad_params", f"{what}: the JSON is nested too deeply; send a flat object")


def _params_from(values: Any, device: str, settings: ServerSettings) -> StyleParams:
    """Checked parameters from a decoded JSON object, within this server's limits."""
    try:
        params = StyleParams.from_mapping(values, device)
    except ParamsError as exc:
        _fail(400, "bad_params", f"params: {exc}")
    except (OverflowError, ValueError, TypeError) as exc:
        # e.g. a 400-digit integer for a float parameter: float() overflows
        _fail(400, "bad_params", f"params: a value is out of range ({exc})")
    if params.iterations > settings.max_iterations:
        _fail(
            400,
            "bad_params",
            f"iterations: {params.iterations} is over this server's limit "
            f"of {settings.max_iterations} (max_iterations)",
        )
    if params.max_size > settings.max_processing_size:
        _fail(
            400,
            "bad_params",
            f"max_size: {params.max_size} px is over this server's limit "
            f"of {settings.max_processing_size} px (max_processing_size)",
        )
    return params


def _upload(upload: FileStorage, what: str, settings: ServerSettings) -> Upload:
    """An uploaded file, checked but not decoded (a 4xx naming ``what`` if unusable)."""
    data = upload.read()
    try:
        info = inspect_image(data, what=what, max_pixels=settings.max_pixels)
    except ImageTooLarge as exc:
        _fail(413, "too_large", str(exc))
    except ImageError as exc:
        _fail(400, "bad_image", str(exc))
    return Upload(data, info, what)


def _log_location() -> str:
    return _state().settings.log_file or "the server's standard error"
