"""``python -m vizkit mine``: the command line of ``vizkit.mine`` (a resumable job)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vizkit.cli import add_model_arguments, load_model_from

ALL = "all"
BUNDLED_DESCRIPTION = "the bundled FashionScenes subset (assets/fashion-scenes-subset.npz)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m vizkit mine --model M --layers L1,L2 [--images DIR] --out INDEX``."""
    add_model_arguments(parser)
    parser.add_argument("--layers", required=True,
                        help="comma-separated dotted layer names, or 'all' for every layer with C×h×w maps")
    parser.add_argument("--images", default=None,
                        help="folder of images, searched recursively "
                             "(default: the bundled FashionScenes subset)")
    parser.add_argument("--out", required=True, help="the index file to write (.parquet)")
    parser.add_argument("--k", type=int, default=9, help="images kept per channel")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=None,
                        help="decode processes (default: the other cores, at most 8); with --engine ray: "
                             "model actors (default: one per GPU, or per 8 CPUs)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--checkpoint-every", type=float, default=60.0, help="seconds between checkpoints")
    parser.add_argument("--restart", action="store_true", help="ignore and delete an existing checkpoint")
    parser.add_argument("--description", default=None, help="a note on the dataset, kept in the index")


def _progress_bar(total_hint: str):
    from tqdm import tqdm

    bar = {"tqdm": None}

    def progress(done: int, total: int) -> bool:
        if bar["tqdm"] is None:
            bar["tqdm"] = tqdm(total=total, initial=done, unit="img", desc=total_hint, file=sys.stderr)
        bar["tqdm"].n = done
        bar["tqdm"].refresh()
        return True

    return progress, bar


def run(args: argparse.Namespace) -> int:
    """Mines the index, with a progress bar; Ctrl-C leaves a checkpoint the same command resumes."""
    from vizkit.data.scenes import bundled_subset
    from vizkit.mining.engine import mine
    from vizkit.mining.index import checkpoint_path
    from vizkit.models.weights import WeightsError

    progress, bar = _progress_bar("mining")
    try:
        m = load_model_from(args)
        layers = args.layers
        if layers.strip() == ALL:
            from vizkit.methods.receptive_fields import summarize

            layers = [row.name for row in summarize(m) if len(row.output_shape) == 3]
        if args.images is not None:
            dataset, description = args.images, args.description
        else:
            dataset = bundled_subset()
            description = args.description or BUNDLED_DESCRIPTION
        index = mine(m, layers, dataset, k=args.k, out=args.out, batch_size=args.batch_size,
                     workers=args.workers if args.engine == "local" else None,
                     actors=args.workers if args.engine == "ray" else None,
                     engine=args.engine, resume=not args.restart,
                     checkpoint_every=args.checkpoint_every, progress=progress,
                     description=description, ray_address=args.ray_address)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the checkpoint {checkpoint_path(args.out)} is kept: rerun the same "
              "command to resume", file=sys.stderr)
        return 130
    except (ValueError, WeightsError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if bar["tqdm"] is not None:
            bar["tqdm"].close()
    meta = index.meta
    data = meta["dataset"]
    channels = sum(shape[0] for shape in meta["layers"].values())
    print(f"{args.model}: top-{meta['k']} of {channels} channels in {len(meta['layers'])} layer(s) over "
          f"{data['readable']} images; {data['skipped']} skipped")
    for entry in meta["skipped"][:10]:
        print(f"  skipped {entry['image'] or entry['image_index']}: {entry['reason']}")
    if len(meta["skipped"]) > 10:
        print(f"  ... and {len(meta['skipped']) - 10} more (listed in the index's metadata)")
    print(f"wrote {Path(args.out)}")
    return 0
