"""Decoding uploads into float RGB(A) arrays and encoding results as PNG. No HTTP, no TensorFlow.

Every refusal is an :class:`ImageError` whose message is meant for the user and names the
upload (``what``: "content", "style" or "mask"). Decisions documented here:

- Formats: PNG, JPEG, WebP, TIFF, BMP and GIF only. Pillow can open many more (EPS even runs
  Ghostscript); an upload server should not.
- Size: the *declared* width x height is checked against ``max_pixels`` before a single pixel is
  decoded, so a decompression bomb (a tiny file declaring gigapixels) costs nothing. Pillow's own
  DecompressionBombError is treated as a refusal too. No side may exceed 65535 px.
- Decode cost: before Pillow parses a file, its structure is walked here with a bounded number of
  steps, so the work a file can cause is bounded per byte and per pixel: a PNG's chunks, a GIF's
  blocks before its first frame and a JPEG's segments are counted (a flood of empty chunks is
  refused), a JPEG's scans are counted (each scan of a progressive JPEG is a pass over every
  pixel), a TIFF's strips or tiles are counted, and run-length encoded BMPs (decoded by Pillow in
  Python, pixel by pixel) are refused. ``inspect_image`` does only this and reads the header:
  the API calls it for each upload; ``decode_image`` (run by the job's worker) decodes.
  No lock is held while decoding.
- Truncation: the image is fully loaded with ``ImageFile.LOAD_TRUNCATED_IMAGES`` left False, so a
  cut-off PNG/JPEG is refused instead of silently padded with grey.
- Animated images (GIF, APNG, WebP): the first frame is used, as an image viewer shows it.
- Colour: greyscale, palette (transparency becomes alpha), LA, CMYK, YCbCr etc. become RGB(A).
  ICC profiles are not applied (inputs are treated as sRGB). EXIF orientation is applied, so a
  camera JPEG comes out the way it is displayed.
- 16 bits: Pillow reduces 16-bit RGB(A) PNGs to 8 bits, so those (GIMP exports them from
  high-bit-depth images) are decoded here with numpy; 16-bit greyscale goes through Pillow's
  ``I;16``. ``DecodedImage.bit_depth`` says 16 so the result can be written back at 16 bits.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import zlib
from dataclasses import dataclass
from os import PathLike

import numpy as np
from PIL import Image, ImageFile, ImageOps

log = logging.getLogger(__name__)

#: Formats accepted from clients (Pillow format ids).
FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
_FORMAT_LIST = "PNG, JPEG, WebP, TIFF, BMP or GIF"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Channels per PNG colour type (greyscale, RGB, -, -, grey+alpha, -, RGBA); palette is never 16-bit.
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}

#: Longest side accepted, in pixels (JPEG's own limit; beyond it PNG rows become decode bombs).
MAX_SIDE = 65535
#: Scans a JPEG may have: a progressive JPEG decodes every pixel once per scan (encoders write
#: about 10; a few hundred bytes of headers can declare thousands).
MAX_JPEG_SCANS = 32
#: Segments before a JPEG's first scan, and blocks before a GIF's first frame (Pillow parses
#: each in Python): real files have tens.
MAX_HEADER_BLOCKS = 10_000
#: Strips or tiles of a TIFF (Pillow builds a Python list of them when it opens the file).
MAX_TIFF_BLOCKS = 65_536
#: A PNG may have this many chunks plus one per 4 KB of file (encoders write 8-64 KB chunks).
_PNG_CHUNKS_BASE = 20_000
_PNG_BYTES_PER_CHUNK = 4096
_FILL_BYTES = re.compile(rb"\xff{2,}")


class ImageError(ValueError):
    """An upload cannot be used as an image; the message is for the user and names the upload."""


class ImageTooLarge(ImageError):
    """An image declares more pixels than allowed (the API answers 413 rather than 400)."""


@dataclass(frozen=True)
class ImageInfo:
    """What an upload's header says, before any pixel is decoded.

    ``channels``: 3 or 4 once decoded (4 when it has, or for a 16-bit PNG may have, alpha:
    an upper bound for memory estimates); ``bit_depth`` 8 or 16.
    """

    format: str
    width: int
    height: int
    channels: int
    bit_depth: int
    png16: bool = False  # decoded by this module's own 16-bit PNG reader

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.width, self.height

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded float32 array."""
        return self.pixels * self.channels * 4

    @property
    def decode_peak_bytes(self) -> int:
        """An upper bound of the memory decoding takes, the decoded array included."""
        if self.png16:
            h, w = self.height, self.width
            bpp = 8  # bytes per pixel of the file, at most (16-bit RGBA)
            inflated = h * (1 + w * bpp)
            n, diagonals = min(h, w), h + w + 1
            skewed = diagonals * (n + 1) * bpp * 3  # uint8 input and int16 working copy
            indices = 4 * 8 * self.pixels  # the pixel coordinates, int64
            return 2 * inflated + skewed + indices + self.pixels * (bpp + 2 * 16)
        # Pillow's own image (at most 4 bytes a pixel, twice with an EXIF rotation), its RGB(A)
        # conversion, libjpeg's coefficients for a progressive JPEG, the float32 array and the
        # temporary of the division that makes it.
        return self.pixels * (4 * 2 + 4 + 12 + 16 * 2)


@dataclass(frozen=True)
class DecodedImage:
    """``pixels``: float32 H x W x 3 (RGB) or 4 (RGBA), values in [0, 1].

    ``bit_depth`` is 8 or 16: the precision the file carried, so output can match it.
    """

    pixels: np.ndarray
    bit_depth: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def inspect_image(data: bytes, *, what: str, max_pixels: int) -> ImageInfo:
    """Check an upload without decoding its pixels: format, structure, declared size and
    decode cost; raise :class:`ImageError` (or ``ImageTooLarge``) if it cannot be used."""
    image = _open_checked(data, what=what, max_pixels=max_pixels)
    try:
        return _info(image, data)
    finally:
        image.close()


def decode_image(data: bytes, *, what: str, max_pixels: int) -> DecodedImage:
    """Decode an uploaded file; raise :class:`ImageError` (or ``ImageTooLarge``) if unusable."""
    image = _open_checked(data, what=what, max_pixels=max_pixels)
    try:
        if _info(image, data).png16:
            return DecodedImage(_decode_png16(data, what=what), 16)
        try:
            image.load()
            image = ImageOps.exif_transpose(image) or image
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"{what}: refused as a decompression bomb ({exc})") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
            raise ImageError(
                f"{what}: the {image.format} file is damaged or truncated ({exc})"
            ) from None
        _check_size(*image.size, what=what, max_pixels=max_pixels)
        return _to_float(image, what=what)
    finally:
        image.close()


def mask_from_image(decoded: DecodedImage) -> np.ndarray:
    """A mask as H x W float32 in [0, 1]: its luminance, times its alpha if it has one."""
    pixels = decoded.pixels
    grey = pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114
    if pixels.shape[2] == 4:
        grey = grey * pixels[..., 3]
    return np.ascontiguousarray(np.clip(grey, 0.0, 1.0), dtype=np.float32)


def _open_checked(data: bytes, *, what: str, max_pixels: int) -> Image.Image:
    """Walk the file's structure (bounded), then let Pillow read its header; sizes checked."""
    if not data:
        raise ImageError(f"{what}: the file is empty")
    # Pillow must never pad a cut-off file; something else in the process setting this would
    # turn truncated uploads into grey-bottomed pictures, so insist.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    declared = _walk_structure(data, what=what)
    if declared is not None:  # checked before Pillow parses anything
        _check_size(*declared, what=what, max_pixels=max_pixels)
    image = _open(data, what=what)
    try:
        _check_size(*image.size, what=what, max_pixels=max_pixels)
        if image.format == "BMP" and image.info.get("compression") in (1, 2):
            raise ImageError(
                f"{what}: run-length encoded BMP files are not accepted; save it as PNG"
            )
    except BaseException:
        image.close()
        raise
    return image


def _info(image: Image.Image, data: bytes) -> ImageInfo:
    png16 = image.format == "PNG" and _png_is_16bit_colour(data)
    mode = image.mode
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if png16:  # Pillow's mode says 8 bits; the file may carry alpha (or a tRNS key)
        has_alpha = True
    high = png16 or mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
    return ImageInfo(
        format=str(image.format),
        width=image.size[0],
        height=image.size[1],
        channels=4 if has_alpha else 3,
        bit_depth=16 if high else 8,
        png16=png16,
    )


def load_image_file(path: str | PathLike[str], *, max_pixels: int) -> DecodedImage:
    """Read and decode an image file (for the CLI); the message names the file."""
    with open(path, "rb") as fh:
        data = fh.read()
    return decode_image(data, what=str(path), max_pixels=max_pixels)


#: zlib level of the PNGs the server writes. Results usually go over loopback, where size is
#: free: at level 1 a 1024 x 768 result is 3% larger than at 6 and encodes in 0.15 s, not 0.45.
PNG_LEVEL = 1


def encode_png(pixels: np.ndarray, *, bit_depth: int = 8) -> bytes:
    """RGB or RGBA float array in [0, 1] (values outside are clipped) -> PNG bytes, 8 or 16 bit."""
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"expected an H x W x 3 or 4 array, got shape {pixels.shape}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    clipped = np.clip(np.nan_to_num(pixels.astype(np.float32, copy=False)), 0.0, 1.0)
    if bit_depth == 8:
        out = io.BytesIO()
        Image.fromarray(np.rint(clipped * 255.0).astype(np.uint8)).save(
            out, "PNG", compress_level=PNG_LEVEL
        )
        return out.getvalue()
    return _encode_png16(np.rint(clipped * 65535.0).astype(">u2"))


def thumbnail_png(pixels: np.ndarray, *, longest: int = 256) -> bytes:
    """A small 8-bit PNG of a float RGB(A) array, longer side at most ``longest``."""
    clipped = np.clip(np.nan_to_num(pixels.astype(np.float32, copy=False)), 0.0, 1.0)
    image = Image.fromarray(np.rint(clipped * 255.0).astype(np.uint8))
    image.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=PNG_LEVEL)
    return out.getvalue()


# --- decoding helpers ---------------------------------------------------------------------------


def _open(data: bytes, *, what: str) -> Image.Image:
    # Our own size check comes first and is stricter than Pillow's DecompressionBombWarning
    # threshold at the default max_pixels; no process-wide warning filter is touched here.
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{what}: refused as a decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(
            f"{what}: not an image that could be read (expected {_FORMAT_LIST})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        # e.g. a PNG header declaring zero width, or a header cut short
        raise ImageError(f"{what}: not a valid image ({exc})") from None


def _walk_structure(data: bytes, *, what: str) -> tuple[int, int] | None:
    """Walk the file's blocks with bounded work; (width, height) when the walk learnt them."""
    if data.startswith(_PNG_SIGNATURE):
        return _walk_png(data, what=what)
    if data.startswith(b"\xff\xd8"):
        return _walk_jpeg(data, what=what)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _walk_gif(data, what=what)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        _walk_tiff(data, what=what)
    return None


def _walk_png(data: bytes, *, what: str) -> tuple[int, int]:
    """Every chunk's length and the IEND at the end; the number of chunks is bounded."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError(f"{what}: the PNG file is damaged (no header)")
    width, height = struct.unpack(">II", data[16:24])
    limit = _PNG_CHUNKS_BASE + len(data) // _PNG_BYTES_PER_CHUNK
    pos, chunks = 8, 0
    while True:
        if pos + 12 > len(data):
            raise ImageError(f"{what}: the PNG file is truncated")
        length, kind = struct.unpack_from(">I4s", data, pos)
        pos += 12 + length
        chunks += 1
        if chunks > limit:
            raise ImageError(
                f"{what}: the PNG file holds over {limit} chunks, far more than its size needs "
                "(refused: decoding it would take very long); export it again"
            )
        if kind == b"IEND":
            break
    if pos > len(data):
        raise ImageError(f"{what}: the PNG file is truncated")
    return width, height


def _walk_jpeg(data: bytes, *, what: str) -> tuple[int, int]:
    """Segments up to the first scan (bounded), the size from the frame header, and the number
    of scans (each is a pass over every pixel)."""
    pos, segments, size = 2, 0, None
    while True:
        segments += 1
        if segments > MAX_HEADER_BLOCKS:
            raise ImageError(f"{what}: the JPEG file has over {MAX_HEADER_BLOCKS} header segments")
        fill = _FILL_BYTES.match(data, pos)
        if fill is not None:
            pos = fill.end() - 1  # 0xFF fill bytes before a marker
        if pos + 4 > len(data):
            raise ImageError(f"{what}: the JPEG file is truncated")
        if data[pos] != 0xFF:
            raise ImageError(f"{what}: the JPEG file is damaged (no marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker == 0xD9:
            raise ImageError(f"{what}: the JPEG file has no image data")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            raise ImageError(f"{what}: the JPEG file is damaged (bad segment length)")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 9 <= len(data):
            height, width = struct.unpack_from(">HH", data, pos + 5)
            size = (width, height)
        if marker == 0xDA:
            break
        pos += 2 + length
    if size is None:
        raise ImageError(f"{what}: the JPEG file is damaged (no frame header before its data)")
    # Inside entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so
    # this counts the scans' headers (and at worst a few bytes of other segments).
    scans = 1 + data.count(b"\xff\xda", pos + 2)
    if scans > MAX_JPEG_SCANS:
        raise ImageError(
            f"{what}: the JPEG file has {scans} scans (at most {MAX_JPEG_SCANS} are accepted: "
            "each is a pass over every pixel); save it again as a baseline or normal "
            "progressive JPEG"
        )
    if data.rfind(b"\xff\xd9", pos) < 0:
        raise ImageError(f"{what}: the JPEG file is truncated (no end marker)")
    return size


def _walk_gif(data: bytes, *, what: str) -> tuple[int, int]:
    """The blocks before the first frame, counted (Pillow reads each in Python)."""
    if len(data) < 13:
        raise ImageError(f"{what}: the GIF file is truncated")
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks = 0
    while True:
        if pos >= len(data):
            raise ImageError(f"{what}: the GIF file is truncated")
        kind = data[pos]
        if kind == 0x2C:  # the first image
            return width, height
        if kind != 0x21:
            raise ImageError(f"{what}: the GIF file has no image (or is damaged)")
        pos += 2  # introducer and label, then sub-blocks up to an empty one
        while True:
            if pos >= len(data):
                raise ImageError(f"{what}: the GIF file is truncated")
            blocks += 1
            if blocks > MAX_HEADER_BLOCKS:
                raise ImageError(
                    f"{what}: the GIF file has over {MAX_HEADER_BLOCKS} blocks before its image"
                )
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break


def _walk_tiff(data: bytes, *, what: str) -> None:
    """The first directory's strip or tile count (Pillow lists them in Python when it opens)."""
    try:
        order = "<" if data[:2] == b"II" else ">"
        big = data[2:4] in (b"+\x00", b"\x00+")
        if big:
            (offset,) = struct.unpack_from(order + "Q", data, 8)
            (entries,) = struct.unpack_from(order + "Q", data, offset)
            entry_format, entry_size, first = order + "HHQ", 20, offset + 8
        else:
            (offset,) = struct.unpack_from(order + "I", data, 4)
            (entries,) = struct.unpack_from(order + "H", data, offset)
            entry_format, entry_size, first = order + "HHI", 12, offset + 2
        if entries > MAX_HEADER_BLOCKS:
            raise ImageError(f"{what}: the TIFF file has {entries} tags in its first directory")
        for i in range(entries):
            tag, _, count = struct.unpack_from(entry_format, data, first + i * entry_size)
            if tag in (273, 279, 324, 325) and count > MAX_TIFF_BLOCKS:
                raise ImageError(
                    f"{what}: the TIFF file is split into {count} strips or tiles (at most "
                    f"{MAX_TIFF_BLOCKS} are accepted); save it again"
                )
    except struct.error:
        raise ImageError(f"{what}: the TIFF file is truncated or damaged") from None


def _check_size(width: int, height: int, *, what: str, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{what}: the image has zero size ({width} x {height})")
    if max(width, height) > MAX_SIDE:
        raise ImageTooLarge(
            f"{what}: {width} x {height} px has a side over {MAX_SIDE} px, which this server "
            "does not accept; scale or crop it"
        )
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{what}: {width} x {height} is {width * height / 1e6:.1f} megapixels, over this "
            f"server's limit of {max_pixels / 1e6:g} megapixels (max_pixels); scale it down"
        )


def _to_float(image: Image.Image, *, what: str) -> DecodedImage:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Single-channel high-precision greyscale: Pillow's convert("RGB") would clip to 8 bits.
        grey = np.asarray(image).astype(np.float32)
        if mode == "F":
            _check_unit_floats(grey, what=what)
        else:
            grey = np.clip(grey / 65535.0, 0.0, 1.0)
        return DecodedImage(np.repeat(grey[:, :, None], 3, axis=2), 16)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    try:
        converted = image.convert("RGBA" if has_alpha else "RGB")
    except (OSError, ValueError) as exc:
        raise ImageError(f"{what}: cannot convert a {mode} image to RGB ({exc})") from None
    pixels = np.asarray(converted, dtype=np.float32) / 255.0
    return DecodedImage(pixels, 8)


def _check_unit_floats(values: np.ndarray, *, what: str) -> None:
    """Floating-point samples must be finite and within 0..1 (no silent black or garbage)."""
    if not np.isfinite(values).all():
        raise ImageError(
            f"{what}: the floating-point image holds NaN or infinite values; export it with "
            "values between 0 and 1 (or as 8/16-bit)"
        )
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if low < 0.0 or high > 1.0:
        raise ImageError(
            f"{what}: the floating-point image has values from {low:g} to {high:g}; they must "
            "be between 0 and 1 (export it clipped, or as 8/16-bit)"
        )


def _png_is_16bit_colour(data: bytes) -> bool:
    """True for non-interlaced 16-bit PNGs, which Pillow would reduce to 8 bits."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return False
    bit_depth, colour_type, interlace = data[24], data[25], data[28]
    if bit_depth == 16 and colour_type in _PNG_CHANNELS and interlace:
        log.info("interlaced 16-bit PNG: decoded at 8-bit precision")
    return bit_depth == 16 and colour_type in _PNG_CHANNELS and not interlace


def _decode_png16(data: bytes, *, what: str) -> np.ndarray:
    """Decode a non-interlaced 16-bit PNG (size already checked) to float32 RGB(A)."""
    width, height, _, colour_type = struct.unpack(">IIBB", data[16:26])
    channels = _PNG_CHANNELS[colour_type]
    bpp = 2 * channels
    row_bytes = 1 + width * bpp
    expected = row_bytes * height
    inflater = zlib.decompressobj()
    parts: list[bytes] = []
    got = 0
    trns: bytes | None = None
    pos, ended = 8, False
    try:
        while pos + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[pos : pos + 8])
            body = data[pos + 8 : pos + 8 + length]
            if len(body) < length or pos + 12 + length > len(data):
                break  # cut off mid-chunk
            crc = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
            if zlib.crc32(kind + body) != crc:
                raise ImageError(f"{what}: the PNG file is damaged (bad {kind!r} checksum)")
            if kind == b"IDAT":
                # max_length bounds memory even if the stream inflates beyond the declared size
                chunk = inflater.decompress(body, max(expected - got, 0) + 1)
                got += len(chunk)
                parts.append(chunk)
                if got > expected:
                    raise ImageError(f"{what}: the PNG file holds more data than its size says")
            elif kind == b"tRNS":
                trns = body
            elif kind == b"IEND":
                ended = True
                break
            pos += 12 + length
    except zlib.error as exc:
        raise ImageError(f"{what}: the PNG file is damaged ({exc})") from None
    if got < expected or not inflater.eof or not ended:
        raise ImageError(f"{what}: the PNG file is truncated")
    raw = np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(height, row_bytes)
    filters = raw[:, 0]
    if filters.max(initial=0) > 4:
        raise ImageError(f"{what}: the PNG file is damaged (unknown row filter)")
    rows = _unfilter(filters, raw[:, 1:].reshape(height, width, bpp))
    samples = rows.view(">u2").reshape(height, width, channels)
    values = samples.astype(np.float32) / 65535.0
    if channels == 1:
        values = np.repeat(values, 3, axis=2)
    elif channels == 2:
        values = np.concatenate([np.repeat(values[:, :, :1], 3, axis=2), values[:, :, 1:]], 2)
    if trns is not None and channels in (1, 3) and len(trns) == 2 * channels:
        # tRNS names one colour that is fully transparent
        key = np.frombuffer(trns, dtype=">u2")
        alpha = (~np.all(samples == key, axis=2)).astype(np.float32)
        values = np.concatenate([values, alpha[:, :, None]], axis=2)
    return np.ascontiguousarray(values, dtype=np.float32)


def _unfilter(filters: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Undo PNG row filters (None/Sub/Up/Average/Paeth) for H x W x bpp bytes.

    Sub, Average and Paeth depend on the pixel to the left, so a row cannot be vectorised; but
    every pixel depends only on its left, upper and upper-left neighbours, so all pixels on one
    anti-diagonal (x + y = d) can be done at once. The image is stored skewed, S[d, i + 1] for
    pixel (y, x) with i the coordinate along the shorter side, so each diagonal is a contiguous
    slice: H + W - 1 vectorised steps instead of H * W scalar ones. Slots of S that are not pixels
    stay zero, which is exactly the PNG rule for neighbours outside the image.
    """
    height, width, bpp = data.shape
    if not np.isin(filters, (3, 4)).any():
        # No Average/Paeth rows (e.g. our own encoder's output): row by row is enough.
        out = np.empty_like(data)
        above = np.zeros((width, bpp), dtype=np.uint8)
        for y in range(height):
            row, kind = data[y], filters[y]
            if kind == 1:  # Sub: running sum along the row; uint8 wraps modulo 256
                row = np.cumsum(row, axis=0, dtype=np.uint8)
            elif kind == 2:  # Up
                row = row + above
            out[y] = above = row
        return out
    along_x = width <= height  # index diagonals by the shorter side: less memory
    n = width if along_x else height
    ys, xs = np.indices((height, width))
    diag, idx = ys + xs, (xs if along_x else ys)
    skew_in = np.zeros((height + width - 1, n + 1, bpp), dtype=np.uint8)
    skew_in[diag, idx + 1] = data
    skew = np.zeros((height + width + 1, n + 1, bpp), dtype=np.int16)  # two zero diagonals first
    ftype = filters.astype(np.int16)
    for d in range(height + width - 1):
        if along_x:
            lo, hi = max(0, d - height + 1), min(d, width - 1) + 1
            ft = ftype[d - hi + 1 : d - lo + 1][::-1]  # y = d - x, decreasing with x
        else:
            lo, hi = max(0, d - width + 1), min(d, height - 1) + 1
            ft = ftype[lo:hi]
        prev, prev2 = skew[d + 1], skew[d]
        shift0, shift1 = prev[lo:hi], prev[lo + 1 : hi + 1]  # coordinate - 1, same coordinate
        left, up = (shift0, shift1) if along_x else (shift1, shift0)
        upleft = prev2[lo:hi]
        p = left + up - upleft
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        pred = np.choose(ft[:, None], (0, left, up, (left + up) >> 1, paeth))
        skew[d + 2, lo + 1 : hi + 1] = (skew_in[d, lo + 1 : hi + 1] + pred) & 0xFF
    return np.ascontiguousarray(skew[diag + 2, idx + 1].astype(np.uint8))


def _encode_png16(samples: np.ndarray) -> bytes:
    """Write big-endian uint16 H x W x C samples as a 16-bit PNG (Pillow cannot write RGB16)."""
    height, width, channels = samples.shape
    colour_type = {3: 2, 4: 6}[channels]
    rows = samples.reshape(height, width * channels).view(np.uint8)
    # "Up" filter: cheap to vectorise and helps deflate on smooth pictures.
    up = rows.copy()
    up[1:] = rows[1:] - rows[:-1]  # uint8 arithmetic wraps modulo 256, as PNG requires
    filtered = np.concatenate([np.full((height, 1), 2, dtype=np.uint8), up], axis=1)
    filtered[0, 0] = 0  # the first row has nothing above it; use None
    filtered[0, 1:] = rows[0]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"".join(
        [
            _PNG_SIGNATURE,
            _chunk(b"IHDR", ihdr),
            _chunk(b"IDAT", zlib.compress(filtered.tobytes(), PNG_LEVEL)),
            _chunk(b"IEND", b""),
        ]
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
