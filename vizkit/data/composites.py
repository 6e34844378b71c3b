"""Photo composites for the pointing game on ImageNet networks.

An object cut from one of the sample photos (``assets/samples/``) is pasted, at a random scale
and position, on a procedural texture (``vizkit/data/textures.py``). The pasted rectangle is the
ground-truth box: nothing is annotated by hand except where each object lies in its photo. The
textures hold no ImageNet object, so a map pointing outside the box points at nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vizkit.core.assets import ASSETS
from vizkit.core.images import load_image
from vizkit.data import textures
from vizkit.data.scenes import Scenes

SAMPLES = ASSETS / "samples"


@dataclass(frozen=True)
class PhotoObject:
    """An object in a sample photo: the photo's file stem, its box there, its ImageNet class."""

    photo: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the photo's pixels, x1/y1 exclusive
    imagenet_class: str


# The boxes enclose the object with little background; EfficientNet-Lite0 classifies each crop
# alone as its class (top 1: 0.46, 0.92, 0.82, 0.22).
PHOTO_OBJECTS = (
    PhotoObject("chelsea", (40, 0, 280, 213), "Egyptian cat"),
    PhotoObject("coffee", (35, 5, 260, 210), "espresso"),
    PhotoObject("astronaut", (212, 0, 298, 178), "space shuttle"),
    PhotoObject("astronaut", (170, 210, 320, 320), "crash helmet"),
)

TEXTURES = (textures.marble, textures.waves, textures.mosaic, textures.strokes)


def photo_composites(classes: list[str], n: int = 200, size: int = 224, seed: int = 0,
                     scale: tuple[float, float] = (0.4, 0.7)) -> Scenes:
    """``n`` composites, the objects in turn, each on a fresh texture.

    Args:
        classes: the model's class names; ``labels`` index into them.
        n: number of scenes.
        size: canvas side in pixels.
        seed: seeds textures, scales and positions.
        scale: range of the pasted object's longer side, as a fraction of ``size`` (from 0.4: a
            smaller shuttle is narrower than one cell of the 7×7 map CAM and Grad-CAM upsample).

    Returns:
        ``Scenes`` whose labels are the objects' ImageNet classes and boxes the pasted rectangles.
    """
    rng = np.random.default_rng(seed)
    crops = []
    for obj in PHOTO_OBJECTS:
        if obj.imagenet_class not in classes:
            raise ValueError(f"{obj.imagenet_class!r} is not a class of this model: the photo "
                             "composites need an ImageNet classifier.")
        x0, y0, x1, y1 = obj.box
        photo = load_image(SAMPLES / f"{obj.photo}.png")
        crops.append((photo[y0:y1, x0:x1], classes.index(obj.imagenet_class)))
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    boxes = np.empty((n, 4), np.float32)
    for i in range(n):
        crop, label = crops[i % len(crops)]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        canvas = texture(size=size, seed=int(rng.integers(1 << 30)))
        longer = rng.uniform(*scale) * size
        ratio = longer / max(crop.shape[:2])
        h, w = max(1, round(crop.shape[0] * ratio)), max(1, round(crop.shape[1] * ratio))
        top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        canvas[top:top + h, left:left + w] = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)
        images[i], labels[i], boxes[i] = canvas, label, (left, top, left + w, top + h)
    return Scenes(images, labels, boxes)
