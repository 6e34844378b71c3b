"""``python -m vizkit top-patches``: the command line of ``vizkit.methods.patches``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vizkit import render
from vizkit.cli import add_model_arguments, load_model_from
from vizkit.methods.patches import patch_grid, top_patches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m vizkit top-patches --model M --layer L --channel C [--images DIR] --out DIR``."""
    add_model_arguments(parser)
    parser.add_argument("--layer", required=True, help="dotted layer name, e.g. features.relu4")
    parser.add_argument("--channel", type=int, required=True)
    parser.add_argument("--images", default=None,
                        help="folder of images (default: the bundled FashionScenes subset)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs")
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    """Writes patch_NN.png, projection_NN.png and grid.png (no metadata) and prints the ranking."""
    from vizkit.data.scenes import bundled_subset
    from vizkit.models.weights import WeightsError

    try:
        m = load_model_from(args)
        dataset = args.images if args.images is not None else bundled_subset()
        result = top_patches(m, args.layer, args.channel, dataset, k=args.k, batch_size=args.batch_size)
    except (ValueError, WeightsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for rank, patch in enumerate(result.patches, 1):
        (out / f"patch_{rank:02d}.png").write_bytes(render.to_png(patch))
    for rank, proj in enumerate(result.projections or (), 1):
        (out / f"projection_{rank:02d}.png").write_bytes(render.to_png(proj))
    (out / "grid.png").write_bytes(render.to_png(patch_grid(result)))
    rf = result.receptive_field
    print(f"{args.model} {result.layer} channel {result.channel}: receptive field "
          f"{rf.size[0]}×{rf.size[1]}, stride {rf.stride[0]}; top {len(result.patches)} of "
          f"{result.dataset_size} images")
    for rank, (i, s, b) in enumerate(zip(result.indices, result.scores, result.boxes, strict=True), 1):
        print(f"{rank:2d}. image {int(i)}: max {float(s):.4f} at box {tuple(int(v) for v in b)}")
    if result.projections is None:
        print(f"no projections: {result.projection_error}")
    print(f"wrote {out}")
    return 0
