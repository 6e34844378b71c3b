"""Command line: ``python -m vizkit <command>``.

Each command is one module here with ``add_arguments(parser)`` and ``run(args) -> int``; it reads
its arguments and calls the library. Modules are imported only when their command runs, so one
broken command cannot break the others, and ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "weights": ("weights", "import or check model weights"),
    "top-patches": ("top_patches", "top-k dataset patches of a unit, with deconvnet projections"),
    "mine": ("mine", "every channel's top-k images over a dataset in one pass (a resumable index)"),
    "style": ("style", "neural style transfer of CONTENT in the style of STYLE"),
    "occlusion": ("occlusion", "occlusion heatmap of an image"),
    "evolution": ("evolution", "feature evolution over the bundled training snapshots"),
    "invariance": ("invariance", "invariance curves (translation, scale, rotation)"),
    "correspondence": ("correspondence", "correspondence analysis on the bundled scenes"),
    "localization": ("localization", "pointing game of CAM, Grad-CAM, occlusion on bundled scenes"),
    "probes": ("probes", "layer-wise linear probes"),
    "video": ("video", "a clip frame by frame: overlay video (Grad-CAM or a channel) and per-frame table"),
    "train": ("train", "train the bundled fashion-zf on FashionScenes, or re-measure it (--eval-only)"),
}


def command_module(name: str):
    """The module of command ``name`` (``vizkit.cli.<module>``)."""
    return importlib.import_module(f"vizkit.cli.{COMMANDS[name][0]}")


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv`` and runs the chosen command; returns its exit status."""
    parser = argparse.ArgumentParser(prog="python -m vizkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    for name, (_, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text)
        # Only the chosen command's module is imported (and asked for its arguments).
        if argv and argv[0] == name:
            command_module(name).add_arguments(cmd)
    args = parser.parse_args(argv)
    return int(command_module(args.command).run(args) or 0)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--weights`` and ``--device``, for the commands that run one model."""
    parser.add_argument("--model", default="fashion-zf", help="registry model name")
    parser.add_argument("--weights", default="default",
                        help="'default', 'none' (random, seeded) or a weights file")
    parser.add_argument("--device", default=None)


def load_model_from(args: argparse.Namespace):
    """The model ``add_model_arguments`` asked for (``--weights none``: random, seeded with 0)."""
    import torch

    from vizkit.models.registry import load_model

    weights = None if args.weights == "none" else args.weights
    if weights is None:
        torch.manual_seed(0)
    return load_model(args.model, device=args.device, weights=weights)
