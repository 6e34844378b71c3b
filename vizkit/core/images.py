"""Safe image decoding, metadata-free PNG export and untrusted file names.

Policy (docs/reliability.md, "Images"): a byte limit before reading, an allow-list of formats (EPS/PS never
reach Pillow, so Ghostscript never runs), a pixel limit checked from the header before any
decoding, Pillow's ``DecompressionBombWarning`` treated as an error, ``load()`` to validate
(truncated files fail; ``LOAD_TRUNCATED_IMAGES`` stays off), EXIF orientation applied with
``ImageOps.exif_transpose``, only the first frame of animations, every mode to RGB (alpha
composited on white, 16-bit and float scaled by the image's own range instead of clipped).
"""

from __future__ import annotations

import io
import re
import unicodedata
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

MAX_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 40_000_000
MAX_ASPECT = 1000
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
# Pillow reports these for files it opened with one of the allowed plugins.
_ACCEPTED_FORMATS = {*ALLOWED_FORMATS, "MPO"}
_ALLOWED_TEXT = "PNG, JPEG, GIF, BMP, TIFF or WebP"
_TRUNCATED = "The image file is truncated (an incomplete download or upload?)."

# Pillow only warns between MAX_IMAGE_PIXELS and twice that; vizkit treats the warning as an
# error process-wide (set once at import: thread-safe, unlike catch_warnings per call).
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

# What a refused file looks like, by its first bytes: (prefix, message).
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%!PS", "PostScript/EPS files are not accepted (decoding them would run Ghostscript)."),
    (b"\xc5\xd0\xd3\xc6", "PostScript/EPS files are not accepted (decoding them would run Ghostscript)."),
    (b"%PDF", "This is a PDF document, not an image. Export the page as PNG or JPEG."),
    (b"\x7fELF", "This is an executable program, not an image."),
    (b"MZ", "This is a Windows executable, not an image."),
    (b"#!", "This is a script, not an image."),
    (b"PK\x03\x04", "This is a ZIP archive (or an Office document), not an image."),
    (b"\x1f\x8b", "This is a gzip archive, not an image."),
)


class ImageError(ValueError):
    """The input is not an image vizkit can use; the message says why."""


def _read_source(source: str | Path | bytes | bytearray | memoryview | BinaryIO) -> bytes:
    """The raw bytes of ``source``, refusing anything over ``MAX_BYTES`` before reading it all."""
    limit_text = f"{MAX_BYTES // (1024 * 1024)} MB"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"File not found: {path.name}")
        if not path.is_file():
            raise ImageError(f"{path.name} is not a file.")
        if path.stat().st_size > MAX_BYTES:
            raise ImageError(f"{path.name} is larger than {limit_text}; use a smaller image.")
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read(MAX_BYTES + 1)
    else:
        raise ImageError(f"Cannot read an image from a {type(source).__name__}.")
    if len(data) > MAX_BYTES:
        raise ImageError(f"The file is larger than {limit_text}; use a smaller image.")
    if not data:
        raise ImageError("The file is empty.")
    return data


def _refuse_by_content(data: bytes) -> None:
    """A specific message for well-known non-images, before Pillow sees the bytes."""
    for prefix, message in _SIGNATURES:
        if data.startswith(prefix):
            raise ImageError(message)
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!doctype svg")) and b"<svg" in head):
        raise ImageError("SVG is a vector format vizkit does not render. Export it as PNG first.")
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif", b"ftyphevc"):
        raise ImageError(f"HEIC/AVIF images are not supported; convert the image to {_ALLOWED_TEXT}.")
    if head.startswith((b"<html", b"<!doctype html", b"<?xml")):
        raise ImageError("This is a web page or XML document, not an image.")


def _looks_like_text(data: bytes) -> bool:
    sample = data[:512]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _check_size(width: int, height: int) -> None:
    """The pixel limit and aspect limit, from the header, before decoding."""
    if width < 1 or height < 1:
        raise ImageError(f"The image declares an empty size ({width}×{height}).")
    pixels = width * height
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pixels > MAX_PIXELS or (pillow_limit is not None and pixels > pillow_limit):
        raise ImageError(
            f"The image is too large: {width}×{height} pixels ({pixels / 1e6:.0f} megapixels); "
            f"vizkit accepts up to {MAX_PIXELS / 1e6:.0f} megapixels. Scale it down first."
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(
            f"The image is {width}×{height} pixels: an aspect ratio over {MAX_ASPECT}:1 cannot be "
            "shown or analysed sensibly. Crop it first."
        )


def _bomb_message(error: Exception) -> str:
    return (
        f"The image is too large: it declares more pixels than allowed (a possible decompression "
        f"bomb); vizkit accepts up to {MAX_PIXELS / 1e6:.0f} megapixels. ({error})"
    )


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Maps the finite range of ``values`` linearly onto 0..255 (a constant image stays constant)."""
    values = values.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    values = np.where(finite, values, lo)
    if hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.full(values.shape, min(max(lo, 0.0), 255.0))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _composite_on_white(rgba: Image.Image) -> np.ndarray:
    """Alpha-composites onto a white background (transparent pixels become white)."""
    arr = np.asarray(rgba, dtype=np.float32)
    alpha = arr[..., 3:4] / 255.0
    rgb = arr[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode → RGB uint8 H×W×3."""
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _scale_to_uint8(np.asarray(im))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    has_alpha = "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info
    if has_alpha:
        return _composite_on_white(im.convert("RGBA"))
    return np.array(im.convert("RGB"), dtype=np.uint8)


def load_image(source: str | Path | bytes | bytearray | memoryview | BinaryIO) -> np.ndarray:
    """Decodes an untrusted image into RGB uint8 H×W×3 (first frame, EXIF-oriented).

    Args:
        source: a path, the file's bytes, or a binary file object (e.g. a Streamlit upload).

    Raises:
        ImageError: with a message for the user: empty, too large (bytes or pixels), not an
            image, a refused format (EPS, SVG, PDF, ...), truncated or corrupt.
    """
    data = _read_source(source)
    _refuse_by_content(data)
    try:
        # No per-call warnings.catch_warnings: it is not thread-safe (Streamlit sessions are
        # threads). Where the process-wide filter was reset, _check_size refuses the same sizes.
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(_bomb_message(error)) from None
    except Image.UnidentifiedImageError:
        if _looks_like_text(data):
            raise ImageError("This is a text file, not an image.") from None
        raise ImageError(f"Not a recognized image. vizkit accepts {_ALLOWED_TEXT} files.") from None
    except Exception as error:  # noqa: BLE001 - any header parser failure means a broken file
        if "truncated" in str(error).lower() or isinstance(error, EOFError):
            raise ImageError(_TRUNCATED) from None
        raise ImageError(f"The image header is corrupt and cannot be read ({error}).") from None
    with im:
        if im.format not in _ACCEPTED_FORMATS:
            raise ImageError(f"{im.format} images are not accepted; use {_ALLOWED_TEXT}.")
        _check_size(*im.size)
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            raise ImageError("Refusing to decode: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on in this process.")
        try:
            # Only frame 0 is decoded; frames of an animation are never counted or seeked.
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageError(_bomb_message(error)) from None
        except MemoryError:
            raise ImageError("The image is too large to decode in memory.") from None
        except Exception as error:  # noqa: BLE001 - decoder failures: truncated or corrupt data
            if "truncated" in str(error).lower() or isinstance(error, EOFError):
                raise ImageError(_TRUNCATED) from None
            raise ImageError(f"The image data is corrupt and cannot be decoded ({error}).") from None
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels as stored
            oriented = im
        _check_size(*oriented.size)
        try:
            rgb = _to_rgb(oriented)
        except Exception as error:  # noqa: BLE001 - an exotic mode Pillow cannot convert
            raise ImageError(f"Unsupported color mode {oriented.mode!r} ({error}).") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError(f"The image decoded to an unexpected shape {rgb.shape}.")
    return np.ascontiguousarray(rgb)


def to_png_bytes(rgb: np.ndarray) -> bytes:
    """Encodes an image as PNG with no metadata at all (no EXIF, GPS, text or ICC chunks).

    Args:
        rgb: uint8 H×W×3 (or H×W gray, H×W×4 RGBA).
    """
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ValueError(f"to_png_bytes expects uint8 pixels, got {arr.dtype}.")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"to_png_bytes expects H×W, H×W×3 or H×W×4, got shape {arr.shape}.")
    # A fresh image from raw pixels carries no info dict, so nothing of the input leaks.
    image = Image.fromarray(np.ascontiguousarray(arr))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def safe_filename(name: str | None, suffix: str | None = None, default: str = "image") -> str:
    """A harmless file name from an untrusted one (an upload's name): never a path.

    Keeps only the last path component's ASCII letters, digits, ``-``, ``_`` and ``.``; no
    leading dots, no Windows device names, at most 100 characters.

    Args:
        name: the untrusted name (may be ``None``).
        suffix: replaces the extension when given, e.g. ``".png"``.
        default: used when nothing safe is left.
    """
    text = unicodedata.normalize("NFKD", str(name or "")).encode("ascii", "ignore").decode("ascii")
    text = re.split(r"[/\\]", text)[-1]
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._ ")
    text = re.sub(r"\.{2,}", ".", text)
    stem, dot, ext = text.rpartition(".")
    if not dot:
        stem, ext = text, ""
    if suffix is not None:
        ext = re.sub(r"[^A-Za-z0-9]+", "", suffix)
    stem = stem.strip("._ ")[:100] or default
    if stem.split(".")[0].upper() in _RESERVED:
        stem = f"_{stem}"
    ext = ext[:10]
    return f"{stem}.{ext}" if ext else stem
