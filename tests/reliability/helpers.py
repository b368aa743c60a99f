"""Shared by the reliability tests and bench/reliability_*.py: test images (each client's own
identity for the load test), percentiles, the plug-in's client library.

The real server in a subprocess is tests/live_server.py (LiveServer, multipart, job_form); the
fake engine whose phases can be held open is tests/fake_engine.py (FakeEngine.hold).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tests.api.helpers import png_bytes as png
from tests.live_server import import_nst_client

__all__ = ["import_nst_client", "png"]  # re-exported: the reliability tests import them here

REPO = Path(__file__).resolve().parents[2]


# --- images -----------------------------------------------------------------------------------


def gradient(width: int = 64, height: int = 48, mode: str = "RGB") -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x * y) % 256], axis=2
    ).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def painting(side: int = 64) -> bytes:
    y, x = np.mgrid[0:side, 0:side]
    stripes = (np.sin((x + y) / 4.0)[..., None] * [0.5, -0.5, 0.3] + 0.5) * 255
    return png(Image.fromarray(np.clip(stripes, 0, 255).astype(np.uint8)))


def identity_content(client: int) -> tuple[bytes, tuple[int, int], str]:
    """A content PNG that identifies ``client``: its own size and its own alpha pattern.

    The engine carries the alpha channel through untouched and keeps the size, so a result
    whose (size, alpha hash) is not its own client's was someone else's. Returns the PNG, the
    (width, height) and the SHA-256 of the alpha plane.
    """
    width, height = 64 + client, 48 + (client * 7) % 13
    rng = np.random.default_rng(client)
    rgba = np.asarray(gradient(width, height, "RGBA")).copy()
    rgba[..., 3] = rng.integers(0, 256, (height, width), dtype=np.uint8)
    return png(Image.fromarray(rgba, "RGBA")), (width, height), alpha_hash(rgba[..., 3])


def alpha_hash(alpha: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(alpha, dtype=np.uint8).tobytes()).hexdigest()


def result_identity(data: bytes) -> tuple[tuple[int, int], str]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGBA", image.mode
        return image.size, alpha_hash(np.asarray(image)[..., 3])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); what RELIABILITY.md reports."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, int(np.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
