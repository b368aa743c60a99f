"""Hostile and unusual image files, made in code: what each must give.

``hostile_images()`` maps a name to ``(file bytes, expectation)``; the expectation is
``("ok", mode)`` for files that must be converted and give a result of the content's size in
``mode`` ("RGB" or "RGBA"), or ``(status, code)`` for files that must be refused with that
4xx and error code.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.reliability.helpers import gradient, png

W, H = 40, 32


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, idat: bytes, bit_depth: int = 8, colour: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def bomb_png(side: int = 20_000) -> bytes:
    """A real decompression bomb: ~50 KB declaring side x side 1-bit pixels, all there."""
    row = b"\x00" * (1 + (side + 7) // 8)
    deflate = zlib.compressobj(9)
    parts = [deflate.compress(row) for _ in range(side)] + [deflate.flush()]
    return raw_png(side, side, b"".join(parts), bit_depth=1, colour=0)


def zlib_bomb_png(bit_depth: int = 8) -> bytes:
    """A small declared size (64x64) whose IDAT inflates to ~100 MB: more data than it says."""
    deflate = zlib.compressobj(9)
    block = b"\x00" * (1 << 20)
    data = b"".join(deflate.compress(block) for _ in range(100)) + deflate.flush()
    return raw_png(64, 64, data, bit_depth=bit_depth, colour=2)


def huge_jpeg() -> bytes:
    """A valid small JPEG whose SOF header is patched to declare 65000 x 65000."""
    out = io.BytesIO()
    gradient(W, H).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def huge_gif() -> bytes:
    out = io.BytesIO()
    gradient(W, H).convert("P").save(out, "GIF")
    data = bytearray(out.getvalue())
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    return bytes(data)


def _save(image: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kw)
    return out.getvalue()


def animated(fmt: str) -> bytes:
    frames = [gradient(W, H).rotate(i * 90) for i in range(3)]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def png16(channels: int) -> bytes:
    from nst_server.images import encode_png

    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    planes = [x / W, y / H, (x + y) / (W + H), np.clip(x / 20, 0, 1)][:channels]
    return encode_png(np.stack(planes, axis=2), bit_depth=16)


def float_tiff(odd: float | None = None) -> bytes:
    """A 32-bit float TIFF with values in 0..1; ``odd`` written into one pixel."""
    values = np.asarray(gradient(W, H, "L"), np.float32) / 255.0
    if odd is not None:
        values[3, 5] = odd
    return _save(Image.fromarray(values, "F"), "TIFF")


def hostile_images(small: bool = False) -> dict[str, tuple[bytes, tuple[object, str]]]:
    """Name -> (bytes, expectation). ``small`` leaves out the ~100 KB zlib bombs (fuzzing)."""
    good_png = png(gradient(W, H))
    good_jpeg = _save(gradient(W, H), "JPEG")
    palette_t = gradient(W, H).convert("P")
    palette_t.info["transparency"] = 0
    cases: dict[str, tuple[bytes, tuple[object, str]]] = {
        # refused
        "bomb 20000x20000 1-bit": (bomb_png(), (413, "too_large")),
        "IHDR declares 2^31-1 square": (raw_png(2**31 - 1, 2**31 - 1, b""), (413, "too_large")),
        "IHDR declares 60000x60000": (raw_png(60_000, 60_000, b"x"), (413, "too_large")),
        "IHDR zero width": (raw_png(0, 16, zlib.compress(b"\x00")), (400, "bad_image")),
        "JPEG declares 65000x65000": (huge_jpeg(), (413, "too_large")),
        "GIF declares 65535x65535": (huge_gif(), (413, "too_large")),
        "PNG cut after header": (good_png[:40], (400, "bad_image")),
        "PNG cut mid-IDAT": (good_png[: len(good_png) * 2 // 3], (400, "bad_image")),
        "PNG bad CRC": (good_png[:30] + b"\x00" + good_png[31:], (400, "bad_image")),
        "JPEG cut in half": (good_jpeg[: len(good_jpeg) // 2], (400, "bad_image")),
        "JPEG header only": (good_jpeg[:20], (400, "bad_image")),
        "16-bit PNG cut": (png16(3)[:-30], (400, "bad_image")),
        "not an image": (b"GIF89a but not really" * 3, (400, "bad_image")),
        "SVG": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9"/>', (400, "bad_image")),
        "EPS": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n", (400, "bad_image")),
        "empty": (b"", (400, "bad_image")),
        # converted
        "animated GIF": (animated("GIF"), ("ok", "RGB")),
        "animated PNG": (animated("PNG"), ("ok", "RGB")),
        "animated WebP": (animated("WEBP"), ("ok", "RGB")),
        "CMYK JPEG": (_save(gradient(W, H, "CMYK"), "JPEG"), ("ok", "RGB")),
        "CMYK TIFF": (_save(gradient(W, H, "CMYK"), "TIFF"), ("ok", "RGB")),
        "16-bit RGB PNG": (png16(3), ("ok", "RGB")),
        "16-bit RGBA PNG": (png16(4), ("ok", "RGBA")),
        "16-bit grey PNG": (png(gradient(W, H, "L").convert("I;16")), ("ok", "RGB")),
        "palette PNG": (png(gradient(W, H).convert("P")), ("ok", "RGB")),
        "palette PNG with transparency": (png(palette_t), ("ok", "RGBA")),
        "LA PNG": (png(gradient(W, H, "LA")), ("ok", "RGBA")),
        "L PNG": (png(gradient(W, H, "L")), ("ok", "RGB")),
        "1-bit PNG": (png(gradient(W, H, "1")), ("ok", "RGB")),
        "float TIFF 0..1": (float_tiff(), ("ok", "RGB")),
        "float TIFF with NaN": (float_tiff(float("nan")), (400, "bad_image")),
        "float TIFF with infinity": (float_tiff(float("inf")), (400, "bad_image")),
        "float TIFF above 1": (float_tiff(255.0), (400, "bad_image")),
        "BMP": (_save(gradient(W, H), "BMP"), ("ok", "RGB")),
    }
    if not small:
        # Pillow stops inflating at the declared size: the excess is never decompressed
        cases["zlib bomb in a 64x64 PNG"] = (zlib_bomb_png(8), ("ok", "RGB"))
        cases["zlib bomb in a 64x64 16-bit PNG"] = (zlib_bomb_png(16), (400, "bad_image"))
    return cases


# --- decoder CPU bombs: small files whose decoding would take seconds to minutes -----------------


def thin_png16(width: int = 4_000_000) -> bytes:
    """A 16-bit RGB PNG one pixel high and ``width`` wide, Paeth-filtered (decoded pixel by
    pixel along its length by a wavefront decoder)."""
    row = b"\x04" + b"\x00" * (width * 6)
    ihdr = struct.pack(">IIBBBBB", width, 1, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(row, 9))
        + _chunk(b"IEND", b"")
    )


def many_chunks_png(chunks: int = 600_000) -> bytes:
    """A valid small PNG with ``chunks`` empty ancillary chunks before its image data (Pillow
    reads each one in Python)."""
    good = png(gradient(W, H))
    empty = _chunk(b"teSt", b"")
    ihdr_end = 8 + 25
    return good[:ihdr_end] + empty * chunks + good[ihdr_end:]


def many_scans_jpeg(scans: int = 2000, side: int = 2048) -> bytes:
    """A progressive JPEG of one colour whose last scan (a few bytes: all-zero refinements) is
    repeated ``scans`` times: each is a pass over every block of the picture."""
    data = _save(Image.new("RGB", (side, side), (90, 140, 200)), "JPEG", progressive=True)
    last = data.rfind(b"\xff\xda")
    scan = data[last:-2]  # the last scan's header and data, up to EOI
    return data[:-2] + scan * scans + b"\xff\xd9"
