"""Hostile and unusual images: each decodes to the right RGB pixels or fails with a specific ImageError.

Every file is generated here. Expected pixels come from hand-computed values (alpha compositing,
range scaling, rotations with numpy), not from the code under test.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import EpsImagePlugin, Image, ImageFile

from support import png_chunk_types
from vizkit.core import images
from vizkit.core.images import ImageError, load_image, safe_filename, to_png_bytes


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A few-KB PNG whose header declares width×height 8-bit gray pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    # Rows of zeros compress ~1000:1; a few hundred rows is enough to look genuine.
    idat = zlib.compress(b"\0" * ((width + 1) * 200), 9)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks




def quadrant_image(w: int = 64, h: int = 32) -> np.ndarray:
    """Asymmetric test picture: red top-left quadrant, green top-right, blue bottom half."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = (255, 0, 0)
    arr[: h // 2, w // 2:] = (0, 255, 0)
    arr[h // 2:] = (0, 0, 255)
    return arr


RGB = quadrant_image()
NOISE = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def jpeg_with_exif(arr: np.ndarray, orientation: int | None = None, gps: bool = False) -> bytes:
    img = Image.fromarray(arr)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if gps:
        exif[0x010F] = "CameraMaker"
        exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


# ---------------------------------------------------------------- refused inputs, specific messages

REFUSED = {
    "text-named-png": (b"hello, I am a text file pretending to be a PNG\n", "text file"),
    "empty": (b"", "empty"),
    "elf-executable": (b"\x7fELF\x02\x01\x01" + bytes(200), "executable"),
    "windows-executable": (b"MZ\x90\x00" + bytes(200), "executable"),
    "shell-script": (b"#!/bin/sh\nrm -rf /\n", "script"),
    "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "Ghostscript"),
    "eps-binary-header": (b"\xc5\xd0\xd3\xc6" + bytes(60), "Ghostscript"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
    "svg-xml": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    "pdf": (b"%PDF-1.7\n" + bytes(100), "PDF"),
    "zip": (b"PK\x03\x04" + bytes(100), "ZIP"),
    "html": (b"<!DOCTYPE html><html><body>hi</body></html>", "web page"),
    "random-binary": (bytes(range(256)) * 4, "Not a recognized image"),
    "ppm-not-allowed": (encode(Image.new("RGB", (4, 4)), "PPM"), "Not a recognized image"),
    "ico-not-allowed": (encode(Image.new("RGB", (16, 16)), "ICO"), "Not a recognized image"),
    "truncated-jpeg-header": (encode(Image.fromarray(RGB), "JPEG")[:400], "truncated"),
    "truncated-jpeg-data": (encode(Image.fromarray(RGB), "JPEG")[:-300], "truncated"),
    "truncated-png": (encode(Image.fromarray(NOISE), "PNG")[:3000], "truncated"),
    "png-bomb-20000x10000": (png_declaring(20000, 10000), "too large"),
    "png-over-our-limit-8000x8000": (png_declaring(8000, 8000), "too large"),
    "absurd-aspect-30000x20": (encode(Image.new("L", (30000, 20), 7), "PNG"), "aspect ratio"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_inputs_raise_specific_image_error(name):
    data, fragment = REFUSED[name]
    with pytest.raises(ImageError, match=fragment):
        load_image(data)


def test_bomb_file_is_small_and_refused_before_decoding(monkeypatch):
    data = png_declaring(20000, 10000)
    assert len(data) < 10_000
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))
    with pytest.raises(ImageError):
        load_image(data)
    assert not decoded


@pytest.mark.slow
def test_real_10000x10000_image_refused_from_header(monkeypatch):
    data = encode(Image.new("1", (10000, 10000), 1), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert Image.open(io.BytesIO(data)).size == (10000, 10000)  # a genuine image
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded a 100 MP image"))
    with pytest.raises(ImageError, match="too large"):
        load_image(data)


def test_eps_never_reaches_ghostscript(monkeypatch, tmp_path):
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: pytest.fail("Ghostscript ran"))
    path = tmp_path / "photo.png"
    path.write_bytes(REFUSED["eps"][0])
    with pytest.raises(ImageError, match="EPS"):
        load_image(path)


def test_byte_limit_checked_before_decoding(tmp_path):
    big = b"\x89PNG\r\n\x1a\n" + bytes(images.MAX_BYTES)
    with pytest.raises(ImageError, match="25 MB"):
        load_image(big)
    path = tmp_path / "big.png"
    path.write_bytes(big)
    with pytest.raises(ImageError, match="25 MB"):
        load_image(path)


def test_pillow_bomb_warning_is_an_error(monkeypatch):
    # 20×20 = 400 pixels: above 300 Pillow only *warns* (it raises above 600).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(ImageError, match="too"):
        load_image(encode(Image.new("RGB", (20, 20)), "PNG"))


def test_truncated_images_refused_even_if_pillow_flag_is_on(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError):
        load_image(REFUSED["truncated-png"][0])


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


# ---------------------------------------------------------------- accepted inputs, exact pixels

@pytest.mark.parametrize("fmt,kwargs", [
    ("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("GIF", {}),
])
def test_lossless_formats_round_trip_exactly(fmt, kwargs):
    out = load_image(encode(Image.fromarray(RGB), fmt, **kwargs))
    assert out.dtype == np.uint8 and out.shape == RGB.shape
    np.testing.assert_array_equal(out, RGB)


def test_jpeg_close_to_source():
    out = load_image(encode(Image.fromarray(RGB), "JPEG", quality=95))
    assert out.shape == RGB.shape
    assert np.abs(out.astype(int) - RGB).mean() < 4


def test_path_and_file_object_sources(tmp_path):
    data = encode(Image.fromarray(RGB), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_image(path), RGB)
    np.testing.assert_array_equal(load_image(str(path)), RGB)
    np.testing.assert_array_equal(load_image(io.BytesIO(data)), RGB)
    np.testing.assert_array_equal(load_image(bytearray(data)), RGB)


def test_cmyk_tiff():
    cmyk = np.zeros((4, 4, 4), np.uint8)
    cmyk[:2, :, 0] = 255   # full cyan → (0, 255, 255)
    cmyk[2:, :, 3] = 255   # full black → (0, 0, 0)
    out = load_image(encode(Image.fromarray(cmyk, mode="CMYK"), "TIFF"))
    np.testing.assert_array_equal(out[:2], np.broadcast_to([0, 255, 255], (2, 4, 3)))
    np.testing.assert_array_equal(out[2:], 0)


def test_cmyk_jpeg_decodes_to_rgb():
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[..., 1] = 255  # magenta
    out = load_image(encode(Image.fromarray(cmyk, mode="CMYK"), "JPEG", quality=95))
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - [255, 0, 255]).max() < 12


def test_gray_l_is_replicated():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = load_image(encode(Image.fromarray(gray), "PNG"))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_la_composited_on_white():
    la = np.array([[[0, 0], [0, 255], [100, 128]]], np.uint8)
    out = load_image(encode(Image.fromarray(la, mode="LA"), "PNG"))
    expected = [255, 0, round(100 * 128 / 255 + 255 * 127 / 255)]
    np.testing.assert_array_equal(out[0, :, 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_rgba_composited_on_white():
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 200, 51]]], np.uint8)
    out = load_image(encode(Image.fromarray(rgba, mode="RGBA"), "PNG"))
    a = 51 / 255
    faded = [round(255 * (1 - a)), round(255 * (1 - a)), round(200 * a + 255 * (1 - a))]
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [255, 0, 0], faded])


def test_palette_with_transparency_becomes_white():
    pal = Image.new("P", (3, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 0])
    pal.putdata([0, 1, 2])
    out = load_image(encode(pal, "PNG", transparency=0))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [255, 0, 0], [0, 128, 0]])
    gif = load_image(encode(pal, "GIF", transparency=0))
    np.testing.assert_array_equal(gif[0], [[255, 255, 255], [255, 0, 0], [0, 128, 0]])


def test_bilevel_mode_1():
    bits = Image.new("1", (8, 2), 0)
    bits.putpixel((3, 1), 1)
    out = load_image(encode(bits, "PNG"))
    expected = np.zeros((2, 8), np.uint8)
    expected[1, 3] = 255
    np.testing.assert_array_equal(out[..., 1], expected)


def test_16bit_png_scaled_by_range_not_clipped():
    values = np.linspace(1000, 40000, 64 * 64).reshape(64, 64).astype(np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_image(data)[..., 0].astype(int)
    expected = np.rint((values.astype(float) - 1000) * 255 / 39000)
    np.testing.assert_array_equal(out, expected)
    assert len(np.unique(out)) > 200  # Pillow's convert("RGB") would give a constant 255 here


@pytest.mark.parametrize("mode,dtype,fmt", [("I", np.int32, "TIFF"), ("F", np.float32, "TIFF")])
def test_int32_and_float_modes_scaled_by_range(mode, dtype, fmt):
    values = (np.arange(12).reshape(3, 4) * 1000 - 5000).astype(dtype)
    data = encode(Image.fromarray(values, mode=mode), fmt)
    out = load_image(data)[..., 2].astype(int)
    np.testing.assert_array_equal(out, np.rint((values.astype(float) + 5000) * 255 / 11000))


def test_float_with_nan_is_not_constant():
    values = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    values[0, 0] = np.nan
    out = load_image(encode(Image.fromarray(values, mode="F"), "TIFF"))
    assert out[..., 0].max() == 255 and out[..., 0].min() == 0


@pytest.mark.parametrize("orientation,rotate", [
    (3, lambda a: np.rot90(a, 2)),   # 180°
    (6, lambda a: np.rot90(a, -1)),  # stored image must be turned 90° clockwise
    (8, lambda a: np.rot90(a, 1)),   # 90° counter-clockwise
])
def test_exif_orientation_applied(orientation, rotate):
    out = load_image(jpeg_with_exif(RGB, orientation))
    expected = rotate(RGB)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).mean() < 4


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    np.testing.assert_array_equal(load_image(data), np.broadcast_to([255, 0, 0], (8, 8, 3)))


def test_apng_first_frame():
    frames = [Image.new("RGBA", (8, 8), color) for color in [(0, 0, 255, 255), (0, 255, 0, 255)]]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    np.testing.assert_array_equal(load_image(data), np.broadcast_to([0, 0, 255], (8, 8, 3)))


def test_multipage_tiff_first_page():
    pages = [Image.new("RGB", (5, 5), (10, 20, 30)), Image.new("RGB", (5, 5), (200, 0, 0))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    np.testing.assert_array_equal(load_image(data), np.broadcast_to([10, 20, 30], (5, 5, 3)))


def test_extreme_shapes_ok():
    one = load_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    np.testing.assert_array_equal(one, [[[1, 2, 3]]])
    strip = load_image(encode(Image.new("RGB", (10000, 20), (9, 8, 7)), "PNG"))
    assert strip.shape == (20, 10000, 3) and (strip == [9, 8, 7]).all()


def test_result_is_a_writable_contiguous_copy():
    out = load_image(encode(Image.fromarray(RGB), "PNG"))
    assert out.flags.writeable and out.flags.c_contiguous


# ---------------------------------------------------------------- export without metadata

def test_gps_jpeg_reexport_has_no_metadata():
    data = jpeg_with_exif(RGB, orientation=1, gps=True)
    source_exif = Image.open(io.BytesIO(data)).getexif()
    assert source_exif.get_ifd(0x8825)  # the input really carries GPS
    png = to_png_bytes(load_image(data))
    kinds = png_chunk_types(png)
    assert set(kinds) <= {b"IHDR", b"IDAT", b"IEND"}, kinds
    assert b"GPS" not in png and b"CameraMaker" not in png and b"Exif" not in png
    back = Image.open(io.BytesIO(png))
    assert not back.getexif() and not back.info
    assert np.abs(np.asarray(back).astype(int) - RGB).mean() < 4


def test_to_png_bytes_round_trip_and_validation():
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(to_png_bytes(RGB)))), RGB)
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(to_png_bytes(gray)))), gray)
    with pytest.raises(ValueError, match="uint8"):
        to_png_bytes(RGB.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_png_bytes(np.zeros((4, 4, 2), np.uint8))


# ---------------------------------------------------------------- file names

@pytest.mark.parametrize("name,suffix,expected", [
    ("../../etc/passwd", None, "passwd"),
    ("C:\\Windows\\System32\\evil.exe", ".png", "evil.png"),
    ("my photo (1).JPG", None, "my_photo_1.JPG"),
    ("café.jpg", ".png", "cafe.png"),
    (".bashrc", None, "bashrc"),
    ("", ".png", "image.png"),
    (None, None, "image"),
    ("CON.png", None, "_CON.png"),
    ("a\x00b/../../c.png", None, "c.png"),
    ("..", None, "image"),
    ("x" * 500 + ".png", None, "x" * 100 + ".png"),
])
def test_safe_filename_examples(name, suffix, expected):
    assert safe_filename(name, suffix=suffix) == expected


@settings(max_examples=200, deadline=timedelta(milliseconds=500))
@given(st.text(max_size=300), st.sampled_from([None, ".png", ".csv"]))
def test_safe_filename_never_a_path(tmp_path_factory, name, suffix):
    out = safe_filename(name, suffix=suffix)
    assert out and len(out) <= 111
    assert "/" not in out and "\\" not in out and not out.startswith(".")
    assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in out)
    root = Path("/srv/vizkit-out")
    assert (root / out).resolve().parent == root.resolve()


# ---------------------------------------------------------------- fuzzing: only ImageError escapes

SEEDS = [
    encode(Image.fromarray(RGB[:16, :16]), "PNG"),
    encode(Image.fromarray(RGB[:16, :16]), "JPEG"),
    encode(Image.fromarray(RGB[:16, :16]), "GIF"),
    encode(Image.fromarray(RGB[:16, :16]), "BMP"),
    encode(Image.fromarray(RGB[:16, :16]), "TIFF"),
    encode(Image.fromarray(RGB[:16, :16]), "WEBP"),
    encode(Image.new("RGBA", (8, 8), (1, 2, 3, 4)), "PNG", save_all=True,
           append_images=[Image.new("RGBA", (8, 8))]),
    jpeg_with_exif(RGB[:16, :16], orientation=6, gps=True),
    encode(Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 600), "PNG"),
]


@st.composite
def mutated_image(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "int"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        else:  # a big 32-bit value, e.g. into a width/height/length field
            data[pos:pos + 4] = struct.pack(">I", draw(st.sampled_from([0, 1, 65535, 2**31 - 1, 2**32 - 1])))
    return bytes(data)


def check_only_image_error(data: bytes) -> None:
    try:
        out = load_image(data)
    except ImageError as error:
        assert str(error)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] * out.shape[1] <= images.MAX_PIXELS


@pytest.mark.slow
@settings(max_examples=200, deadline=timedelta(seconds=3), suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_image(), st.binary(max_size=4096)))
def test_fuzz_only_image_error_escapes(data):
    check_only_image_error(data)
