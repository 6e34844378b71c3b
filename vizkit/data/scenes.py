"""Datasets: Fashion-MNIST, the FashionScenes generator, and the bundled held-out subset.

FashionScenes puts one Fashion-MNIST item at a random position, scale, flip and tint on a
procedurally textured RGB canvas and keeps the object's box, so localization is measurable
(pointing game). Scenes are a pure function of (items, seed): the same seed gives the same scenes.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vizkit.core.assets import ASSETS
from vizkit.models.fashion_zf import FASHION_CLASSES

FASHION_PACKAGE = "dataset-fashion-mnist"  # Debian's package of the idx files
FASHION_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
SUBSET_FILE = ASSETS / "fashion-scenes-subset.npz"
SCENE_SIZE = 64
TEST_SEED = 20131112  # Zeiler & Fergus's arXiv date; fixes the evaluation scenes


@dataclass(frozen=True)
class Scenes:
    """A batch of scenes.

    Attributes:
        images: N×S×S×3 uint8.
        labels: N int64 class indices (FASHION_CLASSES).
        boxes: N×4 float32 object boxes ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive.
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[str]:
        return list(FASHION_CLASSES)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class DatasetMissing(FileNotFoundError):
    """Fashion-MNIST's files are not on this machine; the message says how to install them."""


def fashion_mnist_dirs() -> tuple[Path, ...]:
    """Folders searched for Fashion-MNIST's idx files, in order.

    ``VIZKIT_FASHION_MNIST`` (a folder), when set, replaces the default: Debian's
    ``dataset-fashion-mnist`` folder, then torchvision's layout under ``~/.cache/vizkit`` (where
    earlier versions downloaded it).
    """
    override = os.environ.get("VIZKIT_FASHION_MNIST")
    if override:
        return (Path(override),)
    return (*FASHION_DIRS, Path.home() / ".cache" / "vizkit" / "FashionMNIST" / "raw")


def fashion_mnist_files(split: str = "train") -> tuple[Path, Path]:
    """The gzipped idx files (images, labels) of ``split`` ("train" or "test").

    Raises:
        DatasetMissing: they are in none of ``fashion_mnist_dirs()``; the message names the
            Debian package to install.
    """
    if split not in ("train", "test"):
        raise ValueError(f"Unknown Fashion-MNIST split {split!r}: use 'train' or 'test'.")
    prefix = {"train": "train", "test": "t10k"}[split]
    for folder in fashion_mnist_dirs():
        images = folder / f"{prefix}-images-idx3-ubyte.gz"
        labels = folder / f"{prefix}-labels-idx1-ubyte.gz"
        if images.is_file() and labels.is_file():
            return images, labels
    looked = ", ".join(str(d) for d in fashion_mnist_dirs())
    raise DatasetMissing(
        f"Fashion-MNIST ({split} split) is not installed: looked in {looked}. Install the "
        f"Debian package with `sudo apt-get install {FASHION_PACKAGE}`, or set "
        "VIZKIT_FASHION_MNIST to a folder holding its four *-idx?-ubyte.gz files.")


def fashion_mnist_available(split: str = "train") -> bool:
    """Whether ``split``'s Fashion-MNIST files are on this machine (see ``fashion_mnist_dirs``)."""
    try:
        fashion_mnist_files(split)
    except DatasetMissing:
        return False
    return True


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST items (N×28×28 uint8) and labels for ``split`` ("train" or "test").

    Reads the idx files of Debian's ``dataset-fashion-mnist``. Nothing is downloaded (no
    network at run time): where they are missing, :class:`DatasetMissing` says how to install
    them.
    """
    images, labels = fashion_mnist_files(split)
    return _read_idx(images), _read_idx(labels).astype(np.int64)


def _item_boxes(items: torch.Tensor) -> torch.Tensor:
    """Tight boxes (c0, r0, c1, r1), inclusive, of the nonzero pixels of N×28×28 items."""
    mask = items > 24
    rows, cols = mask.any(2), mask.any(1)
    idx = torch.arange(items.shape[-1])
    big = items.shape[-1]
    r0 = torch.where(rows, idx, big).min(1).values
    r1 = torch.where(rows, idx, -1).max(1).values
    c0 = torch.where(cols, idx, big).min(1).values
    c1 = torch.where(cols, idx, -1).max(1).values
    empty = r1 < 0
    r0[empty], c0[empty], r1[empty], c1[empty] = 0, 0, big - 1, big - 1
    return torch.stack([c0, r0, c1, r1], 1).float()


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    return 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]


def _backgrounds(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """N×3×S×S textures in [0, 1]: smooth noise, gratings, stripes/checks, gradients, blends."""
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    c1, c2 = u(n, 3, 1, 1), u(n, 3, 1, 1)

    # Smooth colour noise at a random scale per sample (2..24 cells).
    noise = torch.zeros(n, 3, size, size)
    cells = torch.randint(2, 25, (n,), generator=g)
    for c in cells.unique().tolist():
        sel = cells == c
        low = u(int(sel.sum()), 3, c, c)
        noise[sel] = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    noise = noise.clamp(0, 1)

    # Oriented sinusoidal gratings, and their square-wave versions (stripes, checks).
    angle = u(n, 1, 1) * math.pi
    freq = 1 + u(n, 1, 1) * 9
    phase = u(n, 1, 1) * 2 * math.pi
    proj = xs * torch.cos(angle) + ys * torch.sin(angle)
    wave = torch.sin(2 * math.pi * freq * proj + phase)
    angle2 = angle + math.pi / 2
    wave2 = torch.sin(2 * math.pi * freq * (xs * torch.cos(angle2) + ys * torch.sin(angle2)) + phase)
    grating = (0.5 + 0.5 * wave).unsqueeze(1)
    stripes = (wave > 0).float().unsqueeze(1)
    checks = ((wave > 0) ^ (wave2 > 0)).float().unsqueeze(1)
    ramp = proj.unsqueeze(1) / proj.flatten(1).amax(1).clamp_min(1e-6).view(n, 1, 1, 1)

    family = torch.randint(0, 6, (n,), generator=g)
    t = torch.stack([grating, stripes, checks, ramp], 0)  # 4×N×1×S×S
    two_colour = c1 + (c2 - c1) * t[family.clamp(max=3), torch.arange(n)]
    bg = torch.where((family < 4).view(n, 1, 1, 1), two_colour, noise)
    # family 5: noise blended with a grating (textured and structured at once).
    mixed = 0.5 * noise + 0.5 * two_colour
    bg = torch.where((family == 5).view(n, 1, 1, 1), c1 + (mixed - 0.5) * 1.2, bg)
    bg = bg + (u(n, 1, 1, 1) * 0.12) * (u(n, 3, size, size) - 0.5)  # fine grain
    return bg.clamp(0, 1)


def make_scenes(
    items: np.ndarray, labels: np.ndarray, seed: int, size: int = SCENE_SIZE,
    batch: int = 2048,
) -> Scenes:
    """Renders one scene per item, deterministically from ``seed``.

    The object is a solid silhouette (alpha from the item's intensity) shaded by the item's own
    pattern and tinted; its luminance is kept apart from the background's so the object, not the
    canvas, carries the class.
    """
    images, boxes = [], []
    for start in range(0, len(items), batch):
        g = torch.Generator().manual_seed(seed * 1_000_003 + start)
        chunk = torch.tensor(items[start:start + batch], dtype=torch.float32)
        img, box = _render(chunk, size, g)
        images.append(img)
        boxes.append(box)
    return Scenes(
        images=np.concatenate(images), labels=np.asarray(labels, dtype=np.int64),
        boxes=np.concatenate(boxes),
    )


def _render(items: torch.Tensor, size: int, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    n, side = items.shape[0], items.shape[-1]
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    flip = u(n) < 0.5
    items = torch.where(flip.view(n, 1, 1), items.flip(-1), items)
    tight = _item_boxes(items)  # c0, r0, c1, r1 in item pixels

    bg = _backgrounds(n, size, g)
    # Object scale: 28 px items become 28..52 px (never shrunk, so no detail is lost).
    scale = 1.0 + u(n) * (min(52, size - 8) / side - 1.0)
    half = side / 2
    lo_x = -(tight[:, 0] - half) * scale
    hi_x = size - (tight[:, 2] + 1 - half) * scale
    lo_y = -(tight[:, 1] - half) * scale
    hi_y = size - (tight[:, 3] + 1 - half) * scale
    cx = lo_x + u(n) * (hi_x - lo_x).clamp_min(0)
    cy = lo_y + u(n) * (hi_y - lo_y).clamp_min(0)
    k = side * scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = size / k
    theta[:, 1, 1] = size / k
    theta[:, 0, 2] = (size / 2 - cx) * 2 / k
    theta[:, 1, 2] = (size / 2 - cy) * 2 / k
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    placed = F.grid_sample(items.unsqueeze(1) / 255, grid, mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    alpha = (placed * 4).clamp(0, 1)
    shade = 0.35 + 0.65 * placed

    # Mostly keep object and background luminance apart (light object on a dark canvas or vice
    # versa); a fifth of the scenes are "free": any background, the tint farthest in colour from
    # the background among four draws, so the model also learns objects that differ by hue only.
    light_object = u(n) < 0.5
    free = (u(n) < 0.2).view(n, 1, 1, 1)
    lo = light_object.view(n, 1, 1, 1)
    bg_split = torch.where(lo, 0.0, 0.5) + bg * torch.where(lo, 0.55, 0.5)
    bg = torch.where(free, bg, bg_split)
    tint_split = torch.where(lo, 0.65, 0.0) + u(n, 3, 1, 1) * 0.35
    candidates = u(n, 4, 3)
    bg_mean = bg.mean((2, 3)).unsqueeze(1)
    best = (candidates - bg_mean).norm(dim=2).argmax(1)
    tint_free = candidates[torch.arange(n), best].view(n, 3, 1, 1)
    tint = torch.where(free, tint_free, tint_split)
    dark_shading = (1.6 - shade) * torch.where(free, 0.7, 1.0)
    obj = tint * torch.where(lo, shade, dark_shading)
    scene = bg * (1 - alpha) + obj.clamp(0, 1) * alpha
    image = (scene.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    box = torch.stack([
        cx + (tight[:, 0] - half) * scale, cy + (tight[:, 1] - half) * scale,
        cx + (tight[:, 2] + 1 - half) * scale, cy + (tight[:, 3] + 1 - half) * scale,
    ], 1).clamp(0, size)
    return image, box.numpy().astype(np.float32)


def evaluation_scenes(size: int = SCENE_SIZE) -> Scenes:
    """The evaluation scenes: the whole 10,000-item test split, rendered with TEST_SEED."""
    items, labels = load_fashion_mnist("test")
    return make_scenes(items, labels, seed=TEST_SEED, size=size)


def bundled_subset() -> Scenes:
    """The held-out scenes shipped in assets/ (labels and boxes), no dataset package needed."""
    with np.load(SUBSET_FILE) as data:
        return Scenes(images=data["images"], labels=data["labels"], boxes=data["boxes"])


def image_folder(folder: str | Path, limit: int = 2000) -> list[np.ndarray]:
    """Images of a folder (sorted by name), decoded safely; unreadable files are skipped."""
    from vizkit.core.images import ImageError, load_image

    out = []
    for path in sorted(Path(folder).iterdir()):
        if len(out) >= limit:
            break
        if path.is_file():
            try:
                out.append(load_image(path))
            except ImageError:
                continue
    return out
