"""Fixtures for the images/jobs/API layers: a fast fake engine, apps built on it, test images.

The fake is for one-layer unit tests only; tests/api/test_server_live.py proves the whole
server on the real engine.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
from PIL import Image

from nst_server.api import create_app, get_queue
from nst_server.engine import Cancelled, EngineError, Progress
from nst_server.params import StyleParams


class FakeEngine:
    """Same interface as StyleEngine; returns the content with its red channel inverted.

    ``mode``: "ok", "slow" (``step_s`` per step, for cancellation tests), "engine_error",
    "value_error", "crash" (a bug: RuntimeError), "oom" (TF's ResourceExhaustedError),
    "memory_error".
    ``calls`` records what stylize received (``mask`` included).
    """

    device = "cpu"
    weights_description = "fake weights (tests)"

    def __init__(self, *, mode: str = "ok", step_s: float = 0.0, load_s: float = 0.0) -> None:
        self.mode = mode
        self.step_s = step_s
        self.load_s = load_s
        self.loaded = False
        self.loads = 0
        self.unloads = 0
        self.calls: list[dict] = []
        self.started = threading.Event()  # set when a stylize call begins
        self.steps_done = 0

    def load(self) -> None:
        if not self.loaded:
            time.sleep(self.load_s)
            self.loads += 1
            self.loaded = True

    def unload(self) -> None:
        self.unloads += 1
        self.loaded = False

    def stylize(
        self,
        content: np.ndarray,
        styles: Sequence[np.ndarray],
        params: StyleParams,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        mask: np.ndarray | None = None,
        init_image: np.ndarray | None = None,
    ) -> np.ndarray:
        assert self.loaded, "the queue must load the engine before a job"
        self.calls.append(
            {
                "content": content,
                "styles": list(styles),
                "params": params,
                "mask": mask,
                "init_image": init_image,
            }
        )
        self.started.set()
        notify = on_progress or (lambda event: None)
        h, w = content.shape[:2]
        notify(Progress("preparing", 0, params.iterations, 0.0, size=(w, h)))
        if self.mode == "engine_error":
            raise EngineError("out of memory at 64x64 px: try a smaller max_size")
        if self.mode == "value_error":
            raise ValueError("content: image must be H x W x 3")
        if self.mode == "oom":  # what TensorFlow raises when an allocation fails
            import tensorflow as tf

            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        if self.mode == "memory_error":
            raise MemoryError
        if self.mode == "crash":
            raise RuntimeError("secret internal detail /home/user/.ssh")
        steps = params.iterations
        for step in range(1, steps + 1):
            if self.mode == "slow":
                time.sleep(self.step_s)
            self.steps_done += 1
            preview = np.full((h, w, 3), step / steps, dtype=np.float32)
            notify(
                Progress(
                    "optimising",
                    step,
                    steps,
                    0.01 * step,
                    0.01 * (steps - step),
                    {"total": 1.0 / step, "content": 0.5, "style": 0.5, "tv": 0.0},
                    size=(w, h),
                    preview=preview,
                )
            )
        out = content.copy()
        out[..., 0] = 1.0 - out[..., 0]
        return out


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


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_app(fake_engine: FakeEngine) -> Iterator[Callable[..., object]]:
    """Build apps on a fake engine; their worker threads are stopped after the test."""
    apps = []

    def make(engine: FakeEngine | None = None, **config: object):
        app = create_app({"TESTING": True, "ENGINE": engine or fake_engine, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        get_queue(app).close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> object:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")


__all__ = ["Cancelled", "FakeEngine", "bomb_png", "png_bytes", "raw_png", "rgb_image", "wait_for"]
