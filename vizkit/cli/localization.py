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

# Settings a method is scored with, per kind of data. Occlusion's square is about a fifth of the
# input side: 12 px every 4 px on the bundled 64×64 scenes (the README's figures); 48 px on photos,
# where a stride of half the total stride (32) keeps the exact engine's batches full.
SETTINGS = {
    "scenes": {"occlusion": {"patch": 12, "stride": 4, "baseline": "mean"}},
    "photos": {"occlusion": {"patch": 48, "stride": 16, "baseline": "mean"}},
}


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="fashion-zf")
    parser.add_argument("--data", choices=["auto", "scenes", "photos"], default="auto",
                        help="the bundled FashionScenes, or photo composites (objects cut from the "
                             "sample photos, pasted on textures) for ImageNet models; auto: by model")
    parser.add_argument("--scenes", type=int, default=None,
                        help="how many scenes to score (default: 1000 bundled, 200 composites)")
    parser.add_argument("--top", type=int, default=None,
                        help="count a scene when its class is among the model's top N "
                             "(default: 1 on the bundled scenes, 5 on the composites)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photo composites")
    parser.add_argument("--methods", default="cam,grad_cam,occlusion",
                        help=f"comma-separated, from {', '.join(pointing_methods())}; occlusion_pixels "
                             "scores occlusion at the maximum of its per-pixel map instead of its square")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="pixels around the box (default: Zhang et al.'s 15 px at 224, scaled)")


def choices(data: str = "scenes") -> dict[str, tuple]:
    """Every name ``--methods`` takes: ``(explain, point)`` of each registered pointing method,
    with its settings for ``data`` (``"scenes"`` or ``"photos"``)."""
    out = {}
    for name in pointing_methods():
        spec, settings = get_method(name), SETTINGS[data].get(name, {})

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

    names = args.methods.split(",")
    unknown = [name for name in names if name not in choices()]
    if unknown:
        print(f"unknown method {', '.join(unknown)}: choose from {', '.join(choices())}")
        return 2
    m = load_model(args.model)
    photos = args.data == "photos" or (args.data == "auto" and not m.spec.bundled)
    methods = choices("photos" if photos else "scenes")
    if photos:
        from vizkit.data.composites import photo_composites

        scenes = photo_composites(m.classes, n=args.scenes or 200, size=m.input_size, seed=args.seed)
        n, top = len(scenes), args.top or 5
    else:
        subset = bundled_subset()
        n = min(args.scenes or 1000, len(subset))
        scenes = Scenes(subset.images[:n], subset.labels[:n], subset.boxes[:n])
        top = args.top or 1
    tolerance = standard_tolerance(m.input_size) if args.tolerance is None else args.tolerance
    for name in names:
        explain, point = methods[name]
        tolerances = sorted({0.0, tolerance})
        bar = tqdm(total=n, desc=name, leave=False)
        results = pointing_games(m, scenes, explain, name, tolerances, point=point, top=top,
                                 progress=lambda done, total, bar=bar: bar.update(done - bar.n))
        bar.close()
        for tol, result in zip(tolerances, results, strict=True):
            counted = "correctly classified" if top == 1 else f"class in the top {top}"
            print(f"{name:12s} tolerance {tol:.1f} px: pointing game {result.rate:.1%} ({result.hits}/"
                  f"{result.total} scenes, {counted}; {result.skipped} others left out)")
    return 0
