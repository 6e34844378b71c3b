"""``python -m vizkit weights``: import a local zoo checkpoint for offline use, or list what is available.

    python -m vizkit weights import alexnet-owt-7be5be79.pth --model alexnet
    python -m vizkit weights list
"""

from __future__ import annotations

import argparse
import sys

from vizkit.models import efficientnet_lite
from vizkit.models.registry import get_spec, list_models, weights_available
from vizkit.models.torchvision_zoo import import_zoo_weights
from vizkit.models.weights import WeightsError, zoo_checkpoint_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands ``import`` and ``list``."""
    sub = parser.add_subparsers(dest="action", required=True)
    imp = sub.add_parser("import", help="copy a downloaded torchvision checkpoint into the torch cache")
    imp.add_argument("file", help="the checkpoint, e.g. alexnet-owt-7be5be79.pth")
    imp.add_argument("--model", required=True,
                     choices=[n for n in list_models() if get_spec(n).weights_enum is not None],
                     help="registry name of the model the file belongs to")
    sub.add_parser("list", help="each model and whether its weights are available offline")


def _list() -> int:
    width = max(len(name) for name in list_models())
    for name in list_models():
        spec = get_spec(name)
        if spec.bundled:
            where = spec.weights_file
        elif spec.weights_package is not None:
            hint = efficientnet_lite.install_hint(spec)
            where = efficientnet_lite.weights_path(spec) or f"(not installed: {hint})"
        else:
            where = zoo_checkpoint_path(spec)
        state = "available" if weights_available(name) else "missing  "
        print(f"{name:<{width}}  {state}  {where}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs ``import`` or ``list``; errors go to stderr with exit status 1."""
    if args.action == "list":
        return _list()
    spec = get_spec(args.model)
    try:
        target = import_zoo_weights(args.file, spec)
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Imported {args.file} for {spec.name}: {target}")
    return 0
