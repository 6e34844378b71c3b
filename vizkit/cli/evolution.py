"""``python -m vizkit evolution``: the command line of ``vizkit.analyses.evolution``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vizkit.analyses.evolution import (
    SNAPSHOTS,
    evolution_picture,
    evolution_rows,
    feature_evolution,
    snapshot_paths,
)
from vizkit.analyses.features import write_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layer", default="features.relu5")
    parser.add_argument("--channels", type=int, nargs="+",
                        help="feature maps to follow (default: the strongest unit at each snapshot)")
    parser.add_argument("--snapshots", default=str(SNAPSHOTS),
                        help="folder of fashion-zf-epoch<N>.safetensors")
    parser.add_argument("--limit", type=int, default=500, help="bundled scenes searched")
    parser.add_argument("--out", default="evolution-out", help="output folder")


def run(args: argparse.Namespace) -> int:
    from vizkit.core.images import to_png_bytes

    snaps = snapshot_paths(args.snapshots)
    if not snaps:
        raise SystemExit(f"No fashion-zf-epoch<N>.safetensors files in {args.snapshots}.")

    def progress(done: int, total: int) -> None:
        print(f"\rsnapshot {done}/{total}", end="", flush=True)

    result = feature_evolution(args.layer, args.channels, snaps, limit=args.limit, progress=progress)
    print()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evolution.png").write_bytes(to_png_bytes(evolution_picture(result)))
    for epoch in result.epochs:
        step = next(s for s in result.steps if s.epoch == epoch)
        (out / f"filters-epoch{epoch}.png").write_bytes(to_png_bytes(step.filters))
    write_table(evolution_rows(result), out / "evolution.csv")
    write_table(evolution_rows(result), out / "evolution.md")
    print(f"{len(result.epochs)} snapshots, layer {result.layer}; wrote {out}/evolution.png, "
          "filters-epoch<N>.png, evolution.csv, .md")
    return 0
