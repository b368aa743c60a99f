"""PNG, written and read with the standard library only (GIMP's Python has no Pillow).

The encoder writes what the server reads; the decoder reads what the server writes (Pillow's
adaptive filters, 8 or 16 bits, grey/RGB with or without alpha) and refuses, before inflating,
anything larger than the picture it expects: a hostile server cannot make it allocate more.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from dataclasses import dataclass

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


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header, without decoding it."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 24:
        raise ValueError("not a PNG file (bad signature or no header)")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def max_png_bytes(width: int, height: int) -> int:
    """The most a PNG of a ``width`` x ``height`` picture can sensibly take: 16-bit RGBA stored
    uncompressed (zlib's worst case adds 5 bytes per 64 KiB block) plus a filter byte per row and
    room for ancillary chunks. A bound for reading a server's answer, not a size estimate."""
    raw = height * (1 + width * 8)
    return raw + raw // 8000 + 1024 * 1024
