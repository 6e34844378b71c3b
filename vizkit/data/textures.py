"""Procedural images the project makes itself: style textures and a content scene.

Nothing can be downloaded, so the bundled style images (``assets/styles/*.png``) are drawn here,
deterministically from a seed: ``python -m vizkit.data.textures`` rewrites them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from vizkit.core.assets import ASSETS

STYLE_DIR = ASSETS / "styles"

# Palettes (RGB) picked so each texture has a clear color identity.
_WARM = np.array([[244, 162, 97], [231, 111, 81], [233, 196, 106], [38, 70, 83], [42, 157, 143]])
_COOL = np.array([[8, 29, 88], [37, 52, 148], [34, 94, 168], [29, 145, 192], [65, 182, 196],
                  [199, 233, 180], [255, 255, 217]])
_GLASS = np.array([[200, 30, 40], [240, 180, 20], [30, 90, 180], [30, 140, 70], [120, 40, 140],
                   [230, 230, 220]])


def _smooth_noise(size: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid, upsampled bicubically."""
    coarse = rng.random((size // scale + 3, size // scale + 3)).astype(np.float32)
    big = cv2.resize(coarse, (size + 3 * scale, size + 3 * scale), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[scale:scale + size, scale:scale + size], 0, 1)


def _turbulence(size: int, rng: np.random.Generator, octaves: int = 5) -> np.ndarray:
    total = np.zeros((size, size), np.float32)
    for k in range(octaves):
        total += _smooth_noise(size, max(2, size // (4 * 2 ** k)), rng) / 2 ** k
    return total / (2 - 2 ** (1 - octaves))


def _palette(t: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Maps t in [0, 1] onto a piecewise-linear palette."""
    pos = np.clip(t, 0, 1) * (len(colors) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(colors) - 2)
    frac = (pos - lo)[..., None]
    return ((1 - frac) * colors[lo] + frac * colors[lo + 1]).clip(0, 255).astype(np.uint8)


def marble(size: int = 256, seed: int = 0) -> np.ndarray:
    """Veined marble: ``sin(x·f + 6·turbulence)`` through a cool palette (Perlin 1985)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = 0.5 + 0.5 * np.sin((xx + 0.6 * yy) * 14 + 6 * _turbulence(size, rng))
    return _palette(t, _COOL)


def waves(size: int = 256, seed: int = 1) -> np.ndarray:
    """Interfering concentric waves through a warm palette, like op-art bands."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = np.zeros_like(xx)
    for _ in range(3):
        cx, cy, f = rng.random(), rng.random(), 20 + 20 * rng.random()
        t += np.sin(np.hypot(xx - cx, yy - cy) * f)
    return _palette((t / 3 + 1) / 2, _WARM)


def mosaic(size: int = 256, seed: int = 2, cells: int = 90) -> np.ndarray:
    """Stained glass: Voronoi cells of bright colors with dark lead lines."""
    rng = np.random.default_rng(seed)
    points = rng.random((cells, 2)) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = (xx[..., None] - points[:, 0]) ** 2 + (yy[..., None] - points[:, 1]) ** 2
    order = np.argsort(d, axis=-1)
    nearest, second = order[..., 0], order[..., 1]
    d1 = np.sqrt(np.take_along_axis(d, nearest[..., None], -1)[..., 0])
    d2 = np.sqrt(np.take_along_axis(d, second[..., None], -1)[..., 0])
    colors = _GLASS[rng.integers(0, len(_GLASS), cells)]
    img = colors[nearest].astype(np.float32) * (0.85 + 0.3 * _smooth_noise(size, 16, rng))[..., None]
    img[(d2 - d1) < 2.0] = (25, 20, 20)
    return img.clip(0, 255).astype(np.uint8)


def strokes(size: int = 256, seed: int = 3, count: int = 900) -> np.ndarray:
    """Short thick brush strokes whose direction follows a smooth flow field."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), (235, 225, 200), np.uint8)
    flow = _smooth_noise(size, 64, rng) * 2 * np.pi
    palette = np.concatenate([_WARM, _COOL[2:5]])
    for _ in range(count):
        x, y = rng.integers(0, size, 2)
        angle = flow[y, x]
        length = rng.integers(8, 22)
        dx, dy = int(np.cos(angle) * length), int(np.sin(angle) * length)
        color = tuple(int(c) for c in palette[rng.integers(0, len(palette))] * rng.uniform(0.8, 1.1))
        cv2.line(img, (int(x - dx), int(y - dy)), (int(x + dx), int(y + dy)), color,
                 int(rng.integers(2, 6)), lineType=cv2.LINE_AA)
    return img


def landscape(size: int = 256, seed: int = 4) -> np.ndarray:
    """A simple content scene: sky, sun, hills, a house and a tree (sharp edges, flat colors)."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    img = ((1 - yy) * np.array([110, 170, 235]) + yy * np.array([200, 225, 245]))
    img = np.broadcast_to(img, (size, size, 3)).astype(np.uint8).copy()
    s = size / 256
    cv2.circle(img, (int(200 * s), int(55 * s)), int(26 * s), (250, 220, 90), -1, cv2.LINE_AA)
    xs = np.arange(size)
    for base, amp, color in ((150, 25, (90, 150, 80)), (185, 15, (60, 120, 60))):
        ys = (base + amp * np.sin(xs / size * 2 * np.pi * rng.uniform(0.8, 1.6) + rng.uniform(0, 6))) * s
        poly = np.concatenate([np.stack([xs, ys], 1), [[size - 1, size - 1], [0, size - 1]]]).astype(np.int32)
        cv2.fillPoly(img, [poly], color, cv2.LINE_AA)
    x0, y0, w = int(60 * s), int(150 * s), int(60 * s)
    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + w), (220, 200, 170), -1)
    roof = np.array([[x0 - 8 * s, y0], [x0 + w + 8 * s, y0], [x0 + w / 2, y0 - 35 * s]], np.int32)
    cv2.fillPoly(img, [roof], (170, 60, 50), cv2.LINE_AA)
    cv2.rectangle(img, (x0 + int(22 * s), y0 + int(25 * s)), (x0 + int(38 * s), y0 + w), (100, 60, 40), -1)
    cv2.rectangle(img, (x0 + int(6 * s), y0 + int(10 * s)), (x0 + int(18 * s), y0 + int(22 * s)),
                  (150, 200, 230), -1)
    cv2.rectangle(img, (int(185 * s), int(150 * s)), (int(195 * s), int(200 * s)), (110, 75, 45), -1)
    cv2.circle(img, (int(190 * s), int(135 * s)), int(24 * s), (40, 110, 50), -1, cv2.LINE_AA)
    return img


#: The style textures, by name (the PNG files in assets/styles carry the same names).
STYLES: dict[str, Callable[..., np.ndarray]] = {
    "marble": marble, "waves": waves, "mosaic": mosaic, "strokes": strokes,
}


def write_styles(folder: Path = STYLE_DIR, size: int = 256) -> list[Path]:
    """Renders every texture in ``STYLES`` to ``folder/<name>.png``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in STYLES.items():
        path = folder / f"{name}.png"
        Image.fromarray(make(size)).save(path, format="PNG", optimize=True)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_styles():
        print(written)
