"""``python -m vizkit style``: the command line of ``vizkit.methods.style``."""

from __future__ import annotations

import argparse
import sys

from vizkit.methods.style.extractors import EXTRACTORS, default_extractor, get_extractor
from vizkit.methods.style.transfer import INITS, style_images, style_transfer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m vizkit style``."""
    parser.add_argument("content", help="content image file")
    parser.add_argument("style", help=f"style image file, or a bundled style: {', '.join(style_images())}")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--extractor", choices=("auto", *EXTRACTORS), default="auto",
                        help="auto: the first available (vgg19 when its weights are present, else "
                             "efficientnet-lite0, else random-multiscale)")
    parser.add_argument("--size", type=int, default=256, help="longer side of the output")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--optimizer", choices=("lbfgs", "adam"), default=None,
                        help="default: the extractor's (lbfgs for vgg19 and efficientnet-lite0, adam for "
                             "random-multiscale)")
    parser.add_argument("--content-weight", type=float, default=None)
    parser.add_argument("--style-weight", type=float, default=None)
    parser.add_argument("--tv-weight", type=float, default=None, help="default: the extractor's")
    parser.add_argument("--init", choices=INITS, default=None,
                        help="content, palette (the content in the style's colours) or noise; "
                             "default: the extractor's (palette for efficientnet-lite0)")
    parser.add_argument("--preserve-color", action="store_true", help="transfer luminance only")
    parser.add_argument("--content-layers", nargs="+", default=None, metavar="LAYER")
    parser.add_argument("--style-layers", nargs="+", default=None, metavar="LAYER")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--single-scale", action="store_true",
                       help="all steps at full size (default: the extractor's; coarse-to-fine from "
                            "256 px up except for efficientnet-lite0)")
    scale.add_argument("--coarse-to-fine", action="store_true",
                       help="the first half of the steps at half size, from 256 px up")


def run(args: argparse.Namespace) -> int:
    """``python -m vizkit style CONTENT STYLE --out OUT.png``: runs with a progress bar."""
    from PIL import Image
    from tqdm import tqdm

    from vizkit.core.images import ImageError, load_image
    from vizkit.models.weights import WeightsError

    bundled = style_images()
    name = default_extractor() if args.extractor == "auto" else args.extractor
    try:
        content = load_image(args.content)
        style = load_image(bundled[args.style] if args.style in bundled else args.style)
        extractor = get_extractor(name, args.device)
    except (ImageError, WeightsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"extractor: {extractor.title}")
    runner = style_transfer(
        content, style, extractor=extractor, content_layers=args.content_layers,
        style_layers=args.style_layers, content_weight=args.content_weight,
        style_weight=args.style_weight, tv_weight=args.tv_weight, optimizer=args.optimizer,
        steps=args.steps, size=args.size, init=args.init, preserve_color=args.preserve_color,
        preview_every=1, seed=args.seed,
        coarse_to_fine=False if args.single_scale else True if args.coarse_to_fine else None,
    )
    result = None
    try:
        with tqdm(total=args.steps, unit="step") as bar:
            for result in runner:
                bar.update(result.step - bar.n)
                bar.set_postfix(loss=f"{result.losses['total']:.4g}")
    except ValueError as error:  # settings that do not fit the images (size, layers)
        print(f"error: {error}", file=sys.stderr)
        return 2
    assert result is not None
    # Plain PNG from pixels only: no metadata of the inputs is carried over.
    Image.fromarray(result.image).save(args.out, format="PNG")
    print(f"wrote {args.out} ({result.image.shape[1]}×{result.image.shape[0]}), "
          f"losses: " + ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items()))
    return 0
