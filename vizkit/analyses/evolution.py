"""Feature evolution during training (Zeiler & Fergus 2013, section 4.1, Fig. 4).

For each training snapshot: the strongest activation of a layer over a dataset, the image patch
under that unit's receptive field, its deconvnet projection to pixel space (Zeiler & Fergus's
Fig. 4 shows these per epoch for a fixed set of feature maps), and the first-layer filters.
Lower layers converge within a few epochs; upper layers only after many.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vizkit.analyses.features import layer_features
from vizkit.core.assets import ASSETS
from vizkit.models.base import LoadedModel
from vizkit.models.registry import load_model

SNAPSHOTS = ASSETS / "snapshots"
_EPOCH = re.compile(r"-epoch(\d+)\.safetensors$")


@dataclass(frozen=True)
class EvolutionStep:
    """One snapshot's strongest unit and first-layer filters.

    Attributes:
        epoch: training epoch of the snapshot (0: initialization).
        channel: the feature map shown.
        image_index: dataset image with the strongest activation of ``channel``.
        unit: (y, x) of that activation in the layer's map.
        activation: its value.
        box: the unit's receptive field (x0, y0, x1, y1) in input pixels, unclipped.
        patch: the image under the receptive field, uint8 (padded with the mean colour where
            the field leaves the image).
        projection: the deconvnet projection of that single unit on the same field, uint8
            (zero is mid-grey).
        filters: the first convolution's kernels as one picture.
    """

    epoch: int
    channel: int
    image_index: int
    unit: tuple[int, int]
    activation: float
    box: tuple[int, int, int, int]
    patch: np.ndarray
    projection: np.ndarray
    filters: np.ndarray


@dataclass(frozen=True)
class Evolution:
    """Feature evolution of one layer over training snapshots.

    Attributes:
        layer: the layer analysed.
        steps: per snapshot and channel, in epoch order (channel order within an epoch).
        n_images: dataset images searched per snapshot.
        first_conv: the layer whose filters are shown.
    """

    layer: str
    steps: tuple[EvolutionStep, ...]
    n_images: int
    first_conv: str

    @property
    def epochs(self) -> list[int]:
        return sorted({s.epoch for s in self.steps})


def snapshot_paths(folder: str | Path = SNAPSHOTS, model: str = "fashion-zf") -> list[tuple[int, Path]]:
    """``(epoch, path)`` of ``<model>-epoch<N>.safetensors`` files in ``folder``, by epoch."""
    found = []
    for path in Path(folder).glob(f"{model}-epoch*.safetensors"):
        match = _EPOCH.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _max_and_argmax(t: torch.Tensor) -> torch.Tensor:
    flat = t.flatten(2)
    values, where = flat.max(2)
    return torch.cat([values, where.float()], 1)


def _crop(img: np.ndarray, box: tuple[int, int, int, int], fill: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    out = np.empty((y1 - y0, x1 - x0) + img.shape[2:], dtype=img.dtype)
    out[...] = fill
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


def strongest_units(
    m: LoadedModel, images: np.ndarray, layer: str, channels: Sequence[int] | None = None
) -> list[tuple[int, int, tuple[int, int], float]]:
    """``(channel, image_index, (y, x), activation)`` of the largest activation per channel.

    ``channels=None`` gives the single strongest unit of the whole layer.
    """
    feats = layer_features(m, images, [layer], pool=_max_and_argmax, batch_size=100)
    shape = feats.shapes[layer]
    if len(shape) != 3:
        raise ValueError(f"Layer {layer!r} outputs shape {shape}; feature evolution needs C×h×w maps.")
    c, _, w = shape
    v = feats.values[layer]
    maxima, where = v[:, :c], v[:, c:].astype(np.int64)
    if channels is None:
        channels = [int(np.unravel_index(np.argmax(maxima), maxima.shape)[1])]
    out = []
    for ch in channels:
        if not 0 <= int(ch) < c:
            raise ValueError(f"Channel {ch} is outside layer {layer!r}'s {c} channels.")
        i = int(np.argmax(maxima[:, ch]))
        pos = int(where[i, ch])
        out.append((int(ch), i, (pos // w, pos % w), float(maxima[i, ch])))
    return out


def feature_evolution(
    layer: str = "features.relu5",
    channels: Sequence[int] | None = None,
    snapshots: Sequence[tuple[int, str | Path]] | None = None,
    images: np.ndarray | None = None,
    *,
    model: str = "fashion-zf",
    limit: int = 500,
    device: str | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Evolution:
    """The strongest unit's top patch and deconvnet projection, and the first-layer filters, at
    each training snapshot (Zeiler & Fergus Fig. 4).

    Args:
        layer: dotted layer name.
        channels: feature maps to follow through training (Zeiler & Fergus follow fixed maps);
            ``None``: at each snapshot, the channel holding the layer's strongest activation.
        snapshots: ``(epoch, path)`` pairs (default: ``snapshot_paths()``, the bundled model's).
        images: N×S×S×3 uint8 dataset to search (default: the bundled held-out scenes).
        model: registry architecture of the snapshots.
        limit: images searched (the first ``limit``).
        device: where to run (default: ``pick_device``).
        progress: ``progress(done, total)`` over snapshots.
    """
    from vizkit.methods.backprop import deconvnet
    from vizkit.methods.filters import filter_grid, filter_weights
    from vizkit.methods.receptive_fields import receptive_field
    from vizkit.render import signed_image

    snaps = list(snapshots) if snapshots is not None else snapshot_paths(model=model)
    if not snaps:
        raise ValueError(f"No training snapshots found (expected {SNAPSHOTS}/{model}-epoch<N>.safetensors).")
    if images is None:
        from vizkit.data.scenes import bundled_subset

        images = bundled_subset().images
    images = np.asarray(images)[:limit]
    if len(images) == 0:
        raise ValueError("No images to search.")
    steps = []
    first_conv = ""
    for k, (epoch, path) in enumerate(snaps):
        m = load_model(model, device=device, weights=path)
        first_conv = m.conv_layers()[0]
        grid = filter_grid(filter_weights(m, first_conv))
        field = receptive_field(m, layer)
        fill = np.round(255 * np.asarray(m.spec.mean)).astype(np.uint8)
        for ch, i, (y, x), value in strongest_units(m, images, layer, channels):
            img = m.resize(images[i])
            box = field.box(y, x, clip=False)
            proj = deconvnet(m, img, layer, ch, unit=(y, x)).raw[0].permute(1, 2, 0).numpy()
            steps.append(EvolutionStep(
                epoch=int(epoch), channel=ch, image_index=i, unit=(y, x), activation=value, box=box,
                patch=_crop(img, box, fill), projection=signed_image(_crop(proj, box, np.zeros(3))),
                filters=grid,
            ))
        if progress is not None:
            progress(k + 1, len(snaps))
    return Evolution(layer=layer, steps=tuple(steps), n_images=len(images), first_conv=first_conv)


def evolution_picture(result: Evolution, zoom: int = 2, pad: int = 2) -> np.ndarray:
    """Zeiler & Fergus Fig. 4 layout: per channel, a row of projections over epochs above a row
    of patches (epochs left to right)."""
    from vizkit.render import tile

    epochs = result.epochs
    rows = []
    for ch in dict.fromkeys(s.channel for s in result.steps):
        by_epoch = {s.epoch: s for s in result.steps if s.channel == ch}
        rows.append([by_epoch[e].projection if e in by_epoch else None for e in epochs])
        rows.append([by_epoch[e].patch if e in by_epoch else None for e in epochs])
    side = max(max(p.shape[:2]) for row in rows for p in row if p is not None)
    blank = np.full((side, side, 3), 255, np.uint8)
    cells = []
    for row in rows:
        for p in row:
            cell = blank.copy() if p is None else p
            cells.append(np.kron(cell, np.ones((zoom, zoom, 1), np.uint8)) if zoom > 1 else cell)
    return tile(cells, cols=len(epochs), pad=pad)


def evolution_rows(result: Evolution) -> list[dict]:
    """One row per snapshot and channel: epoch, channel, image, unit, activation."""
    return [{"epoch": s.epoch, "channel": s.channel, "image": s.image_index, "unit_y": s.unit[0],
             "unit_x": s.unit[1], "activation": round(s.activation, 5)} for s in result.steps]


# ---------------------------------------------------------------- command line
