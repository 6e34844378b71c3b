"""Localization of attribution maps against ground-truth boxes: the pointing game.

Zhang et al. 2016 ("Top-down neural attention by excitation backprop"): a hit when the map's
maximum falls inside the object's box (optionally within ``tolerance`` pixels of it). Scored over
the scenes the model classifies correctly, as is usual, or with ``top=5`` over those whose object's
class is among its five best (ImageNet networks on the photo composites of
``vizkit/data/composites.py``, where a texture can outrank the pasted object).

Occlusion points with its own map: Zeiler & Fergus (2013, Fig. 7) map the class probability as a
function of the *position* of the grey square, so its maximum is the centre of the square whose
covering hurts most. The per-pixel map (each pixel the mean drop of the squares covering it, as
captum computes it) spreads every drop over a whole square; its maximum can sit where squares
reaching over the object's edge overlap, outside the box.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vizkit.core.results import Explanation
from vizkit.data.scenes import Scenes
from vizkit.methods.occlusion.sensitivity import OcclusionRun
from vizkit.methods.prediction import predict
from vizkit.methods.registry import list_methods
from vizkit.models.base import LoadedModel


def pointing_methods() -> list[str]:
    """The registered methods the pointing game can score: maps of a class target."""
    return [spec.name for spec in list_methods(target="class", result=Explanation)]


def standard_tolerance(size: int) -> float:
    """Zhang et al.'s 15-pixel tolerance at 224×224, scaled to a ``size``-pixel input."""
    return 15.0 * size / 224.0


@dataclass(frozen=True)
class PointingGame:
    """Result of the pointing game.

    Attributes:
        method: name of the explanation method.
        hits: scenes whose map maximum lies in the box.
        total: correctly classified scenes scored.
        rate: hits / total.
        skipped: misclassified scenes left out (label not among the ``top`` best classes).
    """

    method: str
    hits: int
    total: int
    rate: float
    skipped: int


def _plateau(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the cells at the maximum of ``values`` (NaN ignored)."""
    peak = float(np.nanmax(values))
    return np.nonzero(values >= peak - 1e-6 * max(abs(peak), 1e-12))


def peak_point(explanation_map: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of the maximum of a pixel map, in map pixels (pixel centres at +0.5).

    The maximum can be a plateau (occlusion maps are constant over the pixels one set of patches
    covers): its centre is taken, not its first pixel in raster order.
    """
    ys, xs = _plateau(explanation_map)
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def explanation_peak(result: Explanation) -> tuple[float, float]:
    """Where ``result`` points, ``(x, y)`` in the pixels of ``result.map``.

    For occlusion, the centre of the most damaging square, clipped to the image (a plateau of
    equal drops: the mean of their centres); for every other method, the maximum of the map.
    """
    run = result.info
    if isinstance(run, OcclusionRun) and result.raw is not None:
        drop = np.asarray(result.raw, dtype=np.float64)  # NaN where a run stopped early
        if not np.all(np.isnan(drop)):
            iy, ix = _plateau(drop)
            height, width = result.map.shape
            ys, xs = (np.asarray(v, dtype=np.float64) for v in run.positions)
            y0, x0 = ys[iy], xs[ix]
            cy = (y0 + np.minimum(y0 + run.patch, height)) / 2
            cx = (x0 + np.minimum(x0 + run.patch, width)) / 2
            return float(cx.mean()), float(cy.mean())
    return peak_point(result.map)


def in_box(point: tuple[float, float], box, scale: float = 1.0, tolerance: float = 0.0) -> bool:
    """Whether ``point`` (x, y) lies in ``box`` (x0, y0, x1, y1) scaled by ``scale``, ± ``tolerance``."""
    cx, cy = point
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    return (x0 - tolerance <= cx <= x1 + tolerance) and (y0 - tolerance <= cy <= y1 + tolerance)


def point_in_box(explanation_map: np.ndarray, box, scale: float = 1.0, tolerance: float = 0.0) -> bool:
    """Whether the maximum of ``explanation_map`` lies in ``box`` (x0, y0, x1, y1; x1/y1 exclusive).

    ``scale`` maps box coordinates (scene pixels) to map pixels.
    """
    return in_box(peak_point(explanation_map), box, scale, tolerance)


def pointing_game(
    m: LoadedModel,
    scenes: Scenes,
    explain: Callable[[LoadedModel, np.ndarray, int], Explanation],
    method: str,
    tolerance: float = 0.0,
    progress: Callable[[int, int], object] | None = None,
    point: Callable[[Explanation], tuple[float, float]] = explanation_peak,
    top: int = 1,
) -> PointingGame:
    """Pointing game of ``explain(m, image, label)`` over the correctly classified ``scenes``.

    ``point`` says where an explanation points (default :func:`explanation_peak`); ``top``
    counts a scene when its label is among the model's ``top`` best classes.
    """
    return pointing_games(m, scenes, explain, method, (tolerance,), progress, point, top)[0]


def pointing_games(
    m: LoadedModel,
    scenes: Scenes,
    explain: Callable[[LoadedModel, np.ndarray, int], Explanation],
    method: str,
    tolerances: Sequence[float],
    progress: Callable[[int, int], object] | None = None,
    point: Callable[[Explanation], tuple[float, float]] = explanation_peak,
    top: int = 1,
) -> list[PointingGame]:
    """:func:`pointing_game` at several tolerances, explaining each scene once."""
    hits = [0] * len(tolerances)
    total = skipped = 0
    for i, (image, label, box) in enumerate(zip(scenes.images, scenes.labels, scenes.boxes, strict=True)):
        best = [name for name, _ in predict(m, image, top=top)]
        if m.classes[int(label)] not in best:
            skipped += 1
        else:
            result = explain(m, image, int(label))
            scale = result.map.shape[1] / image.shape[1]
            where = point(result)
            for k, tolerance in enumerate(tolerances):
                hits[k] += in_box(where, box, scale=scale, tolerance=tolerance)
            total += 1
        if progress is not None:
            progress(i + 1, len(scenes))
    return [PointingGame(method=method, hits=h, total=total, rate=h / max(total, 1), skipped=skipped)
            for h in hits]
