"""``python -m vizkit probes``: the command line of ``vizkit.analyses.probes``."""

from __future__ import annotations

import argparse

from vizkit.analyses.features import write_report
from vizkit.analyses.probes import (
    fashion_probe_data,
    fashion_probe_note,
    folder_probe_data,
    linear_probes,
    probe_rows,
    probes_figure,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="fashion-zf")
    parser.add_argument("--weights", default="default", help="weights file (default: the model's own)")
    parser.add_argument("--folder", help="labelled image folder folder/<class>/*.png (needed for zoo models)")
    parser.add_argument("--n-train", type=int, default=3000, help="fashion-zf: train scenes")
    parser.add_argument("--layers", nargs="+", help="layers (default: up to six ReLUs over the depth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="probes-out", help="output folder")


def run(args: argparse.Namespace) -> int:
    from vizkit.models.registry import get_spec, load_model

    if args.folder:
        data = folder_probe_data(args.folder, seed=args.seed)
    elif get_spec(args.model).bundled:
        data = fashion_probe_data(args.n_train, seed=args.seed)
        note = fashion_probe_note()
        if note:
            print(f"note: {note}")
    else:
        raise SystemExit(f"{args.model} needs a labelled image folder: --folder DIR (DIR/<class>/*.png).")
    m = load_model(args.model, weights=args.weights)

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total}", end="", flush=True)

    x_train, y_train, x_test, y_test, classes = data
    result = linear_probes(m, x_train, y_train, x_test, y_test, layers=args.layers, classes=classes,
                           progress=progress)
    print()
    rows = probe_rows(result)
    out = write_report(rows, probes_figure(result, f"{m.spec.title}: linear probes"), args.out, "probes")
    for r in rows:
        print(f"{r['layer']:>16}  test {r['test_accuracy']:.3f}  train {r['train_accuracy']:.3f}  "
              f"dim {r['dim']}")
    print(f"chance {result.chance:.3f}; wrote {out}/probes.csv, .md, .html")
    return 0
