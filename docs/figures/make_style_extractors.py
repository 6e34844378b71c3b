"""Writes docs/figures/style_extractors.png: one content/style pair through each style extractor.

    python docs/figures/make_style_extractors.py [--content chelsea] [--style mosaic] [--from DIR]

Left to right: the content photo, the style image, then ``style_transfer`` with the untrained
random filters (``random-multiscale``), raw EfficientNet-Lite0 block outputs
(``efficientnet-lite0-raw``), softmax-smoothed Lite0 features (``efficientnet-lite0-smooth``), the
content in the style's colours (``color.match_palette``: where the default starts, no
optimization) and the default ``efficientnet-lite0``: each at its own default start, layers, style
weight and optimizer, 256 px, 50 steps (the style page's first run; bench/style_quality.py scores
the same settings).
``--from DIR`` takes the results from the folder ``bench/style_quality.py --save DIR`` wrote
(its β×1 runs are these same runs) instead of computing them again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import vizkit as vk  # noqa: E402
from vizkit import render  # noqa: E402
from vizkit.methods.style.color import match_palette  # noqa: E402
from vizkit.methods.style.transfer import run_to_end, style_images, style_transfer  # noqa: E402

# Registry name: bench/style_quality.py's short name.
EXTRACTORS = {"random-multiscale": "random", "efficientnet-lite0-raw": "lite0-raw",
              "efficientnet-lite0-smooth": "lite0-smooth", "efficientnet-lite0": "lite0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--content", default="chelsea")
    parser.add_argument("--style", default="mosaic")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--from", dest="source", type=Path, help="bench/style_quality.py --save folder")
    args = parser.parse_args()
    content = vk.load_image(ROOT / "assets" / "samples" / f"{args.content}.png")
    style = vk.load_image(style_images()[args.style])
    results = []
    for name, short in EXTRACTORS.items():
        if args.source is not None:
            results.append(vk.load_image(args.source / f"{args.content}-{args.style}-{short}-x1.png"))
            continue
        result = run_to_end(style_transfer(content, style, extractor=name, steps=args.steps,
                                           size=args.size, preview_every=args.steps, device="cpu"))
        print(name, {k: round(v, 4) for k, v in result.losses.items()})
        results.append(result.image)
    h, w = results[0].shape[:2]
    content_at, style_at = render.resize(content, (h, w)), render.resize(style, (h, w))
    panels = [content_at, style_at, *results[:-1], match_palette(content_at, style_at), results[-1]]
    out = ROOT / "docs" / "figures" / "style_extractors.png"
    tmp = out.with_suffix(".tmp.png")
    Image.fromarray(render.tile(panels, cols=len(panels))).save(tmp)
    tmp.replace(out)
    print(out)


if __name__ == "__main__":
    main()
