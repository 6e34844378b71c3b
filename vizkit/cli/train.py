"""``python -m vizkit train``: trains the bundled ``fashion-zf`` (``vizkit.data.training``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from vizkit.data.backgrounds import FAMILIES, HELD_OUT
from vizkit.data.scenes import DatasetMissing, evaluation_scenes, fashion_mnist_files, held_out_scenes
from vizkit.data.training import (
    CHECKPOINT,
    WEIGHTS_FILE,
    TrainConfig,
    evaluate,
    load_trained,
    train,
    weights_hold_out,
    write_model_card,
    write_subset,
)
from vizkit.models.fashion_zf import FASHION_CLASSES


def _family(value: str) -> str | None:
    if value == "none":
        return None
    if value not in FAMILIES:
        raise argparse.ArgumentTypeError(f"unknown background family {value!r}; choose from "
                                         f"{', '.join(FAMILIES)} or none")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Training settings, ``--resume`` and ``--eval-only``."""
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast for forward and backward (weights stay float32); "
                             "about 2x faster on CPUs with AVX-512 BF16 or AMX")
    parser.add_argument("--hold-out", type=_family, default=argparse.SUPPRESS, metavar="FAMILY",
                        help=f"background family left out of training and scored apart (default "
                             f"{HELD_OUT}; 'none' trains on all). With --eval-only: the family to "
                             "score (default: the one the weights were trained without)")
    parser.add_argument("--resume", nargs="?", type=Path, const=CHECKPOINT, default=None,
                        metavar="CHECKPOINT",
                        help=f"continue a stopped run from its checkpoint (default {CHECKPOINT}); "
                             "it ends with the same weights as an uninterrupted run")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT,
                        help="where a run saves its state as it goes")
    parser.add_argument("--eval-only", action="store_true",
                        help="measure the shipped weights on the model card's test scenes and on the "
                             "held-out background family, and exit")


def _report(name: str, accuracy: float, per_class: list[float] | None = None) -> None:
    print(f"accuracy on {name}: {accuracy:.2%}", flush=True)
    for cls, acc in zip(FASHION_CLASSES, per_class or [], strict=False):
        print(f"  {cls:12s} {acc:.1%}")


def run(args: argparse.Namespace) -> int:
    """Trains (or only evaluates) and writes the weights, snapshots, subset and model card."""
    torch.set_num_threads(args.threads)
    if args.resume is not None and args.resume.suffix == ".safetensors":
        print(f"--resume continues a stopped run from its checkpoint ({CHECKPOINT}); {args.resume} "
              "holds weights only, which cannot continue a run exactly.")
        return 2
    try:  # before any work: training and measuring both need the dataset
        for split in ("test",) if args.eval_only else ("train", "test"):
            fashion_mnist_files(split)
    except DatasetMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.eval_only:
        module = load_trained()
        trained_without = weights_hold_out(WEIGHTS_FILE)
        scenes = evaluation_scenes(trained_without)
        accuracy, per_class = evaluate(module, scenes.images, scenes.labels)
        _report(f"{len(scenes)} test scenes", accuracy, per_class)
        family = getattr(args, "hold_out", trained_without)
        if family is not None:
            held = held_out_scenes(family)
            accuracy, _ = evaluate(module, held.images, held.labels)
            seen = "never seen in training" if family == trained_without else "seen in training"
            _report(f"{len(held)} held-out scenes (background family {family}, {seen})", accuracy)
        return 0
    config = TrainConfig(epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                         hold_out=getattr(args, "hold_out", HELD_OUT), bf16=args.bf16)
    checkpoint = args.resume or args.checkpoint
    if args.resume is None:
        write_subset(hold_out=config.hold_out)
    result = train(config, checkpoint=checkpoint, continue_run=args.resume is not None)
    module = result.module
    scenes = evaluation_scenes(config.hold_out)
    accuracy, per_class = evaluate(module, scenes.images, scenes.labels)
    print(f"accuracy on {len(scenes)} test scenes: {accuracy:.2%} after {result.minutes:.1f} min")
    held = None
    if config.hold_out is not None:
        held_scenes = held_out_scenes(config.hold_out)
        held = (config.hold_out, evaluate(module, held_scenes.images, held_scenes.labels)[0])
        print(f"accuracy on {len(held_scenes)} held-out scenes (background family {held[0]}): {held[1]:.2%}")
    command = "python -m vizkit " + shlex.join(
        ["train", "--epochs", str(args.epochs), "--lr", str(args.lr), "--seed", str(args.seed),
         "--hold-out", config.hold_out or "none"] + (["--bf16"] if config.bf16 else []))
    write_model_card(accuracy, per_class, held, result, config, command)
    return 0
