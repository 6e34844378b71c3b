"""``python -m vizkit localization``: the command line of ``vizkit.metrics.localization``."""

from __future__ import annotations

from vizkit.data.scenes import Scenes
from vizkit.methods.registry import get_method
from vizkit.metrics.localization import (
    explanation_peak,
    peak_point,
    pointing_games,
    pointing_methods,
    standard_tolerance,
)

# Settings a method is scored with on the bundled 64×64 scenes (the README's figures): occlusion
# with 12-px squares every 4 px.
SETTINGS = {"occlusion": {"patch": 12, "stride": 4, "baseline": "mean"}}


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="fashion-zf")
    parser.add_argument("--scenes", type=int, default=1000, help="how many bundled scenes to score")
    parser.add_argument("--methods", default="cam,grad_cam,occlusion",
                        help=f"comma-separated, from {', '.join(pointing_methods())}; occlusion_pixels "
                             "scores occlusion at the maximum of its per-pixel map instead of its square")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="pixels around the box (default: Zhang et al.'s 15 px at 224, scaled)")


def choices() -> dict[str, tuple]:
    """Every name ``--methods`` takes: ``(explain, point)`` of each registered pointing method."""
    out = {}
    for name in pointing_methods():
        spec, settings = get_method(name), SETTINGS.get(name, {})

        def explain(m, img, t, spec=spec, settings=settings):
            return spec.run(m, img, target=t, **settings)

        out[name] = (explain, explanation_peak)
    # Occlusion points at its most damaging square; occlusion_pixels at its per-pixel map's maximum.
    out["occlusion_pixels"] = (out["occlusion"][0], lambda result: peak_point(result.map))
    return out


def run(args) -> int:
    from tqdm import tqdm

    from vizkit.data.scenes import bundled_subset
    from vizkit.models.registry import load_model

    methods = choices()
    names = args.methods.split(",")
    unknown = [name for name in names if name not in methods]
    if unknown:
        print(f"unknown method {', '.join(unknown)}: choose from {', '.join(methods)}")
        return 2
    m = load_model(args.model)
    subset = bundled_subset()
    n = min(args.scenes, len(subset))
    scenes = Scenes(subset.images[:n], subset.labels[:n], subset.boxes[:n])
    tolerance = standard_tolerance(m.input_size) if args.tolerance is None else args.tolerance
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
