"""``python -m vizkit invariance``: the command line of ``vizkit.analyses.invariance``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vizkit.analyses.features import write_table
from vizkit.analyses.invariance import TRANSFORMS, invariance, invariance_figure, invariance_rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file")
    parser.add_argument("--model", default="fashion-zf")
    parser.add_argument("--weights", default="default", help="weights file (default: the model's own)")
    parser.add_argument("--transform", choices=TRANSFORMS, action="append",
                        help="transform(s) to run (default: all four)")
    parser.add_argument("--values", type=float, nargs="+", help="the transform's values (one transform only)")
    parser.add_argument("--layers", nargs="+", help="layers to compare (default: a low and a high one)")
    parser.add_argument("--target", type=int, help="class index (default: the top prediction)")
    parser.add_argument("--out", default="invariance-out", help="output folder")


def run(args: argparse.Namespace) -> int:
    from vizkit.core.images import load_image, to_png_bytes
    from vizkit.models.registry import load_model
    from vizkit.render import tile

    transforms = args.transform or list(TRANSFORMS)
    if args.values and len(transforms) != 1:
        raise SystemExit("--values needs exactly one --transform.")
    m = load_model(args.model, weights=args.weights)
    img = load_image(args.image)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for t in transforms:
        result = invariance(m, img, t, args.values, args.layers, args.target)
        name = m.classes[result.target]
        invariance_figure(result, name).write_html(out / f"invariance-{t}.html", include_plotlyjs=True)
        write_table(invariance_rows(result), out / f"invariance-{t}.csv")
        strip = tile(list(result.images), cols=len(result.images))
        (out / f"invariance-{t}.png").write_bytes(to_png_bytes(strip))
        print(f"{t}: wrote {out}/invariance-{t}.html, .csv, .png (class {name})")
    return 0
