"""Test images for the images/jobs/API layers (PNGs made with Pillow, and PNGs built by hand for
headers Pillow refuses to write); in-process apps with a token, and job inputs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from nst_server.api import create_app, job_json
from nst_server.auth import Authenticator
from nst_server.images import encode_png, inspect_image
from nst_server.jobs import JobInputs, Upload
from nst_server.settings import ServerSettings
from tests.fake_engine import wait_for


def png_bytes(image: Image.Image, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **save)
    return out.getvalue()


def rgb_image(width: int = 40, height: int = 32, mode: str = "RGB") -> Image.Image:
    """A gradient image in ``mode`` (converted from RGB)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [
            x * 255 // max(1, width - 1),
            y * 255 // max(1, height - 1),
            (x + y) * 255 // max(1, width + height - 2),
        ],
        axis=2,
    ).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(
    width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2, idat: bytes | None = None
) -> bytes:
    """A PNG built by hand (for headers Pillow refuses to write: zero or huge sizes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat if idat is not None else zlib.compress(b"\x00"))
        + png_chunk(b"IEND", b"")
    )


def bomb_png(side: int = 20_000) -> bytes:
    """A decompression bomb: ~50 KB of file declaring ``side`` x ``side`` 1-bit pixels."""
    row = b"\x00" * (1 + (side + 7) // 8)
    deflate = zlib.compressobj(9)
    parts = [deflate.compress(row) for _ in range(side)]
    parts.append(deflate.flush())
    return raw_png(side, side, bit_depth=1, colour_type=0, idat=b"".join(parts))


# --- apps and jobs for in-process tests ----------------------------------------------------------

#: The token of every in-process test app (its test client sends it unless told otherwise).
TEST_TOKEN = "test-token-0123456789abcdefghijklmnopqrstuvwxyz"


class TokenClient(FlaskClient):
    """A Flask test client that sends TEST_TOKEN, and a loopback Host, by default."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TEST_TOKEN}"
        self.environ_base["HTTP_HOST"] = "127.0.0.1:8765"


def make_test_app(engine: object, *, start_worker: bool = True, **settings: object) -> Flask:
    """``create_app`` on ``engine`` with ``settings`` (ServerSettings fields) and TEST_TOKEN;
    its ``test_client()`` sends the token."""
    app = create_app(
        ServerSettings(**settings),
        engine=engine,
        authenticator=Authenticator(TEST_TOKEN),
        start_worker=start_worker,
    )
    app.test_client_class = TokenClient
    return app


def serving_client(app: Flask, timeout: float = 30.0) -> FlaskClient:
    """``app``'s test client once its worker has built the network (``/v1/health`` says "ok"):
    the worker thread builds it in the background, so the first requests may see "loading"."""
    client = app.test_client()
    wait_for(
        lambda: client.get("/v1/health").get_json()["status"] == "ok", timeout, "the worker ready"
    )
    return client


def job_inputs(
    content: np.ndarray,
    styles: list[np.ndarray],
    *,
    mask: np.ndarray | None = None,
    bit_depth: int = 8,
) -> JobInputs:
    """JobInputs of float arrays in [0, 1], PNG-encoded as a client would upload them."""

    def upload(pixels: np.ndarray, what: str, depth: int = 8) -> Upload:
        data = encode_png(pixels, bit_depth=depth)
        return Upload(data, inspect_image(data, what=what, max_pixels=10**8), what)

    mask_upload = None
    if mask is not None:
        mask_upload = upload(np.repeat(mask[..., None], 3, axis=2), "mask")
    return JobInputs(
        upload(content, "content", bit_depth),
        tuple(upload(s, "style") for s in styles),
        mask_upload,
    )


def as_json(snapshot):  # noqa: ANN001, ANN201 - a JobSnapshot or None -> what clients read
    """A queue's snapshot as GET /v1/jobs/<id> answers it (None stays None)."""
    return None if snapshot is None else job_json(snapshot)
