"""``python -m vizkit correspondence``: the command line of ``vizkit.analyses.correspondence``."""

from __future__ import annotations

import argparse

from vizkit.analyses.correspondence import (
    PARTS,
    Region,
    correspondence,
    correspondence_figure,
    correspondence_rows,
)
from vizkit.analyses.features import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part", default="top-left",
                        help=f"one of {', '.join(PARTS)}, or fractions x0,y0,x1,y1 of the object's box")
    parser.add_argument("--weights", default="default", help="fashion-zf weights file (default: bundled)")
    parser.add_argument("--limit", type=int, default=1000, help="scenes used (first N of the bundled subset)")
    parser.add_argument("--layers", nargs="+", help="layers (default: every ReLU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="correspondence-out", help="output folder")


def parse_part(text: str) -> str | Region:
    """A part name or four comma-separated fractions."""
    if text in PARTS:
        return text
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"Part {text!r}: use one of {', '.join(PARTS)} or x0,y0,x1,y1 fractions.")
    return values


def run(args: argparse.Namespace) -> int:
    from vizkit.data.scenes import bundled_subset
    from vizkit.models.registry import load_model

    m = load_model("fashion-zf", weights=args.weights)
    scenes = bundled_subset()
    n = min(args.limit, len(scenes))
    part = parse_part(args.part)

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} images", end="", flush=True)

    result = correspondence(m, scenes.images[:n], scenes.boxes[:n], part, scenes.labels[:n],
                            args.layers, seed=args.seed, progress=progress)
    print()
    rows = correspondence_rows(result)
    out = write_report(rows, correspondence_figure(result, str(args.part)), args.out, "correspondence")
    for r in rows:
        print(f"{r['layer']:>16}  part {r['part']:.4f}  random {r['random']:.4f}  units {r['units']}")
    print(f"{result.n_pairs} pairs of {result.n_images} images; wrote {out}/correspondence.csv, .md, .html")
    return 0
