"""The HTTP API: a Flask app factory and the ``/v1`` blueprint. Described in ``openapi.yaml``.

Every error, including Flask's own 404/405/413 and unhandled 500s, is JSON
``{"error": {"code": ..., "message": ...}}``; tracebacks go to the server log, never to a client.

Configuration (``create_app``): the defaults below, then ``NST_*`` environment variables
(``from_prefixed_env``, values parsed as JSON, e.g. ``NST_MAX_PIXELS=1000000``), then
``test_config``. Keys:

ENGINE              an engine object (tests, ``server.serve``); else built from WEIGHTS
WEIGHTS             weights file / ``WeightsSource`` for ``StyleEngine`` (None: the usual search)
TOKEN               when set, every /v1 route needs ``Authorization: Bearer <TOKEN>``
MAX_CONTENT_LENGTH  upload bytes per request (Flask's own key; over it -> 413)
MAX_PIXELS          pixels per image, checked on the declared size (over it -> 413)
MAX_ITERATIONS      optimisation steps per job (over it -> 400)
MAX_PROCESSING_SIZE longest side the optimisation may run at, incl. max_size 0 (over -> 400)
MAX_STYLES          style images per job
QUEUE_SIZE          jobs waiting at most (more -> 429 with Retry-After)
RETRY_AFTER_S       the Retry-After sent with 429
ABANDON_AFTER_S     cancel a job no client polled for this long (0: never)
JOB_TTL_S           forget finished jobs after this long
IDLE_UNLOAD_S       unload the network after this long without jobs (0: never)
LOG_FILE            the server log's path, reported by /v1/health and in internal errors
START_WORKER        start the worker thread (and load the network) in create_app
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import time
from collections.abc import Mapping
from typing import IO, Any, NoReturn

import numpy as np
from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request, url_for
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException, InternalServerError

from nst_server import __version__
from nst_server.engine import ENGINE_VERSION
from nst_server.images import DecodedImage, ImageError, ImageTooLarge, decode_image
from nst_server.jobs import CANCELLED, DONE, FAILED, Job, JobQueue, QueueFull
from nst_server.params import ParamsError, StyleParams

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "ENGINE": None,
    "WEIGHTS": None,
    "TOKEN": None,
    "MAX_CONTENT_LENGTH": 100 * 1024 * 1024,
    "MAX_PIXELS": 40_000_000,
    "MAX_ITERATIONS": 5000,
    "MAX_PROCESSING_SIZE": 4096,
    "MAX_STYLES": 8,
    "QUEUE_SIZE": 16,
    "RETRY_AFTER_S": 10,
    "ABANDON_AFTER_S": 30.0,
    "JOB_TTL_S": 900.0,
    "IDLE_UNLOAD_S": 0.0,
    "LOG_FILE": None,
    "START_WORKER": True,
    # Multipart fields that are not files (our `params`) are held in memory; keep that small.
    "MAX_FORM_MEMORY_SIZE": 1024 * 1024,
}

#: HTTP status -> the error code clients see, for errors Flask/werkzeug raise themselves.
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "too_large",
    415: "unsupported_media_type",
    429: "queue_full",
    500: "internal_error",
    503: "unavailable",
}

_EXTENSION = "nst_server"

#: Longest a GET /v1/jobs/<id>?wait= may hold a request (one waitress thread each).
MAX_LONG_POLL_S = 10.0

bp = Blueprint("api", __name__, url_prefix="/v1")


class ApiError(HTTPException):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(description=message)
        self.code = status
        self.error_code = code
        self.extra_headers = dict(headers or {})


class _Request(Request):
    """Uploaded file parts are kept in memory, never spooled to disk.

    werkzeug's default spools any part over 500 KB to an anonymous file in the shared system
    temporary directory; uploads here must not touch disk at all. Memory stays bounded by
    MAX_CONTENT_LENGTH, and every upload is read into memory to be decoded anyway.
    """

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: config layers, error handlers, the blueprint and the job queue."""
    app = Flask(__name__)
    app.request_class = _Request
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("NST")
    if test_config is not None:
        app.config.update(test_config)

    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(InternalServerError, _http_error)
    app.register_blueprint(bp)

    engine = app.config["ENGINE"]
    if engine is None:
        from nst_server.engine import StyleEngine  # imports TensorFlow: only when needed
        from nst_server.weights import WeightsSource, resolve_weights

        weights = app.config["WEIGHTS"]
        engine = StyleEngine(
            weights if isinstance(weights, WeightsSource) else resolve_weights(weights)
        )
    queue = JobQueue(
        engine,
        capacity=int(app.config["QUEUE_SIZE"]),
        abandon_after_s=float(app.config["ABANDON_AFTER_S"]),
        ttl_s=float(app.config["JOB_TTL_S"]),
        idle_unload_s=float(app.config["IDLE_UNLOAD_S"]),
        log_path=str(app.config["LOG_FILE"]) if app.config["LOG_FILE"] else None,
    )
    app.extensions[_EXTENSION] = queue
    if app.config["START_WORKER"]:
        queue.start()
    return app


def get_queue(app: Flask | None = None) -> JobQueue:
    """The app's job queue (one per app, created by ``create_app``)."""
    return (app or current_app).extensions[_EXTENSION]


# --- errors -----------------------------------------------------------------------------------


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if isinstance(exc, ApiError):
        code, message = exc.error_code, exc.description
    elif status >= 500:
        # Flask has already logged the traceback (app.logger); the client gets none of it.
        code = _CODES.get(status, "internal_error")
        where = current_app.config.get("LOG_FILE") or "the server's standard error"
        message = f"internal server error (see the server log at {where})"
    elif status == 413:
        code = "too_large"
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        message = (
            f"the upload is larger than this server's limit of {limit} bytes "
            f"({limit / 1024 / 1024:g} MB, MAX_CONTENT_LENGTH); send smaller images"
        )
    else:
        code = _CODES.get(status, "http_error")
        message = exc.description or exc.name
    if status < 500:  # a client's mistake: worth a line when debugging a plug-in
        log.info("%s %s -> %d %s: %s", request.method, request.path, status, code, message)
    response = exc.get_response()  # keeps headers such as Allow (405)
    response.set_data(json.dumps({"error": {"code": code, "message": message}}))
    response.content_type = "application/json"
    if isinstance(exc, ApiError):
        response.headers.update(exc.extra_headers)
    return response


def _fail(status: int, code: str, message: str, **headers: str) -> NoReturn:
    raise ApiError(status, code, message, {k.replace("_", "-"): v for k, v in headers.items()})


@bp.before_request
def _check_token() -> None:
    token = current_app.config.get("TOKEN")
    if not token:
        return
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode(), str(token).encode()
    ):
        _fail(
            401,
            "unauthorized",
            "this server needs 'Authorization: Bearer <token>' with its token",
            WWW_Authenticate='Bearer realm="nst-server"',
        )


# --- routes -----------------------------------------------------------------------------------


@bp.get("/health")
def health() -> Response:
    queue = get_queue()
    engine = queue.engine
    body = {
        "status": queue.status,
        "version": __version__,
        "backbone": "VGG19",
        "weights": engine.weights_description,
        "device": engine.device,
        "precision": engine.precision,
        "engine_version": ENGINE_VERSION,
        "loaded": engine.loaded,
        "queue": queue.stats(),
        "log": str(current_app.config["LOG_FILE"]) if current_app.config["LOG_FILE"] else None,
    }
    if queue.status_error:
        body["error"] = queue.status_error
    return jsonify(body)


@bp.get("/params")
def params() -> Response:
    device = get_queue().engine.device
    described = StyleParams.describe(device)
    # Advertise this server's limits as the ranges, so clients never offer what we refuse.
    cfg = current_app.config
    described["iterations"]["maximum"] = min(
        described["iterations"]["maximum"], cfg["MAX_ITERATIONS"]
    )
    described["max_size"]["maximum"] = min(
        described["max_size"]["maximum"], cfg["MAX_PROCESSING_SIZE"]
    )
    return jsonify({"params": described, "limits": _limits()})


@bp.post("/jobs")
def create_job() -> tuple[Response, int, dict[str, str]]:
    job = _submit_from_form()
    location = url_for("api.get_job", job_id=job.id)
    return (
        jsonify({"id": job.id, "state": job.state, "location": location}),
        202,
        {"Location": location},
    )


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """The job's state; with ``?since=<version>&wait=<s>`` a long poll: the answer comes when
    the job changes (its end at once, progress at most 5 times a second), or after ``wait`` s
    if nothing did."""
    wait = _query_number("wait", 0.0, MAX_LONG_POLL_S)
    since = _query_number("since", -1, 2**53, integer=True)
    queue = get_queue()
    if wait > 0 and since >= 0:
        snapshot = queue.wait_snapshot(job_id, int(since), wait)
    else:
        snapshot = queue.snapshot(job_id)
    if snapshot is None:
        _unknown(job_id)
    return jsonify(snapshot)


@bp.get("/jobs/<job_id>/result")
def get_result(job_id: str) -> Response:
    job = get_queue().get(job_id)
    if job is None:
        _unknown(job_id)
    if job.state == DONE and job.result is not None:
        return _png(job.result, job_id)
    _not_done(job.state, job.error, job.progress)


@bp.get("/jobs/<job_id>/preview")
def get_preview(job_id: str) -> Response:
    queue = get_queue()
    job = queue.get(job_id)
    if job is None:
        _unknown(job_id)
    png = queue.preview_png(job_id)
    if png is None:
        _fail(
            409,
            "no_preview",
            f"job {job_id} has no preview yet (it is {job.state}, phase "
            f"{job.progress.get('phase')}); previews start with the "
            "first optimisation step",
        )
    return Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> tuple[Response, int]:
    snapshot = get_queue().cancel(job_id)
    if snapshot is None:
        _unknown(job_id)
    # 202: a running job stops within one step, after this answer
    return jsonify(snapshot), 202 if snapshot["state"] == "running" else 200


@bp.post("/stylize")
def stylize() -> Response:
    """Like POST /v1/jobs, but waits and answers with the PNG; the job dies with the client."""
    queue = get_queue()
    job = _submit_from_form()
    disconnected = request.environ.get("waitress.client_disconnected")
    while not job.done_event.wait(0.25):
        queue.get(job.id)  # a waiting request is a client that is still there
        if disconnected is not None and disconnected():
            queue.cancel(job.id, "cancelled: the client disconnected")
            log.info("job %s: /v1/stylize client went away", job.id)
            # Nobody reads this answer; it only ends the request cleanly.
            _fail(409, "cancelled", "the client disconnected", X_NST_Job_Id=job.id)
    if job.state == DONE and job.result is not None:
        return _png(job.result, job.id)
    if job.state == FAILED:
        # engine_error: the engine cannot do this as asked (e.g. too small), the client's to fix;
        # out_of_memory: this server cannot right now; internal: our bug.
        status = {"bad_input": 422, "engine_error": 422, "out_of_memory": 503}.get(
            job.error_code or "", 500
        )
        _fail(status, "job_failed", job.error or "the job failed", X_NST_Job_Id=job.id)
    _fail(409, "cancelled", job.error or "the job was cancelled", X_NST_Job_Id=job.id)


# --- helpers ----------------------------------------------------------------------------------


def _limits() -> dict[str, Any]:
    cfg = current_app.config
    return {
        "max_upload_bytes": cfg["MAX_CONTENT_LENGTH"],
        "max_pixels": cfg["MAX_PIXELS"],
        "max_iterations": cfg["MAX_ITERATIONS"],
        "max_processing_size": cfg["MAX_PROCESSING_SIZE"],
        "max_styles": cfg["MAX_STYLES"],
        "queue_capacity": get_queue().capacity,
        "abandon_after_s": cfg["ABANDON_AFTER_S"],
    }


def _query_number(name: str, default: float, maximum: float, *, integer: bool = False) -> float:
    """A numeric query parameter in [0, maximum], ``default`` when absent; 400 otherwise."""
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= maximum:  # also refuses nan
        kind = "a whole number" if integer else "a number"
        _fail(
            400, "bad_query", f"{name} must be {kind} between 0 and {maximum:g}, got {text[:40]!r}"
        )
    return value


def _unknown(job_id: str) -> NoReturn:
    minutes = current_app.config["JOB_TTL_S"] / 60
    _fail(
        404,
        "not_found",
        f"no job with id {job_id[:64]!r}; finished jobs are forgotten "
        f"after {minutes:g} min, abandoned ones are cancelled",
    )


def _not_done(state: str, error: str | None, progress: Mapping[str, Any]) -> NoReturn:
    if state == FAILED:
        _fail(409, "job_failed", f"the job failed: {error}")
    if state == CANCELLED:
        _fail(410, "job_cancelled", error or "the job was cancelled")
    step = f", step {progress['step']} of {progress['total']}" if "step" in progress else ""
    _fail(
        409,
        "not_ready",
        f"the job is {state} ({progress.get('phase')}{step}); poll "
        "GET /v1/jobs/<id> until its state is 'done'",
    )


def _png(data: bytes, job_id: str) -> Response:
    return Response(
        data,
        mimetype="image/png",
        headers={
            "Content-Disposition": f'inline; filename="nst-{job_id[:8]}.png"',
            "X-NST-Job-Id": job_id,
        },
    )


def _submit_from_form() -> Job:
    """Validate a multipart job request and queue it; every problem is a 4xx ApiError."""
    cfg = current_app.config
    queue = get_queue()
    files = request.files  # over MAX_CONTENT_LENGTH: werkzeug raises 413 here
    params = _parse_params(queue.engine.device)
    if params.iterations > cfg["MAX_ITERATIONS"]:
        _fail(
            400,
            "bad_params",
            f"iterations: {params.iterations} is over this server's limit "
            f"of {cfg['MAX_ITERATIONS']} (MAX_ITERATIONS)",
        )
    if params.max_size > cfg["MAX_PROCESSING_SIZE"]:
        _fail(
            400,
            "bad_params",
            f"max_size: {params.max_size} px is over this server's limit "
            f"of {cfg['MAX_PROCESSING_SIZE']} px (MAX_PROCESSING_SIZE)",
        )
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
    if len(style_files) > cfg["MAX_STYLES"]:
        _fail(
            400,
            "too_many_styles",
            f"style: {len(style_files)} files, over this server's "
            f"limit of {cfg['MAX_STYLES']} (MAX_STYLES)",
        )
    content = _decode(content_file, "content")
    styles = [_decode(f, "style") for f in style_files]
    mask_file = files.get("mask")
    mask = _decode_mask(mask_file, content) if mask_file is not None else None
    init_file = files.get("init")  # e.g. an earlier result to continue from
    init_image = _decode(init_file, "init").pixels if init_file is not None else None
    if params.style_blend and len(params.style_blend) != len(styles):
        _fail(
            400,
            "bad_params",
            f"params: style_blend has {len(params.style_blend)} weight(s) but {len(styles)} "
            "style image(s) were sent; give one weight per style image",
        )
    if params.max_size == 0 and max(content.size) > cfg["MAX_PROCESSING_SIZE"]:
        _fail(
            400,
            "bad_params",
            f"max_size: 0 means the photo's full size, {max(content.size)} "
            f"px, over this server's limit of "
            f"{cfg['MAX_PROCESSING_SIZE']} px (MAX_PROCESSING_SIZE); "
            "give a max_size",
        )
    try:
        return queue.submit(
            content.pixels,
            [s.pixels for s in styles],
            params,
            mask=mask,
            init_image=init_image,
            bit_depth=content.bit_depth,
        )
    except QueueFull as exc:
        _fail(429, "queue_full", str(exc), Retry_After=str(int(cfg["RETRY_AFTER_S"])))


def _parse_params(device: str) -> StyleParams:
    raw: str | bytes | None = request.form.get("params")
    if raw is None and "params" in request.files:  # e.g. curl -F params=@job.json
        raw = request.files["params"].read(64 * 1024 + 1)
    if raw is None or not raw.strip():
        return StyleParams.for_device(device)
    try:
        values = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        _fail(400, "bad_params", f"params: not valid JSON ({exc})")
    except RecursionError:  # e.g. [[[[...]]]] nested deeper than the parser's stack
        _fail(400, "bad_params", "params: the JSON is nested too deeply; send a flat object")
    try:
        return StyleParams.from_mapping(values, device)
    except ParamsError as exc:
        _fail(400, "bad_params", f"params: {exc}")
    except (OverflowError, ValueError, TypeError) as exc:
        # e.g. a 400-digit integer for a float parameter: float() overflows
        _fail(400, "bad_params", f"params: a value is out of range ({exc})")


def _decode_mask(upload: FileStorage, content: DecodedImage) -> np.ndarray:
    """The mask as H x W float32 in [0, 1]: its luminance, times its alpha if it has one.

    It must have the content's width and height (no silent stretching of a selection).
    """
    decoded = _decode(upload, "mask")
    if decoded.size != content.size:
        _fail(
            400,
            "bad_image",
            f"mask: {decoded.size[0]}x{decoded.size[1]} px, but the content is "
            f"{content.size[0]}x{content.size[1]} px; the mask must have the content's "
            "width and height",
        )
    pixels = decoded.pixels
    grey = pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114
    if pixels.shape[2] == 4:
        grey = grey * pixels[..., 3]
    return np.ascontiguousarray(np.clip(grey, 0.0, 1.0), dtype=np.float32)


def _decode(upload: FileStorage, what: str) -> DecodedImage:
    started = time.perf_counter()
    try:
        image = decode_image(
            upload.read(), what=what, max_pixels=int(current_app.config["MAX_PIXELS"])
        )
    except ImageTooLarge as exc:
        _fail(413, "too_large", str(exc))
    except ImageError as exc:
        _fail(400, "bad_image", str(exc))
    log.debug("%s decoded in %.2f s", what, time.perf_counter() - started)
    return image
