"""Everything the GIMP plug-in does that is not GIMP: a package of one module per concern.

    png        PNG encoder and decoder (RawImage)
    options    THE table of the plug-in's options (PDB arguments, dialog, presets, records)
    params     settings + the server's /v1/params -> a job's params and paintings
    record     what a result layer remembers (version 2, reads 1) and its name
    client     the HTTP API, safe against a hostile server (NstClient)
    jobs       a job's life: submit, poll, result (JobTracker, run_job), progress text
    settings   the installer's record (plugin.json), the token, starting the server
    presets    named presets (PresetStore)
    controller the window's logic without GTK (StudioController)

Standard library only and no ``gi`` import: GIMP's bundled Python has neither numpy nor
requests, and the tests import this package on the host with plain Python. The names below are
the package's public interface (``import nst_client; nst_client.run_job(...)``).
"""

from .client import (
    DEFAULT_SERVER_URL,
    NstClient,
    build_multipart,
    check_snapshot,
    error_message,
    is_loopback_url,
    parse_json,
)
from .controller import (
    Event,
    HistoryEntry,
    Result,
    RunRequest,
    RunView,
    StudioController,
    history_from_layers,
)
from .errors import (
    JobCancelled,
    JobLost,
    NstError,
    ServerError,
    ServerTooOld,
    ServerUnreachable,
    how_to_start,
)
from .jobs import (
    LONG_POLL_S,
    POLL_INTERVAL_S,
    JobTracker,
    format_duration,
    plan_text,
    processing_size,
    progress_fraction,
    progress_text,
    run_job,
)
from .options import BY_NAME, OPTIONS, REMEMBERED, Option, clean_settings, dialog_order
from .params import (
    STRENGTH_DEFAULT,
    blend_for_share,
    build_job_params,
    style_weight_for_strength,
    styles_to_send,
)
from .png import PNG_SIGNATURE, RawImage, decode_png, encode_png, png_size
from .presets import BUILT_IN, Preset, PresetStore
from .record import (
    RESULT_PARASITE,
    Painting,
    ResultFacts,
    decode_result_record,
    encode_result_record,
    result_layer_name,
)
from .settings import (
    CONFIG_NAME,
    START_TIMEOUT_S,
    Token,
    config_path,
    ensure_server,
    load_config,
    make_client,
    resolve_token,
    start_server,
    wait_for_health,
)

__all__ = [
    "Event",
    "HistoryEntry",
    "Result",
    "RunRequest",
    "RunView",
    "StudioController",
    "history_from_layers",
    "BUILT_IN",
    "BY_NAME",
    "CONFIG_NAME",
    "DEFAULT_SERVER_URL",
    "LONG_POLL_S",
    "OPTIONS",
    "PNG_SIGNATURE",
    "POLL_INTERVAL_S",
    "REMEMBERED",
    "RESULT_PARASITE",
    "START_TIMEOUT_S",
    "STRENGTH_DEFAULT",
    "JobCancelled",
    "JobLost",
    "JobTracker",
    "NstClient",
    "NstError",
    "Option",
    "Painting",
    "Preset",
    "PresetStore",
    "RawImage",
    "ResultFacts",
    "ServerError",
    "ServerTooOld",
    "ServerUnreachable",
    "Token",
    "blend_for_share",
    "build_job_params",
    "build_multipart",
    "check_snapshot",
    "clean_settings",
    "config_path",
    "decode_png",
    "decode_result_record",
    "dialog_order",
    "encode_png",
    "encode_result_record",
    "ensure_server",
    "error_message",
    "format_duration",
    "plan_text",
    "how_to_start",
    "is_loopback_url",
    "load_config",
    "make_client",
    "parse_json",
    "png_size",
    "processing_size",
    "progress_fraction",
    "progress_text",
    "resolve_token",
    "result_layer_name",
    "run_job",
    "start_server",
    "style_weight_for_strength",
    "styles_to_send",
    "wait_for_health",
]
