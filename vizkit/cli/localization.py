"""``python -m vizkit localization``: the command line of ``vizkit.metrics.localization``."""

from __future__ import annotations

from vizkit.data.scenes import Scenes
from vizkit.metrics.localization import explanation_peak, peak_point, pointing_games, standard_tolerance


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="fashion-zf")
    parser.add_argument("--scenes", type=int, default=1000, help="how many bundled scenes to score")
    parser.add_argument("--methods", default="cam,grad_cam,occlusion",
                        help="comma-separated; also grad_cam_pp, and occlusion_pixels (occlusion "
                             "scored at the maximum of its per-pixel map instead of its square)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="pixels around the box (default: Zhang et al.'s 15 px at 224, scaled)")


def run(args) -> int:
    from tqdm import tqdm

    from vizkit.data.scenes import bundled_subset
    from vizkit.methods.class_maps import cam, grad_cam, grad_cam_pp
    from vizkit.methods.occlusion.sensitivity import occlusion
    from vizkit.models.registry import load_model

    def occluded(m, img, t):
        return occlusion(m, img, t, patch=12, stride=4, baseline="mean")

    methods = {
        "cam": (lambda m, img, t: cam(m, img, t), explanation_peak),
        "grad_cam": (lambda m, img, t: grad_cam(m, img, t), explanation_peak),
        "grad_cam_pp": (lambda m, img, t: grad_cam_pp(m, img, t), explanation_peak),
        "occlusion": (occluded, explanation_peak),
        "occlusion_pixels": (occluded, lambda result: peak_point(result.map)),
    }
    m = load_model(args.model)
    subset = bundled_subset()
    n = min(args.scenes, len(subset))
    scenes = Scenes(subset.images[:n], subset.labels[:n], subset.boxes[:n])
    tolerance = standard_tolerance(m.input_size) if args.tolerance is None else args.tolerance
    names = args.methods.split(",")
    unknown = [name for name in names if name not in methods]
    if unknown:
        print(f"unknown method {', '.join(unknown)}: choose from {', '.join(methods)}")
        return 2
    for name in names:
        explain, point = methods[name]
        tolerances = sorted({0.0, tolerance})
        bar = tqdm(total=n, desc=name, leave=False)
        results = pointing_games(m, scenes, explain, name, tolerances, point=point,
                                 progress=lambda done, total, bar=bar: bar.update(done - bar.n))
        bar.close()
        for tol, result in zip(tolerances, results, strict=True):
            print(f"{name:12s} tolerance {tol:.1f} px: pointing game {result.rate:.1%} ({result.hits}/"
                  f"{result.total} correctly classified scenes; {result.skipped} misclassified left out)")
    return 0
