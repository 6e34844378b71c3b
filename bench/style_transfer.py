"""Style transfer: the PyTorch tutorial's algorithm vs ``vizkit.style_transfer``, side by side.

The reference follows the PyTorch tutorial "Neural Transfer Using PyTorch" (Jacq & Herring) as
it describes it: a Normalization module, then VGG19 ``features`` copied layer by layer into an
``nn.Sequential`` with ReLUs made out-of-place, ContentLoss / StyleLoss modules inserted after
conv_4 (content) and conv_1..conv_5 (style), the net trimmed after the last loss, the image
optimized by ``optim.LBFGS`` with a closure that clamps, runs the model, sums
``style_weight·Σ style + content_weight·Σ content`` and calls ``backward``.

vizkit runs the same objective (same layers — features.7 is conv_4, features.0/2/5/7/10 are
conv_1..conv_5 —, same weights, same number of closure evaluations — counted here for both and
printed; vizkit's L-BFGS line search spends from the same budget —, same start: the content
image). Both run in one process on the same inputs, in alternating chunks of 20 evaluations so
that a busy machine slows both alike. Both final images are scored by the reference's own loss
modules. Random VGG weights (seeded) unless ``--weights default`` and the file is present.

vizkit runs with its defaults, coarse-to-fine included: from 256 px up, the first half of its
evaluations are at half the size (the image is then upsampled and refined at full size; the
losses compared are both at full size). ``--single-scale`` times vizkit with every evaluation at
full size instead.

    python bench/style_transfer.py [--size 256] [--steps 40] [--style mosaic] [--single-scale]

The last line is ``ratio: X`` (reference seconds per step / vizkit seconds per step).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vizkit.core.images import load_image  # noqa: E402
from vizkit.data.textures import landscape  # noqa: E402
from vizkit.methods.style import transfer as vs  # noqa: E402
from vizkit.methods.style.extractors import get_extractor  # noqa: E402
from vizkit.methods.style.losses import Objective  # noqa: E402

CHUNK = 20  # torch.optim.LBFGS's default max_iter: the tutorial's evaluations per step() call


# --- the reference, as the tutorial describes it ---------------------------------------------

class ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target.detach()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self.loss = F.mse_loss(input, self.target)
        return input


def gram_matrix(input: torch.Tensor) -> torch.Tensor:
    a, b, c, d = input.size()
    features = input.view(a * b, c * d)
    return torch.mm(features, features.t()).div(a * b * c * d)


class StyleLoss(nn.Module):
    def __init__(self, target_feature: torch.Tensor):
        super().__init__()
        self.target = gram_matrix(target_feature).detach()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self.loss = F.mse_loss(gram_matrix(input), self.target)
        return input


class Normalization(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return (img - self.mean.to(img.device)) / self.std.to(img.device)


STYLE_LAYERS = ("conv_1", "conv_2", "conv_3", "conv_4", "conv_5")


def reference_model(cnn, mean, std, style_img, content_img, content_layers=("conv_4",),
                    style_layers=STYLE_LAYERS):
    model = nn.Sequential(Normalization(mean, std)).to(content_img.device)
    content_losses, style_losses = [], []
    i = 0
    for layer in cnn.children():
        if isinstance(layer, nn.Conv2d):
            i += 1
            name = f"conv_{i}"
        elif isinstance(layer, nn.ReLU):
            name = f"relu_{i}"
            layer = nn.ReLU(inplace=False)
        elif isinstance(layer, nn.MaxPool2d):
            name = f"pool_{i}"
        else:
            raise RuntimeError(f"Unrecognized layer: {layer.__class__.__name__}")
        model.add_module(name, layer)
        if name in content_layers:
            loss = ContentLoss(model(content_img).detach())
            model.add_module(f"content_loss_{i}", loss)
            content_losses.append(loss)
        if name in style_layers:
            loss = StyleLoss(model(style_img).detach())
            model.add_module(f"style_loss_{i}", loss)
            style_losses.append(loss)
    for i in range(len(model) - 1, -1, -1):
        if isinstance(model[i], (ContentLoss, StyleLoss)):
            break
    return model[: i + 1], style_losses, content_losses


def reference_chunks(model, style_losses, content_losses, input_img, num_steps,
                     style_weight=1e6, content_weight=1.0):
    """The tutorial's ``run_style_transfer`` loop, pausing after each ``optimizer.step``."""
    input_img.requires_grad_(True)
    model.eval()
    model.requires_grad_(False)
    optimizer = torch.optim.LBFGS([input_img])
    run = [0]
    while run[0] <= num_steps:
        def closure():
            with torch.no_grad():
                input_img.clamp_(0, 1)
            optimizer.zero_grad()
            model(input_img)
            style_score = sum(sl.loss for sl in style_losses) * style_weight
            content_score = sum(cl.loss for cl in content_losses) * content_weight
            loss = style_score + content_score
            loss.backward()
            run[0] += 1
            return style_score + content_score

        optimizer.step(closure)
        yield run[0]
    with torch.no_grad():
        input_img.clamp_(0, 1)


def score(model, style_losses, content_losses, img, style_weight=1e6, content_weight=1.0) -> dict:
    with torch.no_grad():
        model(img.clamp(0, 1))
    style = float(sum(sl.loss for sl in style_losses)) * style_weight
    content = float(sum(cl.loss for cl in content_losses)) * content_weight
    return {"content": content, "style": style, "total": content + style}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40, help="closure evaluations (a multiple of 20)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", choices=("random", "default"), default="random")
    parser.add_argument("--style", default="mosaic", choices=sorted(vs.style_images()),
                        help="bundled style image (the content is vizkit's procedural landscape)")
    parser.add_argument("--single-scale", action="store_true",
                        help="vizkit without coarse-to-fine: every evaluation at full size")
    args = parser.parse_args()
    if args.steps % CHUNK:
        parser.error(f"--steps must be a multiple of {CHUNK} (the tutorial's evaluations per step call)")
    device = torch.device(args.device)

    torch.manual_seed(0)
    ext = get_extractor("vgg19", device, weights="default" if args.weights == "default" else None)
    cnn = copy.deepcopy(ext.module.features).to(memory_format=torch.contiguous_format).eval()
    content = vs._resize(landscape(args.size), args.size)
    style = vs._resize(load_image(vs.style_images()[args.style]), content.shape[:2])
    content_t, style_t = vs._to_tensor(content, device), vs._to_tensor(style, device)
    print(f"device {device}, threads {torch.get_num_threads()}, size {args.size}, "
          f"{args.steps} closure evaluations each, extractor: {ext.title}")
    stages = vs._stages(args.size, args.steps, not args.single_scale)
    print("vizkit stages: " + ", then ".join(f"{n} evaluations at {s} px" for s, n in stages))

    # Warm-up, untimed: oneDNN builds its kernels on first use, for each memory layout.
    warm = content_t.clone().requires_grad_(True)
    cnn[:11](warm).sum().backward()
    ext.module.features[:11](warm.contiguous(memory_format=torch.channels_last)).sum().backward()

    # Evaluations counted independently of both optimizers: the reference's model forward passes
    # with grad enabled, and every call of vizkit's objective (its final scoring pass included).
    counts = {"reference": 0, "vizkit": 0, "vizkit_forward_only": 0}
    evaluate = Objective.evaluate

    def counted(self, image, backward):
        counts["vizkit" if backward else "vizkit_forward_only"] += 1
        return evaluate(self, image, backward)

    Objective.evaluate = counted
    times = {"reference": 0.0, "vizkit": 0.0}
    t = time.perf_counter()
    model, style_losses, content_losses = reference_model(cnn, ext.mean, ext.std, style_t, content_t)
    model.register_forward_pre_hook(
        lambda module, args: counts.__setitem__("reference", counts["reference"] + torch.is_grad_enabled()))
    ref_img = content_t.clone()
    ref_run = reference_chunks(model, style_losses, content_losses, ref_img, args.steps - 1)
    times["reference"] += time.perf_counter() - t
    viz_run = vs.style_transfer(
        content, style, extractor=ext, content_layers=["features.7"],
        style_layers=["features.0", "features.2", "features.5", "features.7", "features.10"],
        content_weight=1.0, style_weight=1e6, steps=args.steps, size=args.size, preview_every=CHUNK,
        coarse_to_fine=not args.single_scale,
    )
    # Alternating chunks of 20 evaluations: load from other processes hits both alike.
    # Both totals include building the targets; vizkit's also its final scoring pass and previews.
    runs = {"reference": ref_run, "vizkit": viz_run}
    viz_result = None
    while runs:
        for name, gen in list(runs.items()):
            t = time.perf_counter()
            try:
                item = next(gen)
            except StopIteration:
                del runs[name]
                item = None
            times[name] += time.perf_counter() - t
            if name == "vizkit" and item is not None:
                viz_result = item
    assert viz_result is not None and viz_result.done and viz_result.step == args.steps

    Objective.evaluate = evaluate
    viz_img = vs._to_tensor(viz_result.image, device)
    ref_loss = score(model, style_losses, content_losses, ref_img.detach())
    viz_loss = score(model, style_losses, content_losses, viz_img)
    per_step = {k: v / args.steps for k, v in times.items()}
    print(f"reference (PyTorch tutorial): {per_step['reference']:.4f} s/step")
    print(f"vizkit:                       {per_step['vizkit']:.4f} s/step")
    print(f"closure evaluations (forward+backward): reference {counts['reference']}, vizkit "
          f"{counts['vizkit']} (+{counts['vizkit_forward_only']} forward-only scoring passes)")
    print(f"final loss reference: {ref_loss['total']:.6g} (content {ref_loss['content']:.4g}, "
          f"style {ref_loss['style']:.4g})")
    print(f"final loss vizkit:    {viz_loss['total']:.6g} (content {viz_loss['content']:.4g}, "
          f"style {viz_loss['style']:.4g}); vizkit/reference = {viz_loss['total'] / ref_loss['total']:.3f}")
    print(f"ratio: {per_step['reference'] / per_step['vizkit']:.2f}")


if __name__ == "__main__":
    main()
