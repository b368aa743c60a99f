"""Hypothesis strategies for requests to every endpoint, and the rule every answer must obey.

A request is ``(method, path, headers, body)``. The strategies cover: valid jobs, valid images
cut short or with flipped bytes, random bytes as images, hostile images, params JSON with wrong
types, huge numbers, NaN/Infinity, unicode and unknown keys, missing fields, repeated fields,
hostile file names, malformed multipart (no boundary, wrong boundary, random body), wrong
content types, unknown job ids (unicode, path tricks), unknown routes and methods.

The rule (:func:`check_answer`): never a 5xx; every error is JSON ``{"error": {code, message}}``
without a traceback; a 2xx job answer names a 32-hex id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from tests.live_server import multipart
from tests.reliability.helpers import gradient, painting, png
from tests.reliability.hostile import hostile_images

Request = tuple[str, str, dict[str, str], bytes]

PARAM_NAMES = [
    "iterations",
    "max_size",
    "seed",
    "optimizer",
    "init",
    "content_weight",
    "style_weight",
    "tv_weight",
    "learning_rate",
    "content_layers",
    "style_layers",
    "upscale",
    "strength",
]

VALID_CONTENT = png(gradient(40, 32))
VALID_STYLE = painting(48)
VALID_MASK = png(gradient(40, 32, "L"))
_HOSTILE = [data for data, _ in hostile_images(small=True).values()]

_big_ints = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64 + 1, 10**400]),
)
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    _big_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["lbfgs", "adam", "content", "noise", "style", "block4_conv2"]),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def params_text(draw: Callable[..., Any]) -> bytes:
    """The ``params`` field: mostly JSON objects of plausible keys with wild values."""
    kind = draw(st.sampled_from(["object", "object", "object", "json", "text", "special"]))
    if kind == "object":
        keys = st.one_of(st.sampled_from(PARAM_NAMES), st.text(max_size=12))
        # small iterations keep the fake engine quick when a job is accepted
        value = draw(st.dictionaries(keys, _json_values, max_size=5))
        if draw(st.booleans()):
            value["iterations"] = draw(st.integers(1, 3))
        text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    elif kind == "json":
        text = json.dumps(draw(_json_values))
    elif kind == "text":
        return draw(st.binary(max_size=200))
    else:
        text = draw(
            st.sampled_from(
                [
                    '{"iterations": NaN}',
                    '{"tv_weight": Infinity}',
                    '{"style_weight": -Infinity}',
                    '{"style_weight": 1' + "0" * 400 + "}",
                    '{"iterations": 1' + "0" * 5000 + "}",
                    "[" * 50_000 + "]" * 50_000,
                    '{"iterations": 1, "iterations": "x"}',
                    '{"max_size": 1e999}',
                    '{"seed": -1}',
                    '{"content_layers": [], "style_layers": []}',
                    '{"style_layers": ["block1_conv1", "block1_conv1"]}',
                    "\ufeff{}",
                    "",
                    "   ",
                ]
            )
        )
    return text.encode("utf-8", "surrogatepass")


@st.composite
def image_bytes(draw: Callable[..., Any], valid: bytes) -> bytes:
    kind = draw(st.sampled_from(["valid", "valid", "cut", "flip", "random", "hostile", "empty"]))
    if kind == "valid":
        return valid
    if kind == "cut":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "flip":
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "hostile":
        return draw(st.sampled_from(_HOSTILE))
    return b""


_filenames = st.one_of(
    st.none(),
    st.text(max_size=30).filter(lambda s: '"' not in s and "\r" not in s and "\n" not in s),
    st.sampled_from(
        ["../../../etc/passwd", "/etc/shadow", "C:\\Windows\\win.ini", "a.png\x00.exe", "~/x"]
    ),
)


@st.composite
def job_form_body(draw: Callable[..., Any]) -> tuple[bytes, str]:
    parts: list[tuple[str, str | None, bytes]] = []
    if draw(st.integers(0, 9)) > 0:
        parts.append(("content", draw(_filenames) or "c.png", draw(image_bytes(VALID_CONTENT))))
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2, 9]))):
        parts.append(("style", draw(_filenames) or "s.png", draw(image_bytes(VALID_STYLE))))
    if draw(st.integers(0, 4)) == 0:
        mask = draw(st.sampled_from([VALID_MASK, png(gradient(20, 10, "L")), b"junk"]))
        parts.append(("mask", "m.png", mask))
    if draw(st.integers(0, 3)) > 0:
        as_file = draw(st.integers(0, 5)) == 0
        parts.append(("params", "p.json" if as_file else None, draw(params_text())))
    for _ in range(draw(st.integers(0, 2))):  # unknown fields, unicode names
        parts.append((draw(st.text(min_size=1, max_size=10).filter(_header_safe)), None, b"x"))
    parts = draw(st.permutations(parts))
    body, content_type = multipart(parts)
    return body, content_type


def _header_safe(text: str) -> bool:
    return '"' not in text and not any(c in text for c in "\r\n\x00")


@st.composite
def malformed_body(draw: Callable[..., Any]) -> tuple[bytes, str]:
    kind = draw(
        st.sampled_from(["random", "no-boundary", "wrong-boundary", "cut", "json", "form", "none"])
    )
    if kind == "random":
        return draw(st.binary(max_size=500)), "multipart/form-data; boundary=xyz"
    if kind == "no-boundary":
        body, _ = multipart([("content", "c.png", VALID_CONTENT)])
        return body, "multipart/form-data"
    if kind == "wrong-boundary":
        body, _ = multipart([("content", "c.png", VALID_CONTENT)], boundary="aaa")
        return body, "multipart/form-data; boundary=bbb"
    if kind == "cut":
        body, ctype = multipart(
            [("content", "c.png", VALID_CONTENT), ("style", "s.png", VALID_STYLE)]
        )
        return body[: draw(st.integers(0, len(body) - 1))], ctype
    if kind == "json":
        return json.dumps({"content": "x", "style": "y"}).encode(), "application/json"
    if kind == "form":
        return b"content=x&style=y&params=%7B%7D", "application/x-www-form-urlencoded"
    return draw(st.binary(max_size=100)), ""


_job_ids = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    st.text(max_size=40).filter(lambda s: "/" not in s and s not in (".", "..") and s),
    st.sampled_from(["..", "%2e%2e", "..%2f..%2fetc%2fpasswd", "%00", "a" * 5000]),
)


_sizes = st.one_of(
    st.integers(-10, 70_000).map(str), st.sampled_from(["", "nan", "1e9", "256.5", "x"])
)


_sides = st.one_of(
    st.integers(1, 5000), _json_scalars, st.sampled_from([0, -5, 31, 10**9, 2**63, 1.5, True])
)


@st.composite
def plan_body(draw: Callable[..., Any]) -> bytes:
    """POST /v1/plan: sizes and params, plausible or wild, or the params field's own fuzz."""
    kind = draw(st.sampled_from(["object", "object", "wild", "params"]))
    if kind == "params":
        return draw(params_text())
    if kind == "wild":
        return json.dumps(draw(_json_values)).encode()
    doc = {"width": draw(_sides), "height": draw(_sides)}
    if draw(st.booleans()):
        doc["paintings"] = draw(
            st.one_of(
                st.lists(st.fixed_dictionaries({"width": _sides, "height": _sides}), max_size=3),
                _json_values,
            )
        )
    if draw(st.booleans()):
        doc["params"] = draw(
            st.dictionaries(st.sampled_from(PARAM_NAMES), _json_values, max_size=4)
        )
    return json.dumps(doc).encode()


@st.composite
def requests(draw: Callable[..., Any], *, stylize: bool = True) -> Request:
    """Any request to any endpoint (``stylize=False`` leaves out the blocking endpoint)."""
    posts = ["/v1/jobs", "/v1/stylize"] if stylize else ["/v1/jobs"]
    kind = draw(st.sampled_from(["form", "form", "form", "malformed", "get", "plan", "other"]))
    if kind == "plan":
        return "POST", "/v1/plan", {"Content-Type": "application/json"}, draw(plan_body())
    if kind in ("form", "malformed"):
        path = draw(st.sampled_from(posts))
        body, ctype = draw(job_form_body() if kind == "form" else malformed_body())
        headers = {"Content-Type": ctype} if ctype else {}
        return "POST", path, headers, body
    if kind == "get":
        from urllib.parse import quote

        job_id = quote(draw(_job_ids), safe="%")
        path = draw(
            st.sampled_from(
                [
                    "/v1/health",
                    "/v1/params",
                    f"/v1/jobs/{job_id}",
                    f"/v1/jobs/{job_id}/result",
                    f"/v1/jobs/{job_id}/preview",
                    f"/v1/jobs/{job_id}/preview?size={draw(_sizes)}",
                    f"/v1/jobs/{job_id}/finish",
                ]
            )
        )
        if path.endswith("/finish"):
            method = "POST" if draw(st.booleans()) else "GET"
        else:
            method = "DELETE" if path.count("/") == 3 and draw(st.booleans()) else "GET"
        return method, path, {}, b""
    method = draw(st.sampled_from(["PUT", "PATCH", "OPTIONS", "GET", "POST", "DELETE", "HEAD"]))
    path = draw(
        st.sampled_from(
            ["/", "/v1", "/v1/", "/v2/jobs", "/v1/jobs", "/v1/health", "/v1/jobs/", "/%ff"]
        )
    )
    return method, path, {}, draw(st.binary(max_size=50))


_ID = re.compile(r"^[0-9a-f]{32}$")


def check_answer(request: Request, status: int, content_type: str, data: bytes) -> str | None:
    """The id of an accepted job (or None); raises AssertionError if the answer breaks a rule."""
    method, path, _, _ = request
    assert status < 500, f"{method} {path} -> {status}: {data[:300]!r}"
    if status >= 400 and method != "HEAD":
        assert content_type.startswith("application/json"), (status, content_type, data[:200])
        body = json.loads(data)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        message = body["error"]["message"]
        assert isinstance(message, str) and message
        assert "Traceback" not in message and 'File "' not in message, message
        return None
    if method == "POST" and path == "/v1/jobs" and status == 202:
        job_id = json.loads(data)["id"]
        assert _ID.match(job_id), job_id
        return job_id
    return None
