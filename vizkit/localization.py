"""Localization of attribution maps against ground-truth boxes: the pointing game.

Zhang et al. 2016 ("Top-down neural attention by excitation backprop"): a hit when the map's
maximum falls inside the object's box (optionally within ``tolerance`` pixels of it). Scored over
the scenes the model classifies correctly, as is usual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vizkit.data import Scenes
from vizkit.explanation import Explanation
from vizkit.models import LoadedModel
from vizkit.predict import predict


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
        skipped: misclassified scenes left out.
    """

    method: str
    hits: int
    total: int
    rate: float
    skipped: int


def point_in_box(explanation_map: np.ndarray, box, scale: float = 1.0, tolerance: float = 0.0) -> bool:
    """Whether the maximum of ``explanation_map`` lies in ``box`` (x0, y0, x1, y1; x1/y1 exclusive).

    ``scale`` maps box coordinates (scene pixels) to map pixels.
    """
    # The maximum can be a plateau (occlusion maps are constant over the pixels one set of patches
    # covers): point at the plateau's centre, not at its first pixel in raster order.
    peak = float(np.max(explanation_map))
    ys, xs = np.nonzero(explanation_map >= peak - 1e-6 * max(abs(peak), 1e-12))
    cx, cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    return (x0 - tolerance <= cx <= x1 + tolerance) and (y0 - tolerance <= cy <= y1 + tolerance)


def pointing_game(
    m: LoadedModel,
    scenes: Scenes,
    explain: Callable[[LoadedModel, np.ndarray, int], Explanation],
    method: str,
    tolerance: float = 0.0,
    progress: Callable[[int, int], object] | None = None,
) -> PointingGame:
    """Pointing game of ``explain(m, image, label)`` over the correctly classified ``scenes``."""
    hits = total = skipped = 0
    for i, (image, label, box) in enumerate(zip(scenes.images, scenes.labels, scenes.boxes, strict=True)):
        top_class = m.classes.index(predict(m, image, top=1)[0][0])
        if top_class != int(label):
            skipped += 1
            continue
        result = explain(m, image, int(label))
        scale = result.map.shape[1] / image.shape[1]
        hits += point_in_box(result.map, box, scale=scale, tolerance=tolerance)
        total += 1
        if progress is not None:
            progress(i + 1, len(scenes))
    return PointingGame(method=method, hits=hits, total=total, rate=hits / max(total, 1), skipped=skipped)


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="fashion-zf")
    parser.add_argument("--scenes", type=int, default=1000, help="how many bundled scenes to score")
    parser.add_argument("--methods", default="cam,grad_cam,occlusion")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="pixels around the box (default: Zhang et al.'s 15 px at 224, scaled)")


def run(args) -> int:
    from tqdm import tqdm

    from vizkit.cam import cam, grad_cam, grad_cam_pp
    from vizkit.data import bundled_subset
    from vizkit.models import load_model
    from vizkit.occlusion import occlusion

    methods = {
        "cam": lambda m, img, t: cam(m, img, t),
        "grad_cam": lambda m, img, t: grad_cam(m, img, t),
        "grad_cam_pp": lambda m, img, t: grad_cam_pp(m, img, t),
        "occlusion": lambda m, img, t: occlusion(m, img, t, patch=12, stride=4, baseline="mean"),
    }
    m = load_model(args.model)
    subset = bundled_subset()
    n = min(args.scenes, len(subset))
    scenes = Scenes(subset.images[:n], subset.labels[:n], subset.boxes[:n])
    tolerance = standard_tolerance(m.input_size) if args.tolerance is None else args.tolerance
    for name in args.methods.split(","):
        for tol in sorted({0.0, tolerance}):
            bar = tqdm(total=n, desc=name, leave=False)
            result = pointing_game(m, scenes, methods[name], name, tol,
                                   progress=lambda done, total, bar=bar: bar.update(done - bar.n))
            bar.close()
            print(f"{name:12s} tolerance {tol:.1f} px: pointing game {result.rate:.1%} ({result.hits}/"
                  f"{result.total} correctly classified scenes; {result.skipped} misclassified left out)")
    return 0
