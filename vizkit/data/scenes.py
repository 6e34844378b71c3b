"""Datasets: Fashion-MNIST, the FashionScenes generator, and the bundled held-out subset.

FashionScenes puts one Fashion-MNIST item at a random position, scale, flip and tint on a
procedurally textured RGB canvas and keeps the object's box, so localization is measurable
(pointing game). Scenes are a pure function of (items, seed): the same seed gives the same scenes.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vizkit.core.assets import ASSETS
from vizkit.data.backgrounds import (
    HELD_OUT,
    TRAINING_FAMILIES,
    check_families,
    draw_backgrounds,
    training_families,
)
from vizkit.models.fashion_zf import FASHION_CLASSES

FASHION_PACKAGE = "dataset-fashion-mnist"  # Debian's package of the idx files
FASHION_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
SUBSET_FILE = ASSETS / "fashion-scenes-subset.npz"
SCENE_SIZE = 64
TEST_SEED = 20131112  # Zeiler & Fergus's arXiv date; fixes the evaluation scenes
FREE_FRACTION = 0.2


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


def make_scenes(
    items: np.ndarray, labels: np.ndarray, seed: int, size: int = SCENE_SIZE,
    batch: int = 2048, families: Sequence[str] = TRAINING_FAMILIES,
    free_fraction: float = FREE_FRACTION,
) -> Scenes:
    """Renders one scene per item, deterministically from ``seed``, on backgrounds drawn from
    ``families`` (``vizkit.data.backgrounds.FAMILIES``; by default every family but the held-out one).

    The object is a solid silhouette (alpha from the item's intensity) shaded by the item's own
    pattern and tinted; its luminance is kept apart from the background's so the object, not the
    canvas, carries the class.
    """
    families = check_families(families)
    images, boxes = [], []
    for start in range(0, len(items), batch):
        g = torch.Generator().manual_seed(seed * 1_000_003 + start)
        chunk = torch.tensor(items[start:start + batch], dtype=torch.float32)
        img, box = _render(chunk, size, g, families, free_fraction)
        images.append(img)
        boxes.append(box)
    return Scenes(
        images=np.concatenate(images), labels=np.asarray(labels, dtype=np.int64),
        boxes=np.concatenate(boxes),
    )


def _render(items: torch.Tensor, size: int, g: torch.Generator,
            families: tuple[str, ...], free_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n, side = items.shape[0], items.shape[-1]
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    flip = u(n) < 0.5
    items = torch.where(flip.view(n, 1, 1), items.flip(-1), items)
    tight = _item_boxes(items)  # c0, r0, c1, r1 in item pixels

    bg = draw_backgrounds(n, size, g, families)
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
    free = (u(n) < free_fraction).view(n, 1, 1, 1)
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


def evaluation_scenes(hold_out: str | None = HELD_OUT, count: int | None = None,
                      size: int = SCENE_SIZE) -> Scenes:
    """The model card's test scenes: the test split (its first ``count`` items; default all
    10,000) rendered with TEST_SEED on backgrounds of every family but ``hold_out``."""
    items, labels = load_fashion_mnist("test")
    return make_scenes(items[:count], labels[:count], seed=TEST_SEED, size=size,
                       families=training_families(hold_out))


def held_out_scenes(family: str = HELD_OUT, count: int | None = None, size: int = SCENE_SIZE) -> Scenes:
    """The same test items rendered the same way (TEST_SEED), on backgrounds of ``family`` alone."""
    items, labels = load_fashion_mnist("test")
    return make_scenes(items[:count], labels[:count], seed=TEST_SEED, size=size, families=(family,))


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
