"""Safe image decoding (first version; hardened per RELIABILITY.md by the foundation work)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


class ImageError(ValueError):
    """The input is not an image vizkit can use; the message says why."""


def load_image(source: str | Path | bytes) -> np.ndarray:
    """Decodes ``source`` into RGB uint8 H×W×3."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"))
    except Exception as error:  # noqa: BLE001
        raise ImageError(f"Not a readable image: {error}") from error
