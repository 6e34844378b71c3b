"""Correspondence analysis (Zeiler & Fergus 2013, section 5.2, Table 1).

Occlude the same part of the object in many images. For image ``i`` and layer ``l`` the feature
change is ``ε_i^l = x_i^l − x̃_i^l`` (original minus occluded). Zeiler & Fergus measure how
consistently a layer responds to that part across images by

    Δ_l = Σ_{i≠j} H(sign(ε_i^l), sign(ε_j^l)),

``H`` the Hamming distance, and compare it with occlusions of random parts of the same size. A
lower value than random means the layer relates that part across images (e.g. eyes and noses of
different dogs). Here ``Δ_l`` is reported as the mean over pairs of the *fraction* of units whose
sign differs, so layers of different widths are comparable; pairs are taken within each class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from vizkit.analyses.features import default_layers, layer_features
from vizkit.core.hooks import find_layer
from vizkit.models.base import LoadedModel

Region = tuple[float, float, float, float]

# Parts as fractions (x0, y0, x1, y1) of the object's box.
PARTS: dict[str, Region] = {
    "top-left": (0.0, 0.0, 0.5, 0.5),
    "top-right": (0.5, 0.0, 1.0, 0.5),
    "bottom-left": (0.0, 0.5, 0.5, 1.0),
    "bottom-right": (0.5, 0.5, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0),
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 1.0, 1.0),
    "centre": (0.25, 0.25, 0.75, 0.75),
}


@dataclass(frozen=True)
class Correspondence:
    """Per-layer sign-consistency of feature changes under a part occlusion vs random ones.

    Attributes:
        layers: the layers analysed.
        part: the occluded region as fractions (x0, y0, x1, y1) of each object's box.
        part_distance: layer → mean normalized Hamming distance over pairs, part occlusion.
        random_distance: layer → the same with random occlusions of the same size in the box.
        part_sem, random_sem: layer → standard error of those means over pairs.
        units: layer → feature-vector length (units compared per pair).
        n_images: images used; ``n_pairs``: pairs compared (within each class).
        rects: N×4 pixel rectangles (x0, y0, x1, y1) of the part occlusions; ``random_rects``
            the random ones.
    """

    layers: tuple[str, ...]
    part: Region
    part_distance: dict[str, float]
    random_distance: dict[str, float]
    part_sem: dict[str, float]
    random_sem: dict[str, float]
    units: dict[str, int]
    n_images: int
    n_pairs: int
    rects: np.ndarray
    random_rects: np.ndarray


def part_rects(boxes: np.ndarray, part: Region, size: int) -> np.ndarray:
    """Integer pixel rectangles (x0, y0, x1, y1), x1/y1 exclusive, of ``part`` of each box."""
    fx0, fy0, fx1, fy1 = part
    if not (0 <= fx0 < fx1 <= 1 and 0 <= fy0 < fy1 <= 1):
        raise ValueError(f"A part is (x0, y0, x1, y1) with 0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1, got {part}.")
    b = np.asarray(boxes, dtype=np.float64)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    rects = np.stack([b[:, 0] + fx0 * w, b[:, 1] + fy0 * h, b[:, 0] + fx1 * w, b[:, 1] + fy1 * h], 1)
    rects = np.round(rects).astype(np.int64).clip(0, size)
    # At least one pixel each way, so every image is really occluded.
    rects[:, 2] = np.maximum(rects[:, 2], np.minimum(rects[:, 0] + 1, size))
    rects[:, 0] = np.minimum(rects[:, 0], rects[:, 2] - 1)
    rects[:, 3] = np.maximum(rects[:, 3], np.minimum(rects[:, 1] + 1, size))
    rects[:, 1] = np.minimum(rects[:, 1], rects[:, 3] - 1)
    return rects


def random_rects(rects: np.ndarray, boxes: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Rectangles of the same sizes as ``rects`` at uniformly random positions inside each box.

    Inside the box (random parts of the object), so the random baseline hides as much object
    as the part does, not background.
    """
    b = np.round(np.asarray(boxes, dtype=np.float64)).astype(np.int64).clip(0, size)
    w, h = rects[:, 2] - rects[:, 0], rects[:, 3] - rects[:, 1]
    lo_x, lo_y = b[:, 0], b[:, 1]
    hi_x = np.maximum(lo_x, b[:, 2] - w)
    hi_y = np.maximum(lo_y, b[:, 3] - h)
    x0 = rng.integers(lo_x, hi_x + 1).clip(0, size - w)
    y0 = rng.integers(lo_y, hi_y + 1).clip(0, size - h)
    return np.stack([x0, y0, x0 + w, y0 + h], 1)


def occlude(images: np.ndarray, rects: np.ndarray, fill: Sequence[float]) -> np.ndarray:
    """Copies of ``images`` (N×S×S×3 uint8) with each rectangle filled with ``fill``."""
    out = images.copy()
    colour = np.clip(np.round(np.asarray(fill, dtype=np.float64)), 0, 255).astype(np.uint8)
    for img, (x0, y0, x1, y1) in zip(out, rects, strict=True):
        img[y0:y1, x0:x1] = colour
    return out


def change_signs(original: np.ndarray, occluded: np.ndarray, rtol: float = 1e-5) -> np.ndarray:
    """``sign(ε)`` with ``ε = x − x̃`` per row, as int8; changes within float noise count as 0."""
    eps = np.subtract(original, occluded, dtype=np.float32)
    tol = (rtol * (np.abs(original).max(1, keepdims=True) + 1e-12)).astype(np.float32)
    return (eps > tol).astype(np.int8) - (eps < -tol).astype(np.int8)


def pairwise_hamming(signs: np.ndarray) -> np.ndarray:
    """N×N Hamming distances between rows of a {−1, 0, 1} matrix, as fractions of its width.

    ``H(a, b) = D − Σ_c #{k: a_k = c = b_k}`` from Gram matrices of indicator rows. Columns that
    are 0 in every row agree in every pair, so only the others are multiplied (an occlusion
    changes few units of a low layer).
    """
    n, d = signs.shape
    live = signs[:, np.any(signs != 0, axis=0)]
    pos = (live > 0).astype(np.float32)
    neg = (live < 0).astype(np.float32)
    nz = pos + neg
    count = nz.sum(1)
    # Both zero: (D' − |a| − |b| + a·b) over live columns, with a, b the nonzero indicators.
    both_zero = live.shape[1] - count[:, None] - count[None, :] + (nz @ nz.T)
    same = (d - live.shape[1]) + both_zero.astype(np.float64) + pos @ pos.T + neg @ neg.T
    return (d - same) / d


def _upper_pairs(signs: np.ndarray) -> np.ndarray:
    """Hamming fractions of every unordered pair of rows (i < j)."""
    dist = pairwise_hamming(signs)
    return dist[np.triu_indices(len(signs), 1)]


def correspondence(
    m: LoadedModel,
    images: np.ndarray,
    boxes: np.ndarray,
    part: str | Region = "top-left",
    labels: np.ndarray | None = None,
    layers: Sequence[str] | None = None,
    *,
    seed: int = 0,
    batch_size: int = 50,
    progress: Callable[[int, int], object] | None = None,
) -> Correspondence:
    """Mean Hamming distance of feature-change signs over image pairs, per layer (Z&F Table 1).

    Args:
        m: the model.
        images: N×S×S×3 uint8 at the model's input size (e.g. ``bundled_subset().images``).
        boxes: N×4 object boxes (x0, y0, x1, y1) in pixels.
        part: a name in ``PARTS`` or fractions (x0, y0, x1, y1) of each box (a drawn region).
        labels: class per image; pairs are formed within a class (all pairs when ``None``).
        layers: layers to analyse (default: ``default_layers``).
        seed: seeds the random occlusions.
        batch_size: images per group of forward passes (memory: full feature vectors).
        progress: called as ``progress(done, total)`` over the images.
    """
    region = PARTS[part] if isinstance(part, str) and part in PARTS else part
    if isinstance(region, str):
        raise ValueError(f"Unknown part {part!r}; use one of {', '.join(PARTS)} or fractions of the box.")
    region = tuple(float(v) for v in region)
    images = np.asarray(images)
    s = m.input_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
        raise ValueError(f"images must be N×{s}×{s}×3 uint8 at the model's input size, got "
                         f"{images.shape} {images.dtype}.")
    n = len(images)
    if n < 2:
        raise ValueError("Correspondence needs at least two images.")
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (n, 4):
        raise ValueError(f"boxes must be N×4 (x0, y0, x1, y1), got {boxes.shape}.")
    groups = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels)
    layers = tuple(dict.fromkeys(layers or default_layers(m)))
    for name in layers:
        find_layer(m.module, name)
    rects = part_rects(boxes, region, s)
    rand = random_rects(rects, boxes, s, np.random.default_rng(seed))
    fill = [255 * c for c in m.spec.mean]

    # Signs for every image at one layer would be N×D int8 (≈ 200 MB for 1000 images at a
    # 48×64×64 layer), so pairs are formed group by group: a class's images at a time.
    part_vals: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    rand_vals: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    units: dict[str, int] = {}
    done = 0
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        signs_part: dict[str, list[np.ndarray]] = {name: [] for name in layers}
        signs_rand: dict[str, list[np.ndarray]] = {name: [] for name in layers}
        for start in range(0, len(members), batch_size):
            idx = members[start:start + batch_size]
            batch = np.concatenate([images[idx], occlude(images[idx], rects[idx], fill),
                                    occlude(images[idx], rand[idx], fill)])
            feats = layer_features(m, batch, layers, pool="none", batch_size=len(batch))
            k = len(idx)
            for name in layers:
                v = feats.values[name]
                units[name] = v.shape[1]
                signs_part[name].append(change_signs(v[:k], v[k:2 * k]))
                signs_rand[name].append(change_signs(v[:k], v[2 * k:]))
            done += k
            if progress is not None:
                progress(done, n)
        if len(members) < 2:
            continue
        for name in layers:
            part_vals[name].append(_upper_pairs(np.concatenate(signs_part[name])))
            rand_vals[name].append(_upper_pairs(np.concatenate(signs_rand[name])))
    n_pairs = sum(len(v) for v in part_vals[layers[0]])
    if n_pairs == 0:
        raise ValueError("No two images share a class, so there are no pairs to compare.")

    def mean_sem(chunks: list[np.ndarray]) -> tuple[float, float]:
        v = np.concatenate(chunks)
        return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0

    part_stats = {name: mean_sem(part_vals[name]) for name in layers}
    rand_stats = {name: mean_sem(rand_vals[name]) for name in layers}
    return Correspondence(
        layers=layers, part=region,
        part_distance={k: v[0] for k, v in part_stats.items()},
        random_distance={k: v[0] for k, v in rand_stats.items()},
        part_sem={k: v[1] for k, v in part_stats.items()},
        random_sem={k: v[1] for k, v in rand_stats.items()},
        units=units, n_images=n, n_pairs=n_pairs, rects=rects, random_rects=rand,
    )


def correspondence_rows(result: Correspondence) -> list[dict]:
    """Table 1 as rows: layer, part Δ ± s.e.m., random Δ ± s.e.m., their difference, units."""
    return [{
        "layer": name,
        "part": round(result.part_distance[name], 5),
        "part_sem": round(result.part_sem[name], 5),
        "random": round(result.random_distance[name], 5),
        "random_sem": round(result.random_sem[name], 5),
        "random_minus_part": round(result.random_distance[name] - result.part_distance[name], 5),
        "units": result.units[name],
        "pairs": result.n_pairs,
    } for name in result.layers]


def correspondence_figure(result: Correspondence, part_name: str = "part") -> go.Figure:
    """Grouped bars per layer: part occlusion vs random occlusion (lower: more consistent)."""
    x = list(result.layers)
    fig = go.Figure([
        go.Bar(name=f"{part_name} occluded", x=x, y=[result.part_distance[k] for k in x],
               error_y=dict(type="data", array=[result.part_sem[k] for k in x])),
        go.Bar(name="random occlusion (same size)", x=x, y=[result.random_distance[k] for k in x],
               error_y=dict(type="data", array=[result.random_sem[k] for k in x])),
    ])
    fig.update_layout(barmode="group", yaxis_title="mean Hamming distance of sign(ε) (fraction)",
                      xaxis_title="layer", height=360, margin=dict(l=10, r=10, t=40, b=10),
                      title=f"Correspondence over {result.n_pairs} pairs of {result.n_images} images")
    return fig


# ---------------------------------------------------------------- command line
