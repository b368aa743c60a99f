"""Test images for the images/jobs/API layers: PNGs made with Pillow, and PNGs built by hand for
headers Pillow refuses to write."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


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
