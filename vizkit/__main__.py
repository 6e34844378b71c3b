"""Command line: ``python -m vizkit <command>``.

Each command lives in the module that does the work; that module provides
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
command runs, so one broken command cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "weights": ("vizkit.cli_weights", "import or check model weights"),
    "top-patches": ("vizkit.patches", "top-k dataset patches of a unit, with deconvnet projections"),
    "style": ("vizkit.style", "neural style transfer of CONTENT in the style of STYLE"),
    "occlusion": ("vizkit.occlusion", "occlusion heatmap of an image"),
    "evolution": ("vizkit.evolution", "feature evolution over the bundled training snapshots"),
    "invariance": ("vizkit.invariance", "invariance curves (translation, scale, rotation)"),
    "correspondence": ("vizkit.correspondence", "correspondence analysis on the bundled scenes"),
    "localization": ("vizkit.localization", "pointing game of CAM, Grad-CAM, occlusion on bundled scenes"),
    "probes": ("vizkit.probes", "layer-wise linear probes"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vizkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text)
        # Only the chosen command's module is imported (and asked for its arguments).
        if argv and argv[0] == name:
            module = importlib.import_module(module_name)
            adder = getattr(module, f"add_{name.replace('-', '_')}_arguments", None) or module.add_arguments
            adder(cmd)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    runner = getattr(module, f"run_{args.command.replace('-', '_')}", None) or module.run
    return int(runner(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
