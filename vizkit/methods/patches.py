"""The top-k dataset patches of a unit, with their deconvnet projections (Zeiler & Fergus 2013, Fig. 2).

The dataset is ranked with batched forward passes (a unit's response is the maximum of its
channel over positions); each winner is cropped to the receptive field of the position where
the channel peaked, and only the k winners get a deconvnet pass, cropped to the same box.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vizkit import render
from vizkit.analyses.features import layer_features
from vizkit.core.hooks import FunctionalReLUError, find_layer
from vizkit.data.scenes import Scenes, image_folder
from vizkit.methods.receptive_fields import ReceptiveField, receptive_field
from vizkit.models.base import LoadedModel

Dataset = Scenes | Sequence[np.ndarray] | np.ndarray | str | Path


@dataclass(frozen=True)
class TopPatches:
    """The k images where one channel fires most, cropped to the firing unit's receptive field.

    Attributes:
        layer: dotted module name.
        channel: the channel ranked.
        patches: k uint8 crops of the images as the model sees them (S×S), one per winner;
            smaller than the field where it is clipped at the border.
        projections: k uint8 RGB crops of the deconvnet projection of the winning unit, same
            boxes (zero is mid-grey); ``None`` when the model cannot run deconvnet (it
            rectifies with ``F.relu`` calls), with the reason in ``projection_error``.
        scores: k channel maxima, strongest first.
        indices: k dataset indices of the winners.
        units: k×2 (y, x) positions of the maxima in the layer's output map.
        boxes: k×4 ``(x0, y0, x1, y1)`` crops in model-input pixels (x1, y1 exclusive).
        receptive_field: the layer's receptive field.
        dataset_size: images ranked.
        layer_shape: the layer's output shape for one image (C×h×w).
        projection_error: why there are no projections, when they were asked for and there are none.
        index: the mining index the winners came from (``None``: ranked live by ``top_patches``).
    """

    layer: str
    channel: int
    patches: tuple[np.ndarray, ...]
    projections: tuple[np.ndarray, ...] | None
    scores: np.ndarray
    indices: np.ndarray
    units: np.ndarray
    boxes: np.ndarray
    receptive_field: ReceptiveField
    dataset_size: int
    layer_shape: tuple[int, ...]
    projection_error: str | None = None
    index: str | None = None


def _images_of(dataset: Dataset) -> Sequence[np.ndarray] | np.ndarray:
    if isinstance(dataset, Scenes):
        return dataset.images
    if isinstance(dataset, (str, Path)):
        folder = Path(dataset)
        if not folder.is_dir():
            raise ValueError(f"Image folder not found: {folder}")
        images = image_folder(folder)
        if not images:
            raise ValueError(f"No readable images in {folder}.")
        return images
    if isinstance(dataset, np.ndarray) and dataset.ndim == 3:
        return dataset[None]
    return dataset


def top_patches(
    m: LoadedModel,
    layer: str,
    channel: int,
    dataset: Dataset,
    k: int = 9,
    batch_size: int = 64,
    progress: Callable[[int, int], object] | None = None,
) -> TopPatches:
    """The ``k`` dataset images where ``channel`` of ``layer`` fires most, as Zeiler & Fergus show them.

    Args:
        m: the model.
        layer: dotted ``named_modules()`` name of a spatial layer.
        channel: channel index.
        dataset: ``Scenes`` (e.g. ``vizkit.data.scenes.bundled_subset()``), a list / N×H×W×3 array of
            uint8 RGB images, or a folder of image files.
        k: how many winners.
        batch_size: images per ranking forward pass.
        progress: ``progress(done, total)`` after each ranking batch.

    Raises:
        ValueError: unknown layer (lists valid ones), channel out of range, empty dataset.
    """
    find_layer(m.module, layer)
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise ValueError(f"channel must be an integer, got {channel!r}.")
    channel = int(channel)
    if k < 1:
        raise ValueError("k must be at least 1.")
    images = _images_of(dataset)
    if len(images) == 0:
        raise ValueError("The dataset has no images.")

    def one_channel(t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 4:
            raise ValueError(f"Layer {layer!r} outputs shape {tuple(t.shape[1:])}; top patches need C×h×w.")
        if not 0 <= channel < t.shape[1]:
            raise ValueError(f"Channel {channel} is outside layer {layer!r}'s {t.shape[1]} channels.")
        return t[:, channel].flatten(1)

    feats = layer_features(m, images, [layer], pool=one_channel, batch_size=batch_size, progress=progress)
    values = feats.values[layer]
    _, h, w = feats.shapes[layer]
    peak = values.max(1)
    order = np.argsort(-peak, kind="stable")[:k]
    units = np.asarray([divmod(int(values[i].argmax()), w) for i in order], dtype=np.int64).reshape(-1, 2)
    return patches_at(m, layer, channel, [images[i] for i in order], scores=peak[order], indices=order,
                      units=units, dataset_size=len(images), layer_shape=feats.shapes[layer])


def patches_at(
    m: LoadedModel,
    layer: str,
    channel: int,
    images: Sequence[np.ndarray],
    scores: Sequence[float],
    indices: Sequence[int],
    units: np.ndarray,
    *,
    dataset_size: int,
    layer_shape: Sequence[int],
    projections: bool = True,
    index: str | None = None,
) -> TopPatches:
    """Zeiler & Fergus's Fig. 2 for winners already ranked (by ``top_patches`` or a mining index).

    Each image is cropped to the receptive field of its unit; with ``projections`` that unit
    also gets one deconvnet pass, cropped to the same box (only these images, never the dataset).

    Args:
        m: the model.
        layer: dotted layer name.
        channel: the channel ranked.
        images: the winners, uint8 H×W×3 (any size: seen at the model's input size).
        scores: their channel maxima, strongest first.
        indices: their dataset indices.
        units: (y, x) of each winner's maximum in the layer's output map.
        dataset_size: how many images the winners were ranked among.
        layer_shape: the layer's output shape for one image (C×h×w).
        projections: compute the deconvnet projections (``None`` in the result otherwise).
        index: the mining index the winners came from, if any.
    """
    from vizkit.methods.backprop import deconvnet

    rf = receptive_field(m, layer)
    units = np.asarray(units, dtype=np.int64).reshape(-1, 2)
    patches, projected, boxes = [], [], []
    error = None if projections else "projections were not asked for"
    for img, (y, x) in zip(images, units.tolist(), strict=True):
        x0, y0, x1, y1 = rf.box(y, x)
        seen = img if img.shape[:2] == (m.input_size, m.input_size) else m.resize(img)
        patches.append(np.ascontiguousarray(seen[y0:y1, x0:x1]))
        boxes.append((x0, y0, x1, y1))
        if error is None:
            try:
                proj = deconvnet(m, img, layer, channel, unit=(y, x)).raw[0].numpy()
            except FunctionalReLUError as exc:
                error = str(exc)
                continue
            projected.append(render.signed_image(proj[:, y0:y1, x0:x1]))
    return TopPatches(
        layer=layer, channel=int(channel), patches=tuple(patches),
        projections=None if error else tuple(projected),
        scores=np.asarray(scores, dtype=np.float32), indices=np.asarray(indices, dtype=np.int64),
        units=units, boxes=np.asarray(boxes, dtype=np.int64).reshape(-1, 4), receptive_field=rf,
        dataset_size=dataset_size, layer_shape=tuple(layer_shape), index=index,
        projection_error=error if error is not None and projections else None,
    )


def _on_canvas(crop: np.ndarray, box: Sequence[int], rf: ReceptiveField, unit: Sequence[int]) -> np.ndarray:
    """A clipped crop placed where it sits in its full field, on a mid-grey square."""
    side_y, side_x = (min(rf.size[i], rf.input_size) for i in range(2))
    canvas = np.full((side_y, side_x, 3), 128, np.uint8)
    ux0, uy0, _, _ = rf.box(*unit, clip=False)
    oy = int(np.clip(box[1] - uy0, 0, side_y - crop.shape[0]))
    ox = int(np.clip(box[0] - ux0, 0, side_x - crop.shape[1]))
    canvas[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = render.as_rgb_uint8(crop)
    return canvas


def patch_grid(result: TopPatches, which: str = "both", pad: int = 2) -> np.ndarray:
    """Zeiler & Fergus's Fig. 2 panel: the patches' grid, and beside it the projections' grid.

    Args:
        result: from ``top_patches``.
        which: ``"patches"``, ``"projections"`` or ``"both"``.
        pad: pixels between tiles.
    """
    if which not in ("patches", "projections", "both"):
        raise ValueError(f"which must be 'patches', 'projections' or 'both', got {which!r}.")
    if which != "patches" and result.projections is None:
        which = "patches"

    def grid(crops: Sequence[np.ndarray]) -> np.ndarray:
        placed = [_on_canvas(c, b, result.receptive_field, u)
                  for c, b, u in zip(crops, result.boxes, result.units, strict=True)]
        return render.tile(placed, pad=pad, fill=255)

    if which == "patches":
        return grid(result.patches)
    if which == "projections":
        return grid(result.projections)
    left, right = grid(result.patches), grid(result.projections)
    gap = np.full((left.shape[0], 4 * pad + 2, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


# ---------------------------------------------------------------------- command line
