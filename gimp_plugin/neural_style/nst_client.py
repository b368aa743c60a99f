"""Everything the GIMP plug-in does that is not GIMP: HTTP, job polling, PNG, settings, start-up.

Standard library only and no ``gi`` import, because GIMP's bundled Python has neither numpy nor
requests, and because the tests import this module on the host with plain Python.

The server's API (issue 2): ``GET /v1/health``, ``GET /v1/params``, ``POST /v1/jobs``
(multipart: ``content`` PNG, ``style`` PNG (may repeat), optional ``mask`` (greyscale PNG of the
content's size, white = stylise), optional ``init`` (a PNG to start from, e.g. an earlier
result), optional ``params`` JSON text) -> ``{"id"}``, ``GET /v1/jobs/<id>`` -> ``{"state",
"progress", "error"}`` (progress may carry ``scale``/``scales``, the coarse-to-fine pass, and a
``note`` for the user), ``GET /v1/jobs/<id>/result`` -> PNG, ``DELETE /v1/jobs/<id>``.
Errors are JSON ``{"error": {"code", "message"}}``. A job whose client stops polling is
cancelled by the server, which is what frees it when GIMP kills this plug-in on Cancel.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import json
import math
import os
import shlex
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SERVER_URL = "http://127.0.0.1:8765"

#: The installer writes this file next to the plug-in (see install/install_plugin.sh): next to
#: the plug-in rather than in ~/.config because a Flatpak GIMP sees a different ~/.config.
#: NST_PLUGIN_CONFIG overrides its location (tests, unusual set-ups).
CONFIG_NAME = "plugin.json"

#: How long to wait for a server we started to answer /v1/health: TensorFlow's import and the
#: VGG19 warm-up take 10-40 s on a CPU.
START_TIMEOUT_S = 180.0

#: Poll period against a server without long polls, and the retry period when the server does
#: not answer. The server cancels a job nobody polled for 30 s, so anything well below that.
POLL_INTERVAL_S = 0.5

#: Long poll: the server holds each status request up to this long and answers when the job
#: changes (at once when it ends, at most 5 times a second for progress), so the end of a job is
#: seen at once rather than up to a poll period late.
LONG_POLL_S = 5.0

#: Quality presets, relative to the server's defaults for its device (read from /v1/params), so
#: "Standard" is whatever the server thinks is right on a CPU or a GPU:
#: (factor on max_size, factor on iterations).
QUALITY_PRESETS: dict[str, tuple[float, float]] = {
    "draft": (0.5, 1 / 3),
    "standard": (1.0, 1.0),
    "final": (2.0, 2.0),
}

#: Strength is 0..100 with 50 = the server's default style weight; each 25 points multiply the
#: style weight by 10 (log scale, because Gatys' balance only changes visibly by decades).
STRENGTH_DEFAULT = 50.0
STRENGTH_DECADE = 25.0


class NstError(Exception):
    """A failure with a message meant for the user (shown by GIMP in its error console)."""


class ServerError(NstError):
    """The server answered with an error, or a job failed on it."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class ServerUnreachable(NstError):
    """Nothing answers at the server URL."""


class JobCancelled(NstError):
    """The job was cancelled on the server (by someone else or by the abandonment rule)."""


class JobLost(NstError):
    """The server stopped or restarted after accepting the job: its in-memory queue is gone."""


# --------------------------------------------------------------------------------------------
# PNG


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS_BY_COLOR_TYPE = {0: 1, 2: 3, 4: 2, 6: 4}
_COLOR_TYPE_BY_CHANNELS = {v: k for k, v in _CHANNELS_BY_COLOR_TYPE.items()}


@dataclass
class RawImage:
    """Interleaved pixels. 16-bit samples are in the machine's byte order, as GEGL's "u16"
    formats give and take them; PNG itself stores them big-endian."""

    width: int
    height: int
    channels: int  # 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
    bit_depth: int  # 8 or 16
    pixels: bytes

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    def row_bytes(self) -> int:
        return self.width * self.channels * self.bit_depth // 8


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def _swap16(data: bytes) -> bytes:
    """Native <-> big-endian for 16-bit samples (a no-op on big-endian machines)."""
    if sys.byteorder == "big":
        return bytes(data)
    samples = array("H")
    samples.frombytes(data)
    samples.byteswap()
    return samples.tobytes()


def encode_png(image: RawImage, level: int = 1) -> bytes:
    """A non-interlaced PNG with filter type 0 on every row.

    Filter 0 keeps this pure-Python encoder fast (the work is all in zlib), and so does zlib
    level 1 (a 1024 x 768 photo: 0.19 s at level 6); the files are a bit larger than an
    optimising encoder's, which does not matter on a loopback connection.
    """
    if image.bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {image.bit_depth}")
    if image.channels not in _COLOR_TYPE_BY_CHANNELS:
        raise ValueError(f"channels must be 1-4, got {image.channels}")
    stride = image.row_bytes()
    if len(image.pixels) != stride * image.height:
        raise ValueError(
            f"expected {stride * image.height} bytes of pixels, got {len(image.pixels)}"
        )
    data = _swap16(image.pixels) if image.bit_depth == 16 else image.pixels
    raw = bytearray()
    for y in range(image.height):
        raw += b"\x00"
        raw += data[y * stride : (y + 1) * stride]
    header = struct.pack(
        ">IIBBBBB",
        image.width,
        image.height,
        image.bit_depth,
        _COLOR_TYPE_BY_CHANNELS[image.channels],
        0,
        0,
        0,
    )
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(raw), level))
        + _chunk(b"IEND", b"")
    )


def _paeth_row(line: bytearray, prev: bytes | bytearray, bpp: int) -> None:
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        if pa <= pb and pa <= pc:
            pred = a
        elif pb <= pc:
            pred = b
        else:
            pred = c
        line[i] = (line[i] + pred) & 0xFF


def _add_bytes(a: bytes | bytearray, b: bytes | bytearray) -> bytes:
    """Bytewise (a + b) mod 256 over whole rows at once, using big-integer arithmetic: adds the
    low 7 bits of every byte in one go (no carry can cross a byte), then fixes the top bits with
    XOR. Much faster in CPython than a per-byte loop (the "Up" filter is the commonest)."""
    n = len(a)
    if n == 0:
        return b""
    x = int.from_bytes(a, "little")
    y = int.from_bytes(b, "little")
    low = int.from_bytes(b"\x7f" * n, "little")
    high = int.from_bytes(b"\x80" * n, "little")
    total = ((x & low) + (y & low)) ^ ((x ^ y) & high)
    return total.to_bytes(n, "little")


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> bytes:
    out = bytearray()
    prev: bytes | bytearray = bytes(stride)
    pos = 0
    for _ in range(height):
        if pos + 1 + stride > len(raw):
            raise ValueError("PNG image data is truncated")
        kind = raw[pos]
        line = bytearray(raw[pos + 1 : pos + 1 + stride])
        pos += 1 + stride
        if kind == 0:
            pass
        elif kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:  # Up
            line = bytearray(_add_bytes(line, prev))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            _paeth_row(line, prev, bpp)
        else:
            raise ValueError(f"PNG row uses unknown filter type {kind}")
        out += line
        prev = line
    return bytes(out)


#: Largest result decode_png accepts when the caller gives no expected size: GIMP's own limit is
#: far above, but a picture this large (16-bit RGBA: 4 GiB) is no answer to any real job.
MAX_DECODE_PIXELS = 2**29


def decode_png(
    data: bytes,
    expected_size: tuple[int, int] | None = None,
    max_pixels: int = MAX_DECODE_PIXELS,
) -> RawImage:
    """Decode a non-interlaced 8- or 16-bit grey/grey+alpha/RGB/RGBA PNG (what the server emits).

    16-bit samples come back in the machine's byte order (see :class:`RawImage`).
    ``expected_size`` (width, height), when given, must match the IHDR before anything is
    inflated, and inflation stops at the size the IHDR implies: a hostile or broken server
    cannot make the plug-in allocate more than the picture it asked for (a zlib "bomb" of a few
    KB can otherwise expand to gigabytes).
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file (bad signature)")
    pos = len(PNG_SIGNATURE)
    header: tuple[int, ...] | None = None
    idat = bytearray()
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        if len(payload) != length:
            raise ValueError("PNG file is truncated")
        pos += 12 + length
        if kind == b"IHDR":
            if length != 13:
                raise ValueError("PNG IHDR chunk has the wrong length")
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat += payload
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG file has no IHDR chunk")
    width, height, bit_depth, color_type, _compression, _filter, interlace = header
    if color_type not in _CHANNELS_BY_COLOR_TYPE:
        raise ValueError(f"PNG colour type {color_type} (palette) is not supported")
    if bit_depth not in (8, 16):
        raise ValueError(f"PNG bit depth {bit_depth} is not supported")
    if interlace:
        raise ValueError("interlaced PNG is not supported")
    if width == 0 or height == 0:
        raise ValueError("PNG has zero width or height")
    if expected_size is not None and (width, height) != tuple(expected_size):
        raise ValueError(
            f"the PNG is {width}x{height} px, expected {expected_size[0]}x{expected_size[1]} px"
        )
    if width * height > max_pixels:
        raise ValueError(f"the PNG is {width}x{height} px, over the limit of {max_pixels} pixels")
    channels = _CHANNELS_BY_COLOR_TYPE[color_type]
    bpp = channels * bit_depth // 8
    stride = width * bpp
    expected = height * (1 + stride)  # one filter-type byte per row
    inflater = zlib.decompressobj()
    try:
        # max_length bounds the output; one byte more than needed tells "too much" from "exact".
        raw = inflater.decompress(bytes(idat), expected + 1)
    except zlib.error as exc:
        raise ValueError(f"PNG image data is corrupt ({exc})") from None
    if len(raw) > expected or inflater.unconsumed_tail:
        raise ValueError(
            f"PNG image data inflate to more than a {width}x{height} picture holds; "
            "refusing to decode it"
        )
    pixels = _unfilter(raw, height, stride, bpp)
    if bit_depth == 16:
        pixels = _swap16(pixels)
    return RawImage(width, height, channels, bit_depth, pixels)


# --------------------------------------------------------------------------------------------
# Parameters


def _param_default(schema: Mapping[str, Any], name: str, fallback: Any) -> Any:
    entry = schema.get("params", {}).get(name)
    if isinstance(entry, Mapping) and "default" in entry:
        return entry["default"]
    return fallback


def _clamp(schema: Mapping[str, Any], name: str, value: float) -> float:
    entry = schema.get("params", {}).get(name) or {}
    lo, hi = entry.get("minimum"), entry.get("maximum")
    if lo is not None:
        value = max(lo, value)
    if hi is not None:
        value = min(hi, value)
    return value


def style_weight_for_strength(strength: float, default_weight: float) -> float:
    """Strength 0..100 -> the server's style_weight: 50 keeps the server default, each 25 points
    up or down multiply or divide it by 10 (0 = 1/100, 100 = 100x the default).

    content_weight stays at the server default: only the ratio matters to the picture, and
    moving one knob keeps the loss scale (and so L-BFGS's behaviour) predictable.
    """
    if not 0.0 <= strength <= 100.0:
        raise NstError(f"strength must be between 0 and 100, got {strength:g}")
    return default_weight * 10.0 ** ((strength - STRENGTH_DEFAULT) / STRENGTH_DECADE)


def _has_param(schema: Mapping[str, Any], name: str) -> bool:
    return isinstance(schema.get("params", {}).get(name), Mapping)


def _needs_param(schema: Mapping[str, Any], name: str, what: str) -> None:
    """An older server rejects unknown params with a terse 400: say what to do instead."""
    if not _has_param(schema, name):
        raise NstError(
            f"This neural style server does not support {what} (no '{name}' parameter): update "
            "it (run install/install.sh again) or leave that setting at its default."
        )


def build_job_params(
    schema: Mapping[str, Any],
    *,
    quality: str = "standard",
    strength: float = STRENGTH_DEFAULT,
    iterations: int = 0,
    max_size: int = 0,
    optimizer: str = "",
    seed: int = 0,
    preserve_colors: bool = False,
    style_scale: float = 1.0,
    style_blend: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The ``params`` JSON of a job from the plug-in's settings and the server's /v1/params.

    iterations / max_size 0 mean "from the quality preset", which scales the server's device
    defaults; a non-zero value is sent as given (the server checks the range and says so).
    preserve_colors and style_scale are sent only when they differ from the server's default,
    so the server's defaults rule while the user leaves them alone, and an older server that
    lacks them still takes jobs that do not use them. ``style_blend`` (one weight per style
    image) is sent when given.
    """
    if quality not in QUALITY_PRESETS:
        raise NstError(f"quality must be one of {', '.join(QUALITY_PRESETS)}, got {quality!r}")
    size_factor, steps_factor = QUALITY_PRESETS[quality]
    default_size = int(_param_default(schema, "max_size", 384))
    default_steps = int(_param_default(schema, "iterations", 150))
    params: dict[str, Any] = {"seed": int(seed)}
    if iterations > 0:
        params["iterations"] = int(iterations)
    else:
        params["iterations"] = int(
            _clamp(schema, "iterations", max(1, round(default_steps * steps_factor)))
        )
    if max_size > 0:
        params["max_size"] = int(max_size)
    elif default_size > 0:  # 0 from the server means "full size": keep it whatever the preset
        size = max(64, round(default_size * size_factor))
        params["max_size"] = int(_clamp(schema, "max_size", size))
    if optimizer:
        params["optimizer"] = optimizer
    if strength != STRENGTH_DEFAULT and _has_param(schema, "strength"):
        params["strength"] = float(_clamp(schema, "strength", float(strength)))
    elif strength != STRENGTH_DEFAULT:  # a server from before `strength`: its style_weight
        default_weight = float(_param_default(schema, "style_weight", 20.0))
        params["style_weight"] = float(
            _clamp(schema, "style_weight", style_weight_for_strength(strength, default_weight))
        )
    if bool(preserve_colors) != bool(_param_default(schema, "preserve_colors", False)):
        _needs_param(schema, "preserve_colors", "preserving the photo's colours")
        params["preserve_colors"] = bool(preserve_colors)
    if not math.isclose(float(style_scale), float(_param_default(schema, "style_scale", 1.0))):
        _needs_param(schema, "style_scale", "a style scale")
        params["style_scale"] = float(_clamp(schema, "style_scale", float(style_scale)))
    if style_blend is not None:
        weights = [float(w) for w in style_blend]
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise NstError(f"style blend weights must be >= 0 and not all 0, got {weights}")
        if len(weights) > 1:  # one style needs no blend, and any server takes that job
            _needs_param(schema, "style_blend", "blending several styles")
            params["style_blend"] = weights
    return params


def blend_for_share(share: float) -> list[float]:
    """The plug-in's "second style share" (0..100 %) -> style_blend weights [first, second]."""
    if not 0.0 <= share <= 100.0:
        raise NstError(f"the second style's share must be between 0 and 100, got {share:g}")
    return [100.0 - share, share]


# --------------------------------------------------------------------------------------------
# Result layers remember how they were made (a parasite), so a second run can continue


#: Parasite name on result layers; its data is :func:`encode_result_record`'s JSON.
RESULT_PARASITE = "neural-style-result"


def encode_result_record(
    source_id: int, source_name: str, style: str, params: Mapping[str, Any]
) -> bytes:
    """What a result layer records: the photo layer it came from (id for this session, name for
    after the XCF is reopened, when ids change) and the job's params."""
    doc = {
        "version": 1,
        "source_id": int(source_id),
        "source_name": source_name,
        "style": style,
        "params": dict(params),
    }
    return json.dumps(doc, sort_keys=True).encode("utf-8")


def decode_result_record(data: bytes | Sequence[int] | None) -> dict[str, Any] | None:
    """The record of a result layer, or None when absent or unreadable (then it is a plain
    layer: the plug-in stylises it as it is rather than failing over a damaged parasite)."""
    if not data:
        return None
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, TypeError):
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("version") != 1
        or not isinstance(doc.get("source_id"), int)
        or not isinstance(doc.get("source_name"), str)
    ):
        return None
    return doc


# --------------------------------------------------------------------------------------------
# HTTP


def build_multipart(fields: Sequence[tuple[str, str | None, str, bytes]]) -> tuple[bytes, str]:
    """multipart/form-data body from (name, filename or None, content type, data) fields.

    Returns (body, Content-Type header value). A random boundary cannot occur in PNG data by
    chance in practice; we still check, since a collision would corrupt the upload silently.
    """
    boundary = "nst-" + uuid.uuid4().hex
    marker = boundary.encode("ascii")
    if any(marker in data for _, _, _, data in fields):
        return build_multipart(fields)
    body = bytearray()
    for name, filename, content_type, data in fields:
        body += b"--" + marker + b"\r\n"
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"Content-Disposition: {disposition}\r\n".encode()
        body += f"Content-Type: {content_type}\r\n\r\n".encode()
        body += data + b"\r\n"
    body += b"--" + marker + b"--\r\n"
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def error_message(status: int, body: bytes, url: str = "") -> ServerError:
    """A readable ServerError from an HTTP error response (JSON ``{"error": {code, message}}``
    from our server; anything else, e.g. a proxy's HTML page, is summarised)."""
    code = None
    message = None
    try:
        doc = json.loads(body.decode("utf-8"))
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            code = err.get("code")
            message = err.get("message")
        elif isinstance(err, str):
            message = err
    except (ValueError, UnicodeDecodeError):
        pass
    if not message:
        text = body[:200].decode("utf-8", "replace").strip()
        message = f"unexpected answer: {text}" if text else "empty answer"
    where = f" ({url})" if url else ""
    label = f"{status} {code}" if code else str(status)
    return ServerError(f"Neural style server error {label}{where}: {message}", status, code)


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is this machine (we only ever start a server for those)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NstClient:
    """The server's HTTP API, with urllib (GIMP's Python has no requests)."""

    def __init__(self, base_url: str = DEFAULT_SERVER_URL, token: str = "", timeout: float = 60.0):
        url = (base_url or DEFAULT_SERVER_URL).strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.base_url = url
        self.token = token.strip()
        self.timeout = timeout

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> tuple[int, str, bytes]:
        url = self.base_url + path
        request = urllib.request.Request(url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as exc:
            raise error_message(exc.code, exc.read() or b"", url) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # HTTPException: the connection broke mid-answer (IncompleteRead, BadStatusLine),
            # e.g. the server was killed while sending; to the user that is "unreachable".
            reason = getattr(exc, "reason", exc) or type(exc).__name__
            raise ServerUnreachable(
                f"Cannot reach the neural style server at {self.base_url}: {reason}"
            ) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        status, _ctype, body = self._request(method, path, **kwargs)
        try:
            doc = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ServerError(
                f"The server at {self.base_url}{path} did not answer with JSON "
                f"(HTTP {status}); is this really the neural style server?",
                status,
            ) from None
        if not isinstance(doc, dict):
            raise ServerError(f"Unexpected answer from {self.base_url}{path}: {doc!r:.200}")
        return doc

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        return self._json("GET", "/v1/health", timeout=timeout)

    def params(self) -> dict[str, Any]:
        return self._json("GET", "/v1/params")

    def submit(
        self,
        content_png: bytes,
        style_pngs: Sequence[bytes],
        params: Mapping[str, Any] | None = None,
        mask_png: bytes | None = None,
        init_png: bytes | None = None,
    ) -> str:
        fields: list[tuple[str, str | None, str, bytes]] = [
            ("content", "content.png", "image/png", content_png)
        ]
        fields += [("style", f"style{i}.png", "image/png", png) for i, png in enumerate(style_pngs)]
        if mask_png is not None:
            fields.append(("mask", "mask.png", "image/png", mask_png))
        if init_png is not None:
            fields.append(("init", "init.png", "image/png", init_png))
        if params:
            fields.append(("params", None, "application/json", json.dumps(params).encode()))
        body, ctype = build_multipart(fields)
        doc = self._json("POST", "/v1/jobs", body=body, content_type=ctype)
        job_id = doc.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise ServerError(f"The server accepted the job but sent no id: {doc!r:.200}")
        return job_id

    def status(self, job_id: str, since: int | None = None, wait: float = 0.0) -> dict[str, Any]:
        """The job's state; with ``since`` (the last answer's ``version``) and ``wait`` the
        server answers when the job changes, or after ``wait`` s."""
        path = f"/v1/jobs/{urllib.parse.quote(job_id)}"
        if since is not None and wait > 0:
            path += f"?since={since}&wait={wait:g}"
            return self._json("GET", path, timeout=max(self.timeout, wait + 30.0))
        return self._json("GET", path)

    def result(self, job_id: str) -> bytes:
        _status, _ctype, body = self._request(
            "GET", f"/v1/jobs/{urllib.parse.quote(job_id)}/result"
        )
        return body

    def cancel(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{urllib.parse.quote(job_id)}")


def format_duration(seconds: float) -> str:
    seconds = max(0, int(math.ceil(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_text(status: Mapping[str, Any]) -> tuple[float | None, str]:
    """(fraction done or None when unknown, text for GIMP's progress bar) of a job status."""
    state = status.get("state", "?")
    progress = status.get("progress") or {}
    if state == "queued":
        ahead = progress.get("queue_position") or progress.get("position")
        return None, (
            f"Neural style: waiting for the server ({ahead} ahead)"
            if ahead
            else "Neural style: waiting for the server"
        )
    step, total = progress.get("step"), progress.get("total")
    phase = progress.get("phase") or state
    scale, scales = progress.get("scale"), progress.get("scales")
    # Coarse to fine: "pass 2/3" tells the user why the picture sharpens in jumps.
    passes = (
        f"pass {int(scale)}/{int(scales)}, "
        if isinstance(scale, (int, float)) and isinstance(scales, (int, float)) and scales > 1
        else ""
    )
    note = progress.get("note")
    suffix = f" ({note})" if isinstance(note, str) and note else ""
    if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0:
        fraction = min(1.0, max(0.0, step / total))
        text = f"Neural style: {passes}step {int(step)}/{int(total)}"
        eta = progress.get("eta_s")
        if isinstance(eta, (int, float)) and eta >= 0 and step > 0:
            text += f", about {format_duration(eta)} left"
        return fraction, text + suffix
    return None, f"Neural style: {passes}{phase}{suffix}"


ProgressCallback = Callable[[float | None, str], None]

#: How often a poll that finds nothing listening is retried before the job counts as lost:
#: rides over a momentary hiccup, and stays well below the server's abandonment time.
LOST_RETRIES = 3


def job_lost_message(client: NstClient, why: str) -> str:
    return (
        f"The neural style server stopped or restarted while working on this job ({why}), so "
        f"the job was lost: start it again (the plug-in starts it by itself on the next run if "
        f"the installer recorded how; otherwise: {how_to_start(client.base_url)}) and retry."
    )


def run_job(
    client: NstClient,
    content_png: bytes,
    style_pngs: Sequence[bytes],
    params: Mapping[str, Any] | None,
    progress: ProgressCallback | None = None,
    poll_interval: float = POLL_INTERVAL_S,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    *,
    long_poll: float = LONG_POLL_S,
    mask_png: bytes | None = None,
    init_png: bytes | None = None,
    on_note: Callable[[str], None] | None = None,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> bytes:
    """Submit a job, poll it to the end feeding ``progress``, and return the result PNG.

    Polls are long polls (held up to ``long_poll`` s by the server) when the server offers them
    (its answers carry a ``version``), else every ``poll_interval`` s.

    Raises ServerError with the job's own message when it fails, JobCancelled when it is
    cancelled on the server, JobLost when the server stops or restarts after accepting it
    (nothing answers, or it no longer knows the job's id). ``on_note`` is called once with
    each distinct ``note`` the server attaches to the progress (e.g. "processed at a smaller
    size: memory"), so the caller can tell the user rather than bury it in a progress bar. If
    this process is killed (GIMP's Cancel), polling stops and the server cancels the job itself.
    ``on_status`` sees every status answer as it arrives (scripts, benchmarks: the last one
    carries e.g. ``progress.engine_s``, the server's optimisation time).
    """
    report = progress or (lambda fraction, text: None)
    report(None, "Neural style: sending the images")
    job_id = client.submit(content_png, style_pngs, params, mask_png=mask_png, init_png=init_png)
    started = time.monotonic()
    notes: list[str] = []

    def fetch(call: Callable[[str], Any]) -> Any:
        """One call about the accepted job; lost-job symptoms become JobLost."""
        for attempt in range(LOST_RETRIES + 1):
            try:
                return call(job_id)
            except ServerUnreachable as exc:
                if attempt == LOST_RETRIES:
                    raise JobLost(job_lost_message(client, f"{exc}")) from None
                sleep(poll_interval)
            except ServerError as exc:
                # The server answered but forgot the id it gave us: a new process.
                if exc.status == 404:
                    raise JobLost(job_lost_message(client, "it no longer knows the job")) from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    version: int | None = None
    try:
        while True:
            status = fetch(functools.partial(client.status, since=version, wait=long_poll))
            if on_status:
                on_status(status)
            state = status.get("state")
            note = (status.get("progress") or {}).get("note")
            if isinstance(note, str) and note and note not in notes:
                notes.append(note)
                if on_note:
                    on_note(note)
            if state == "done":
                report(1.0, "Neural style: fetching the result")
                return fetch(client.result)
            if state == "failed":
                raise ServerError(
                    f"The neural style job failed: {status.get('error') or 'no reason given'}"
                )
            if state == "cancelled":
                raise JobCancelled(
                    "The neural style job was cancelled on the server"
                    + (f": {status['error']}" if status.get("error") else "")
                )
            if state not in ("queued", "running"):
                raise ServerError(f"The server reported an unknown job state {state!r}")
            report(*progress_text(status))
            if timeout is not None and time.monotonic() - started > timeout:
                raise NstError(
                    f"The neural style job took longer than "
                    f"{format_duration(timeout)}; it was cancelled"
                )
            version = status.get("version") if long_poll > 0 else None
            if not isinstance(version, int) or isinstance(version, bool):
                version = None  # a server without long polls: plain polling
                sleep(poll_interval)
    except JobLost:
        raise  # nothing to cancel: the server has no such job any more
    except BaseException:
        # Free the server at once on our own errors (timeout, Ctrl-C in a script); best effort.
        try:
            if client.status(job_id).get("state") in ("queued", "running"):
                client.cancel(job_id)
        except NstError:
            pass
        raise


# --------------------------------------------------------------------------------------------
# Settings recorded by the installer, and starting the server


def config_path(plugin_dir: str | os.PathLike[str] | None = None) -> Path:
    override = os.environ.get("NST_PLUGIN_CONFIG")
    if override:
        return Path(override)
    return Path(plugin_dir or Path(__file__).resolve().parent) / CONFIG_NAME


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The installer's record: {"server_url": ..., "start_command": ...}; {} when absent.

    A broken file is reported, not ignored: it is the only record of how to start the server.
    """
    file = Path(path) if path else config_path()
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise NstError(
            f"Cannot read the plug-in settings {file}: {exc}; re-run install/install_plugin.sh"
        ) from None
    if not isinstance(doc, dict):
        raise NstError(
            f"The plug-in settings {file} are not a JSON object; re-run install/install_plugin.sh"
        )
    return doc


def how_to_start(url: str) -> str:
    port = urllib.parse.urlsplit(url).port or 8765
    return (
        f"Start it in a terminal with `nst-server serve --port {port}` (from the environment "
        f"install/install.sh made), or run install/install.sh again, which starts it and "
        f"records the command for this plug-in."
    )


def wait_for_health(
    client: NstClient,
    timeout: float,
    process: subprocess.Popen | None = None,
    interval: float = 0.5,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.health(timeout=5.0)
        except ServerUnreachable:
            pass
        if process is not None and process.poll() is not None:
            raise NstError(
                f"The neural style server exited with code {process.returncode} while starting"
            )
        if time.monotonic() >= deadline:
            raise NstError(
                f"The neural style server did not answer within {format_duration(timeout)}"
            )
        time.sleep(interval)


def start_server(command: str | Sequence[str], log_path: str | None = None) -> subprocess.Popen:
    """Start the server detached from this process, so it outlives the plug-in (GIMP ends the
    plug-in after each run) and keeps the network warm for the next edit."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise NstError("The recorded server start command is empty")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise NstError(f"Cannot run the server start command {shlex.join(argv)}: {exc}") from None
    finally:
        if log_path:
            out.close()


def ensure_server(
    client: NstClient,
    start_command: str | Sequence[str] | None,
    timeout: float = START_TIMEOUT_S,
    report: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], subprocess.Popen | None]:
    """Return (/v1/health, None) when the server answers; if nothing answers and the URL is
    local, start the server with the recorded command, wait for it and return (health, the
    process). Errors say how to start it by hand."""
    try:
        return client.health(timeout=5.0), None
    except ServerUnreachable as exc:
        first_error = str(exc)
    if not start_command:
        raise ServerUnreachable(
            f"{first_error}. No start command is recorded for this plug-in. "
            f"{how_to_start(client.base_url)}"
        )
    if not is_loopback_url(client.base_url):
        raise ServerUnreachable(
            f"{first_error}. It is not on this machine, so the plug-in does "
            f"not start it; check the URL and that the server runs there."
        )
    if report:
        report("Neural style: starting the server (first start takes a while)")
    command_text = start_command if isinstance(start_command, str) else shlex.join(start_command)
    process = None
    try:
        process = start_server(start_command)
        return wait_for_health(client, timeout, process), process
    except NstError as exc:
        if process is not None and process.poll() is None:
            process.kill()  # it never answered: do not leave a half-started server behind
            process.wait(10)
        raise ServerUnreachable(
            f"{first_error}. Starting it with `{command_text}` failed: "
            f"{exc}. {how_to_start(client.base_url)}"
        ) from None
