"""Decoding uploads into float RGB(A) arrays and encoding results as PNG. No HTTP, no TensorFlow.

Every refusal is an :class:`ImageError` whose message is meant for the user and names the
upload (``what``: "content", "style" or "mask"). Decisions documented here:

- Formats: PNG, JPEG, WebP, TIFF, BMP and GIF only. Pillow can open many more (EPS even runs
  Ghostscript); an upload server should not.
- Size: the *declared* width x height is checked against ``max_pixels`` before a single pixel is
  decoded, so a decompression bomb (a tiny file declaring gigapixels) costs nothing. Pillow's own
  DecompressionBombWarning/Error are treated as refusals too.
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
import struct
import threading
import warnings
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

# warnings.catch_warnings() swaps process-wide state; serialise the (cheap, header-only) opens
# so concurrent request threads do not restore each other's filters.
_open_lock = threading.Lock()


class ImageError(ValueError):
    """An upload cannot be used as an image; the message is for the user and names the upload."""


class ImageTooLarge(ImageError):
    """An image declares more pixels than allowed (the API answers 413 rather than 400)."""


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


def decode_image(data: bytes, *, what: str, max_pixels: int) -> DecodedImage:
    """Decode an uploaded file; raise :class:`ImageError` (or ``ImageTooLarge``) if unusable."""
    if not data:
        raise ImageError(f"{what}: the file is empty")
    # Pillow must never pad a cut-off file; something else in the process setting this would
    # turn truncated uploads into grey-bottomed pictures, so insist.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    image = _open(data, what=what)
    try:
        width, height = image.size
        _check_size(width, height, what=what, max_pixels=max_pixels)
        if getattr(image, "is_animated", False):
            log.info("%s: animated %s, using its first frame", what, image.format)
        if image.format == "PNG" and _png_is_16bit_colour(data):
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
    with _open_lock, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data), formats=FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLarge(f"{what}: refused as a decompression bomb ({exc})") from None
        except Image.UnidentifiedImageError:
            raise ImageError(
                f"{what}: not an image that could be read (expected {_FORMAT_LIST})"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
            # e.g. a PNG header declaring zero width, or a header cut short
            raise ImageError(f"{what}: not a valid image ({exc})") from None


def _check_size(width: int, height: int, *, what: str, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{what}: the image has zero size ({width} x {height})")
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
            grey = np.clip(grey, 0.0, 1.0) if grey.max(initial=0.0) <= 1.0 else grey / 65535.0
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
