"""Colour for style transfer: luminance-only transfer (Gatys, Bethge, Hertzmann & Shechtman 2016,
"Preserving Color in Neural Artistic Style Transfer").

Both images become luminance, the style's luminance is matched to the content's mean and
deviation, and the result's luminance is put back with the content's chroma (YCbCr).
"""

from __future__ import annotations

import numpy as np


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB → YCbCr (ITU-R BT.601 full range, as JPEG), float, channels last."""
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_ycbcr``, rounded and clipped to uint8."""
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def luminance_pair(content: np.ndarray, style: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gray content and gray style, the style's luminance matched to the content's mean and std."""
    yc = rgb_to_ycbcr(content)[..., 0]
    ys = rgb_to_ycbcr(style)[..., 0]
    ys = (ys - ys.mean()) * (yc.std() / max(ys.std(), 1e-6)) + yc.mean()
    gray = lambda y: np.repeat(np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    return gray(yc), gray(ys)


def with_chroma(image: np.ndarray, chroma_of: np.ndarray) -> np.ndarray:
    """``image``'s luminance with ``chroma_of``'s Cb and Cr."""
    ycc = rgb_to_ycbcr(chroma_of)
    ycc[..., 0] = rgb_to_ycbcr(image)[..., 0]
    return ycbcr_to_rgb(ycc)
