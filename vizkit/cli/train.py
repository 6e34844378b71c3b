"""``python -m vizkit train``: trains the bundled ``fashion-zf`` (``vizkit.data.training``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vizkit.data.scenes import DatasetMissing, evaluation_scenes, fashion_mnist_files
from vizkit.data.training import (
    TrainingSettings,
    evaluate,
    load_trained,
    train,
    write_model_card,
    write_subset,
)
from vizkit.models.fashion_zf import FASHION_CLASSES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Training settings, ``--resume`` and ``--eval-only``."""
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue from these weights (a second, shorter one-cycle phase)")
    parser.add_argument("--first-epoch", type=int, default=1, help="epoch number of the first epoch run")
    parser.add_argument("--eval-only", action="store_true",
                        help="measure the shipped weights on the full test split and exit")


def run(args: argparse.Namespace) -> int:
    """Trains (or only evaluates) and writes the weights, snapshots, subset and model card."""
    torch.set_num_threads(args.threads)
    try:  # before any work: training and measuring both need the dataset
        for split in ("test",) if args.eval_only else ("train", "test"):
            fashion_mnist_files(split)
    except DatasetMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.eval_only:
        module = load_trained()
        scenes = evaluation_scenes()
        accuracy, per_class = evaluate(module, scenes.images, scenes.labels)
        print(f"accuracy on {len(scenes)} test scenes: {accuracy:.2%}")
        for name, acc in zip(FASHION_CLASSES, per_class, strict=True):
            print(f"  {name:12s} {acc:.1%}")
        return 0
    last = args.first_epoch + args.epochs - 1
    if args.resume is None:
        write_subset()
        snapshots = sorted({0, 1, 2, max(1, args.epochs // 2), last})
    else:
        snapshots = [last]
    settings = TrainingSettings(epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                                snapshots=tuple(snapshots), resume=args.resume, first_epoch=args.first_epoch)
    run = train(settings)
    scenes = evaluation_scenes()
    accuracy, per_class = evaluate(run.module, scenes.images, scenes.labels)
    print(f"accuracy on {len(scenes)} test scenes: {accuracy:.2%} after {run.minutes:.1f} min")
    write_model_card(accuracy, per_class, run, settings)
    return 0

