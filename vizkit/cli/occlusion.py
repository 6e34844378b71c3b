"""``python -m vizkit occlusion``: the command line of ``vizkit.methods.occlusion.sensitivity``."""

from __future__ import annotations

from vizkit.cli import add_model_arguments, load_model_from
from vizkit.methods.occlusion.sensitivity import (
    MODES,
    Baseline,
    OcclusionRun,
    approximation_summary,
    occlusion,
)


def add_arguments(parser) -> None:
    """``python -m vizkit occlusion IMAGE --model M --out OUT.png``."""
    parser.add_argument("image", help="input image file")
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="output PNG (heatmap over the image)")
    parser.add_argument("--target", type=int, default=None, help="class index (default: top)")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--baseline", default="mean",
                        help="mean, grey, zero, a grey level in [0, 1] or R,G,B")
    parser.add_argument("--mode", choices=MODES, default="exact")


def _parse_baseline(text: str) -> Baseline:
    if "," in text:
        return tuple(float(v) for v in text.split(","))  # type: ignore[return-value]
    try:
        return float(text)
    except ValueError:
        return text


def run(args) -> int:
    """Writes the occlusion overlay of ``args.image`` to ``args.out`` and prints a summary."""
    from pathlib import Path

    from vizkit import render
    from vizkit.core.images import load_image

    m = load_model_from(args)
    img = load_image(args.image)
    result = occlusion(m, img, target=args.target, patch=args.patch, stride=args.stride,
                       baseline=_parse_baseline(args.baseline), mode=args.mode)
    run: OcclusionRun = result.info
    picture = render.draw_box(render.overlay(m.resize(img), result.map, smooth=False), run.box)
    Path(args.out).write_bytes(render.to_png(picture))
    print(f"class {result.target} ({m.classes[result.target]}): p={run.clean_probability:.4f}; "
          f"most damaging patch {run.box}; {run.mode} in {run.timings.total_s:.2f} s → {args.out}")
    summary = approximation_summary(run)
    if summary:
        print(f"approximate: {summary}")
    return 0
