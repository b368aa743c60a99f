"""nst_server.images: every kind of upload is converted or refused with a message naming it."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from nst_server.images import (
    DecodedImage,
    ImageError,
    ImageTooLarge,
    _unfilter,
    decode_image,
    encode_png,
    load_image_file,
    thumbnail_png,
)
from tests.api.helpers import bomb_png, png_bytes, png_chunk, raw_png, rgb_image

MP = 1_000_000


def decode(data: bytes, max_pixels: int = MP) -> DecodedImage:
    return decode_image(data, what="style", max_pixels=max_pixels)


@functools.cache
def _bomb() -> bytes:
    return bomb_png()


# --- conversions ------------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly_at_8_bits() -> None:
    image = rgb_image(40, 32)
    decoded = decode(png_bytes(image))
    assert decoded.bit_depth == 8
    assert decoded.pixels.dtype == np.float32 and decoded.pixels.shape == (32, 40, 3)
    assert decoded.size == (40, 32)
    np.testing.assert_array_equal(np.rint(decoded.pixels * 255).astype(np.uint8), np.asarray(image))


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr"])
def test_modes_without_alpha_become_rgb(mode: str) -> None:
    image = rgb_image(24, 20, mode)
    fmt = "JPEG" if mode in ("CMYK", "YCbCr") else "PNG"
    if mode == "CMYK":
        fmt = "TIFF"  # lossless, so the conversion can be checked exactly
    buf = io.BytesIO()
    image.save(buf, fmt)
    decoded = decode(buf.getvalue())
    assert decoded.pixels.shape == (20, 24, 3)
    expected = np.asarray(image.convert("RGB"), np.float32) / 255
    tolerance = 0.08 if fmt == "JPEG" else 1e-6
    np.testing.assert_allclose(decoded.pixels, expected, atol=tolerance)


def test_greyscale_is_replicated_into_three_equal_channels() -> None:
    decoded = decode(png_bytes(rgb_image(16, 16, "L")))
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 1])
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 2])
    assert decoded.pixels.max() > 0.9  # not all black: the values came through


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_kept(mode: str) -> None:
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.linspace(0, 255, 12).astype(np.uint8)[None, :]
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    decoded = decode(png_bytes(image))
    assert decoded.pixels.shape == (10, 12, 4)
    np.testing.assert_allclose(
        decoded.pixels[..., 3], np.asarray(image.convert("RGBA"))[..., 3] / 255, atol=1e-6
    )


def test_palette_with_transparent_index_gets_alpha() -> None:
    image = Image.new("P", (8, 6), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(0, (0, 0, 4, 6))
    decoded = decode(png_bytes(image, transparency=0))
    assert decoded.pixels.shape == (6, 8, 4)
    assert np.all(decoded.pixels[:, :4, 3] == 0) and np.all(decoded.pixels[:, 4:, 3] == 1)
    np.testing.assert_allclose(decoded.pixels[0, 5, :3], [0, 0, 1])


def _png16(samples: np.ndarray, colour_type: int, filters: list[int]) -> bytes:
    """Encode big-endian uint16 samples with the given per-row filter types (reference code)."""
    height = samples.shape[0]
    rows = [samples[y].astype(">u2").tobytes() for y in range(height)]
    bpp = 2 * (samples.shape[2] if samples.ndim == 3 else 1)
    out = bytearray()
    for y, row in enumerate(rows):
        above = rows[y - 1] if y else bytes(len(row))
        out.append(filters[y])
        for i, value in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = above[i]
            c = above[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            paeth = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out.append((value - [0, a, b, (a + b) // 2, paeth][filters[y]]) & 0xFF)
    height, width = samples.shape[:2]
    return raw_png(
        width, height, bit_depth=16, colour_type=colour_type, idat=zlib.compress(bytes(out))
    )


@pytest.mark.parametrize(("channels", "colour_type"), [(3, 2), (4, 6), (1, 0), (2, 4)])
def test_16_bit_png_keeps_16_bit_precision_with_every_row_filter(
    channels: int, colour_type: int
) -> None:
    rng = np.random.default_rng(channels)
    samples = rng.integers(0, 65536, (7, 9, channels)).astype(np.uint16)
    samples[2] = samples[1]  # some smooth rows too
    data = _png16(samples, colour_type, filters=[0, 1, 2, 3, 4, 4, 3])
    decoded = decode(data)
    assert decoded.bit_depth == 16
    values = samples.astype(np.float32) / 65535
    if channels == 1:
        values = np.repeat(values, 3, axis=2)
    elif channels == 2:
        values = np.concatenate([np.repeat(values[..., :1], 3, axis=2), values[..., 1:]], 2)
    # atol far below one 16-bit step (1.5e-5): every sample came through exactly
    np.testing.assert_allclose(decoded.pixels, values, atol=1e-7)


def test_unfilter_wavefront_matches_row_by_row_on_wide_and_tall_images() -> None:
    rng = np.random.default_rng(1)
    for shape in ((5, 17, 6), (17, 5, 8)):
        samples = rng.integers(0, 65536, (shape[0], shape[1], shape[2] // 2)).astype(np.uint16)
        colour = {3: 2, 4: 6}[shape[2] // 2]
        filters = [4, 3, 1, 2, 0] * 4
        data = _png16(samples, colour, filters[: shape[0]])
        decoded = decode(data)
        np.testing.assert_allclose(decoded.pixels, samples / 65535, atol=1e-7)
    assert _unfilter(np.zeros(2, np.uint8), np.ones((2, 3, 2), np.uint8)).sum() == 12


def test_16_bit_greyscale_via_pillow_keeps_precision() -> None:
    grey = np.arange(0, 65536, 257 // 2, dtype=np.uint16)[:480].reshape(20, 24)
    image = Image.fromarray(grey)  # uint16 -> mode I;16
    buf = io.BytesIO()
    image.save(buf, "TIFF")
    decoded = decode(buf.getvalue())
    assert decoded.bit_depth == 16
    np.testing.assert_allclose(decoded.pixels[..., 1], grey / 65535, atol=1e-7)


def test_encode_png_16_bit_round_trips() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((13, 21, 4)).astype(np.float32)
    data = encode_png(pixels, bit_depth=16)
    assert data[24] == 16  # IHDR bit depth
    decoded = decode(data)
    assert decoded.bit_depth == 16
    np.testing.assert_allclose(decoded.pixels, pixels, atol=1 / 65535)


def test_encode_png_8_bit_clips_and_keeps_shape() -> None:
    pixels = np.array([[[-1.0, 0.5, 2.0]]], np.float32).repeat(3, 0).repeat(5, 1)
    with Image.open(io.BytesIO(encode_png(pixels))) as image:
        assert image.mode == "RGB" and image.size == (5, 3)
        assert image.getpixel((0, 0)) == (0, 128, 255)
    with pytest.raises(ValueError, match="H x W x 3 or 4"):
        encode_png(np.zeros((4, 4), np.float32))


def test_thumbnail_fits_in_256() -> None:
    with Image.open(io.BytesIO(thumbnail_png(np.zeros((600, 300, 3), np.float32)))) as image:
        assert image.size == (128, 256)


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (10, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = decode(buf.getvalue())
    assert decoded.pixels.shape == (8, 10, 3)
    np.testing.assert_allclose(decoded.pixels[0, 0], [1, 0, 0], atol=0.02)


def test_exif_orientation_is_applied() -> None:
    image = rgb_image(30, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    assert decode(buf.getvalue()).size == (20, 30)


def test_load_image_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(rgb_image(8, 8)))
    assert load_image_file(path, max_pixels=MP).size == (8, 8)
    path.write_bytes(b"hello")
    with pytest.raises(ImageError, match="photo.png"):
        load_image_file(path, max_pixels=MP)


# --- refusals ---------------------------------------------------------------------------------


def test_not_an_image() -> None:
    with pytest.raises(ImageError, match=r"^style: not an image .*PNG, JPEG"):
        decode(b"GIF? no, this is a text file\n" * 10)
    with pytest.raises(ImageError, match="style: the file is empty"):
        decode(b"")


def test_formats_outside_the_list_are_refused() -> None:
    buf = io.BytesIO()
    rgb_image(8, 8).save(buf, "PPM")  # Pillow reads PPM, but it is not on our list
    with pytest.raises(ImageError, match="not an image"):
        decode(buf.getvalue())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused(fmt: str) -> None:
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, fmt)
    data = buf.getvalue()
    with pytest.raises(ImageError, match="^style: .*(truncated|damaged|not a valid)"):
        decode(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_16_bit_png_is_refused() -> None:
    data = encode_png(np.random.default_rng(0).random((40, 40, 3)), bit_depth=16)
    with pytest.raises(ImageError, match="truncated"):
        decode(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        decode(data[:-12])  # IEND missing
    corrupted = bytearray(data)
    corrupted[60] ^= 0xFF  # inside IDAT: the checksum no longer matches
    with pytest.raises(ImageError, match="damaged"):
        decode(bytes(corrupted))


def test_zero_size_is_refused() -> None:
    with pytest.raises(ImageError, match="style: "):
        decode(raw_png(0, 10))


def test_declared_size_over_the_limit_is_refused_before_decoding() -> None:
    # 5000 x 5000 declared, with almost no data: decoding would fail; the size check comes first.
    with pytest.raises(ImageTooLarge, match=r"5000 x 5000 is 25.0 megapixels.*limit of 1 mega"):
        decode(raw_png(5000, 5000))


def test_decompression_bomb_is_refused_cheaply() -> None:
    data = _bomb()
    assert len(data) < 100_000  # tiny file, 400 megapixels declared
    with pytest.raises(ImageTooLarge, match="style: .*(bomb|megapixels)"):
        decode(data, max_pixels=10**12)  # even with no limit of our own, Pillow's check holds


def test_16_bit_png_that_inflates_past_its_size_is_refused() -> None:
    payload = zlib.compress(b"\x00" * 10_000)
    data = raw_png(2, 2, bit_depth=16, colour_type=2, idat=payload)
    with pytest.raises(ImageError, match="more data than its size"):
        decode(data)


def test_16_bit_png_with_a_bad_filter_type_is_refused() -> None:
    row = b"\x07" + b"\x00" * 12
    data = raw_png(2, 1, bit_depth=16, colour_type=2, idat=zlib.compress(row))
    with pytest.raises(ImageError, match="unknown row filter"):
        decode(data)


def test_chunk_helper_is_a_valid_png_chunk() -> None:
    # Guards the hand-made PNGs above: Pillow must accept a well-formed one.
    rows = b"".join(b"\x00" + b"\x80\x40\x20" * 3 for _ in range(2))
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 8, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )
    np.testing.assert_allclose(decode(data).pixels[1, 2], [128 / 255, 64 / 255, 32 / 255])
