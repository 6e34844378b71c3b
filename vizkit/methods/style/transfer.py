"""Neural style transfer (Gatys, Ecker & Bethge 2015, "A Neural Algorithm of Artistic Style").

An image ``x`` is optimized so that its features ``F_l`` match the content image's ``P_l`` and its
Gram matrices ``G_l = F_l F_lᵀ / (C·M)`` (C channels, M = H·W positions) match the style image's
``A_l``:

    total = α·Σ_l mean((F_l − P_l)²) + β·Σ_l mean((G_l − A_l)²) + γ·TV(x)

(the normalization of the PyTorch tutorial, so its weights carry over). The gradients of the
content and style terms are written in closed form while the features are computed,

    ∂/∂F mean((F − P)²) = 2(F − P)/(C·M),    ∂/∂F mean((G − A)²) = 4(G − A)F/(C³·M),

and pushed into one backward pass from every loss layer at once: no loss modules, no hooks, no
autograd graph for the Grams, targets computed once outside autograd, and the network stops at
the last layer used (channels_last on every device, bfloat16 autocast on CUDA).

From 256 px up, a run is coarse-to-fine by default (Gatys et al. 2017, "Controlling Perceptual
Factors in Neural Style Transfer"): the first half of the steps optimize the image at half the
size, where a step costs a quarter, and the rest refine it, upsampled, at full size.

``preserve_color`` transfers luminance only (Gatys, Bethge, Hertzmann & Shechtman 2016,
"Preserving Color in Neural Artistic Style Transfer"): both images become luminance, the style's
luminance is matched to the content's mean and deviation, and the result's luminance is put
back with the content's chroma (YCbCr).

Extractors: ``"vgg19"`` (torchvision's ImageNet VGG19 features, when its weights file is present)
and ``"random-multiscale"``: untrained random filters over an image pyramid, after Ustyuzhaninov,
Brendel, Gatys & Bethge 2017, "What does it take to generate natural textures?". It is not VGG
and says so in its title.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from vizkit.core.assets import ASSETS
from vizkit.core.devices import pick_device
from vizkit.models.torchvision_zoo import IMAGENET_MEAN, IMAGENET_STD

STYLE_DIR = ASSETS / "styles"


@dataclass(frozen=True)
class StyleStep:
    """One preview of a running style transfer.

    Attributes:
        step: objective evaluations done so far.
        image: the current image, uint8 H×W×3 (with the content's chroma when preserving color).
        losses: weighted terms ``content``, ``style``, ``tv`` and their sum ``total``.
        done: whether this is the final result (last step reached or stopped).
        stopped: whether the run was stopped before its last step.
        work_size: (height, width) the step was computed at: half the output's in the coarse
            stage of a coarse-to-fine run (``image`` is always at the output's size).
    """

    step: int
    image: np.ndarray
    losses: dict[str, float]
    done: bool = False
    stopped: bool = False
    work_size: tuple[int, int] | None = None


# --- the objective -------------------------------------------------------------------------

def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix ``G = F Fᵀ / (C·M)`` of 1×C×H×W features (Gatys et al. 2015, eq. 3)."""
    _, c, h, w = features.shape
    flat = features.reshape(c, h * w)
    return flat @ flat.T / (c * h * w)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Content term ``mean((F − P)²)`` (Gatys et al. 2015, eq. 1, mean instead of ½·sum)."""
    return (features - target).square().mean()


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Style term of one layer ``mean((G − A)²)`` over the C² Gram entries (Gatys et al., eq. 4)."""
    return (gram_matrix(features) - target_gram).square().mean()


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation ``mean((x[i+1,j] − x[i,j])²) + mean((x[i,j+1] − x[i,j])²)``."""
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    return dy.square().mean() + dx.square().mean()


def _as_rows(features: torch.Tensor) -> torch.Tensor:
    """1×C×H×W → M×C, a view when ``features`` is channels_last (no copy)."""
    _, c, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(h * w, c)


def _gram_rows(rows: torch.Tensor) -> torch.Tensor:
    m, c = rows.shape
    return rows.T @ rows / (c * m)


def _style_term(features: torch.Tensor, target_gram: torch.Tensor,
                weight: float = 1.0) -> tuple[float, torch.Tensor]:
    """``mean((G − A)²)`` and ``weight`` times its gradient ``4(G − A)F/(C³·M)``.

    In the target's precision; the weight is folded into the C×C factor (no full-size product).
    """
    _, c, h, w = features.shape
    rows = _as_rows(features.to(target_gram.dtype))
    diff = _gram_rows(rows) - target_gram
    loss = diff.square().mean()
    grad_rows = rows @ (diff * (weight * 4.0 / (c ** 3 * h * w)))
    grad = grad_rows.reshape(1, h, w, c).permute(0, 3, 1, 2)
    return float(loss), grad


def _content_term(features: torch.Tensor, target: torch.Tensor,
                  weight: float = 1.0) -> tuple[float, torch.Tensor]:
    """``mean((F − P)²)`` and ``weight`` times its gradient ``2(F − P)/(C·M)``."""
    diff = features.to(target.dtype) - target
    return float(diff.square().mean()), diff * (weight * 2.0 / diff.numel())


# --- extractors ----------------------------------------------------------------------------

class _ImageConv(torch.autograd.Function):
    """A stride-1 convolution of the image whose input gradient is one matmul and a col2im.

    ∂L/∂x = fold(Wᵀ·∂L/∂y): with 3 output channels oneDNN's own backward is several times slower
    than the whole forward convolution; here it is an (H·W × C_out)·(C_out × 3k²) product.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(weight)
        ctx.size, ctx.padding = x.shape[-2:], padding
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        c_out, k = weight.shape[0], weight.shape[-1]
        rows = grad.permute(0, 2, 3, 1).reshape(-1, c_out)  # a view when grad is channels_last
        cols = rows @ weight.reshape(c_out, -1).to(rows.dtype)
        image_grad = F.fold(cols.T.unsqueeze(0), tuple(ctx.size), k, padding=ctx.padding)
        return image_grad, None, None, None


def image_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for an image being optimized, with the cheap input gradient of ``_ImageConv``."""
    simple = (
        x.requires_grad and not conv.weight.requires_grad and x.shape[0] == 1
        and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
        and conv.kernel_size[0] == conv.kernel_size[1]
        and conv.padding[0] == conv.padding[1] and not isinstance(conv.padding, str)
        and not torch.is_autocast_enabled(x.device.type)
    )
    if not simple:
        return conv(x)
    padding = conv.padding[0]
    if conv.padding_mode != "zeros" and padding:
        x = F.pad(x, (padding,) * 4, mode=conv.padding_mode)
        padding = 0
    return _ImageConv.apply(x, conv.weight, conv.bias, padding)


class SequentialFeatures(nn.Module):
    """A feature network whose layers run in order (VGG's ``features``), stopping early."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features

    def walk(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Outputs of ``layers`` (dotted names); nothing after the last of them is computed."""
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        for index, (name, module) in enumerate(self.features.named_children()):
            x = image_conv(module, x) if index == 0 and isinstance(module, nn.Conv2d) else module(x)
            key = f"features.{name}"
            if key in wanted:
                out[key] = x
                if len(out) == len(wanted):
                    break
        return out


class RandomMultiScale(nn.Module):
    """Untrained random filters over an image pyramid (after Ustyuzhaninov et al. 2017).

    Ustyuzhaninov et al. show that one layer of random filters of many sizes already yields
    textures; here the sizes come from applying ``kernel``×``kernel`` filters at scales 1, ½, ¼,
    ⅛ (effective sizes 5 to 40 pixels), which costs far less than 55×55 filters.
    """

    def __init__(self, channels: int = 128, scales: int = 4, kernel: int = 5, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        branches = OrderedDict()
        for k in range(scales):
            conv = nn.Conv2d(3, channels, kernel, padding=kernel // 2, padding_mode="reflect")
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / math.sqrt(3 * kernel ** 2))
                conv.bias.copy_(0.1 * torch.randn(channels, generator=g))
            branches[f"scale{k + 1}"] = nn.Sequential(OrderedDict([
                ("pool", nn.AvgPool2d(2 ** k) if k else nn.Identity()),
                ("conv", conv),
                ("relu", nn.ReLU()),
            ]))
        self.branches = nn.ModuleDict(branches)

    def walk(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Outputs of ``layers``; a branch no layer needs is not computed."""
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        for name, branch in self.branches.items():
            prefix = f"branches.{name}"
            if not any(layer.startswith(prefix + ".") for layer in wanted):
                continue
            h = x
            for sub, module in branch.named_children():
                h = image_conv(module, h) if isinstance(module, nn.Conv2d) else module(h)
                if f"{prefix}.{sub}" in wanted:
                    out[f"{prefix}.{sub}"] = h
        return out


@dataclass(frozen=True)
class FeatureExtractor:
    """A frozen feature network for style transfer, shared read-only by every session.

    Attributes:
        name: ``"vgg19"`` or ``"random-multiscale"``.
        title: what the UI shows; says plainly when it is untrained.
        module: the network (eval, no parameter requires grad, channels_last); never hooked.
        device: where it runs.
        mean, std: input normalization of [0, 1] RGB.
        content_layers, style_layers: defaults (dotted ``named_modules()`` names).
        content_weight, style_weight: default α and β for those layers.
        trained: whether the filters were learned (VGG19 with ImageNet weights).
        optimizer: the optimizer that works best with these features (``"lbfgs"`` or ``"adam"``).
        adam_lr: Adam's default step size (pixels in [0, 1]).
    """

    name: str
    title: str
    module: nn.Module = field(repr=False)
    device: torch.device
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    content_weight: float
    style_weight: float
    trained: bool
    optimizer: str = "lbfgs"
    adam_lr: float = 0.02

    def layers(self) -> list[str]:
        """Every addressable layer (dotted ``named_modules()`` names)."""
        return [name for name, m in self.module.named_modules() if name and not list(m.children())]

    def check_layers(self, layers: Sequence[str]) -> tuple[str, ...]:
        """Rejects unknown layer names with the list of valid ones."""
        valid = self.layers()
        bad = [layer for layer in layers if layer not in valid]
        if bad:
            raise ValueError(
                f"Unknown layer(s) {', '.join(map(repr, bad))} for extractor {self.name!r}. "
                f"Valid layers: {', '.join(valid)}."
            )
        if not layers:
            raise ValueError("At least one layer is needed.")
        return tuple(layers)


#: The extractors ``style_transfer`` accepts, with the titles the UI shows.
EXTRACTOR_TITLES = {
    "vgg19": "VGG19 (ImageNet weights)",
    "random-multiscale": "Random multi-scale filters (untrained, Ustyuzhaninov et al. 2017; not VGG)",
}
EXTRACTORS = tuple(EXTRACTOR_TITLES)

# VGG19 ``features`` indices: conv1_1=0, conv2_1=5, conv3_1=10, conv4_1=19, conv4_2=21, conv5_1=28
# (the ReLU after conv k is at k+1). Gatys et al. read relu*_1 for style and relu4_2 for content.
VGG19_STYLE_LAYERS = ("features.1", "features.6", "features.11", "features.20", "features.29")
VGG19_CONTENT_LAYERS = ("features.22",)
VGG19_NAMES = {
    "features.0": "conv1_1", "features.2": "conv1_2", "features.5": "conv2_1", "features.7": "conv2_2",
    "features.10": "conv3_1", "features.12": "conv3_2", "features.14": "conv3_3",
    "features.16": "conv3_4", "features.19": "conv4_1", "features.21": "conv4_2",
    "features.23": "conv4_3", "features.25": "conv4_4", "features.28": "conv5_1",
    "features.30": "conv5_2", "features.32": "conv5_3", "features.34": "conv5_4",
}
VGG19_NAMES.update({
    f"features.{int(k.split('.')[1]) + 1}": v.replace("conv", "relu") for k, v in list(VGG19_NAMES.items())
})

_EXTRACTOR_LOCK = threading.Lock()


def vgg19_available() -> bool:
    """Whether torchvision's ImageNet VGG19 weights are on this machine (no download)."""
    from vizkit.models.registry import weights_available

    return weights_available("vgg19")


def default_extractor() -> str:
    """``"vgg19"`` when its weights are present, else ``"random-multiscale"``."""
    return "vgg19" if vgg19_available() else "random-multiscale"


def get_extractor(
    name: str = "vgg19", device: str | torch.device | None = None, weights: str | None = "default",
) -> FeatureExtractor:
    """The cached extractor ``name`` on ``device``.

    Args:
        name: one of ``EXTRACTORS``.
        device: ``None`` picks cuda, mps, then cpu.
        weights: for ``"vgg19"``: ``"default"`` reads torchvision's ImageNet file (and fails with
            a clear message when it is missing), ``None`` leaves random weights (seeded; for
            benchmarks and tests, titled as untrained).

    Raises:
        vizkit.models.weights.WeightsError: VGG19 weights are missing; the message names the file and
            the random-multiscale alternative.
    """
    if name not in EXTRACTORS:
        raise ValueError(f"Unknown extractor {name!r}. Available: {', '.join(EXTRACTORS)}.")
    with _EXTRACTOR_LOCK:
        return _build_extractor(name, str(pick_device(device)), weights)


@functools.cache
def _build_extractor(name: str, device: str, weights: str | None) -> FeatureExtractor:
    if name == "random-multiscale":
        module: nn.Module = RandomMultiScale()
        extractor = dict(
            title=EXTRACTOR_TITLES[name],
            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
            content_layers=("branches.scale1.relu",),
            style_layers=tuple(f"branches.scale{k}.relu" for k in range(1, 5)),
            content_weight=1.0, style_weight=1e5, trained=False,
            # L-BFGS's fixed unit step overshoots on these features: at the page's defaults its
            # loss jumps (4.3, 10.8, 1.2, 2.9, ...) and ends higher than Adam's smooth descent
            # (marble 0.64 vs 0.48, mosaic 0.87 vs 0.56 after 50 steps at 128 px).
            optimizer="adam", adam_lr=0.05,
        )
    else:
        from vizkit.models import weights as weights_io
        from vizkit.models.registry import get_spec

        # Only the convolutional part is built: the classifier (120M parameters) is never used.
        module = SequentialFeatures(torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"]))
        if weights == "default":
            try:
                state = weights_io.zoo_state_dict(get_spec("vgg19"))
            except weights_io.WeightsError as error:
                raise weights_io.WeightsError(
                    f"{error} Without them, use the extractor 'random-multiscale' (untrained "
                    f"random filters), which needs no weights."
                ) from error
            state = {k: v for k, v in state.items() if k.startswith("features.")}
            weights_io.apply_state_dict(module, state, source="vgg19")
            title = EXTRACTOR_TITLES[name]
        elif weights is None:
            for layer in module.features:  # torchvision's VGG initialization
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(layer.bias)
            title = "VGG19 with random weights (untrained; for testing)"
        else:
            raise ValueError(f"weights must be 'default' or None, got {weights!r}.")
        # Style transfer reads conv and ReLU outputs: out-of-place ReLUs keep them apart.
        for layer in module.features:
            if isinstance(layer, nn.ReLU):
                layer.inplace = False
        extractor = dict(
            title=title, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            content_layers=VGG19_CONTENT_LAYERS, style_layers=VGG19_STYLE_LAYERS,
            content_weight=1.0, style_weight=1e6, trained=weights == "default",
        )
    module = module.to(torch.device(device), memory_format=torch.channels_last).eval().requires_grad_(False)
    return FeatureExtractor(name=name, module=module, device=torch.device(device), **extractor)


def layer_label(extractor: FeatureExtractor, layer: str) -> str:
    """``features.21`` → ``conv4_2 (features.21)`` for VGG19; the name itself otherwise."""
    if extractor.name == "vgg19" and layer in VGG19_NAMES:
        return f"{VGG19_NAMES[layer]} ({layer})"
    return layer


# --- color ---------------------------------------------------------------------------------

def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB → YCbCr (ITU-R BT.601 full range, as JPEG), float, channels last."""
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_ycbcr``, rounded and clipped to uint8."""
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def _luminance_pair(content: np.ndarray, style: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gray content and gray style, the style's luminance matched to the content's mean and std."""
    yc = rgb_to_ycbcr(content)[..., 0]
    ys = rgb_to_ycbcr(style)[..., 0]
    ys = (ys - ys.mean()) * (yc.std() / max(ys.std(), 1e-6)) + yc.mean()
    gray = lambda y: np.repeat(np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    return gray(yc), gray(ys)


def _with_chroma(image: np.ndarray, chroma_of: np.ndarray) -> np.ndarray:
    """``image``'s luminance with ``chroma_of``'s Cb and Cr."""
    ycc = rgb_to_ycbcr(chroma_of)
    ycc[..., 0] = rgb_to_ycbcr(image)[..., 0]
    return ycbcr_to_rgb(ycc)


# --- images --------------------------------------------------------------------------------

def _resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 H×W×3 → ``size`` (an int scales the longer side), antialiased."""
    img = np.ascontiguousarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"Expected an RGB uint8 H×W×3 image, got shape {img.shape} {img.dtype}.")
    h, w = img.shape[:2]
    if isinstance(size, int):
        scale = size / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if (h, w) == tuple(size):
        return img
    tensor = torch.from_numpy(img.copy()).permute(2, 0, 1).float()
    out = F.interpolate(tensor[None], size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def _to_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    # NCHW-contiguous: optimizers flatten the image and its gradient with .view(-1).
    return tensor.contiguous().float().div(255).to(device)


def _to_image(x: torch.Tensor) -> np.ndarray:
    return (x.detach()[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def style_images() -> dict[str, Path]:
    """The style images the project ships (``assets/styles/*.png``), by name."""
    return {p.stem: p for p in sorted(STYLE_DIR.glob("*.png"))}


# --- the optimization ----------------------------------------------------------------------

class _Objective:
    """Features, losses and their gradient for one run; targets fixed at construction."""

    def __init__(self, extractor: FeatureExtractor, content: torch.Tensor, style: torch.Tensor,
                 content_layers: tuple[str, ...], style_layers: tuple[str, ...],
                 content_weight: float, style_weight: float, tv_weight: float):
        self.extractor = extractor
        self.content_layers, self.style_layers = content_layers, style_layers
        self.layers = tuple(dict.fromkeys(content_layers + style_layers))
        self.weights = {"content": content_weight, "style": style_weight, "tv": tv_weight}
        device = extractor.device
        self.mean = torch.tensor(extractor.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(extractor.std, device=device).view(1, 3, 1, 1)
        self.autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
        # Targets: computed once, outside autograd, in float32.
        with torch.no_grad():
            content_feats = self.features(content, content_layers)
            style_feats = self.features(style, style_layers)
            self.content_targets = {k: content_feats[k].float() for k in content_layers}
            self.style_grams = {k: _gram_rows(_as_rows(style_feats[k].float())) for k in style_layers}

    def features(self, image: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        x = ((image - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.extractor.module.walk(x, layers)

    def evaluate(self, image: torch.Tensor, backward: bool) -> dict[str, float]:
        """Weighted loss terms at ``image``; with ``backward``, accumulates ∂total/∂image."""
        with torch.set_grad_enabled(backward):
            feats = self.features(image, self.layers)
        roots, grads = [], []
        terms = {"content": 0.0, "style": 0.0}
        with torch.no_grad():
            for layer in self.layers:
                h = feats[layer]
                grad = None
                if layer in self.content_targets:
                    value, grad = _content_term(h, self.content_targets[layer], self.weights["content"])
                    terms["content"] += value
                if layer in self.style_grams:
                    value, g = _style_term(h, self.style_grams[layer], self.weights["style"])
                    terms["style"] += value
                    grad = g if grad is None else grad.add_(g)
                roots.append(h)
                grads.append(grad.to(h.dtype).contiguous(memory_format=torch.channels_last))
        with torch.set_grad_enabled(backward):
            tv = tv_loss(image) * self.weights["tv"] if self.weights["tv"] else None
        if backward:
            if tv is not None:
                roots.append(tv)
                grads.append(torch.ones_like(tv))
            torch.autograd.backward(roots, grads)
        losses = {
            "content": terms["content"] * self.weights["content"],
            "style": terms["style"] * self.weights["style"],
            "tv": float(tv.detach()) if tv is not None else 0.0,
        }
        losses["total"] = losses["content"] + losses["style"] + losses["tv"]
        return losses


# L-BFGS line search: None is the PyTorch tutorial's fixed step (one evaluation per iteration).
# Measured with bench/style_transfer.py (random VGG19, 40 evaluations): strong-Wolfe wins at 64×64
# (0.0665 vs the tutorial's 0.0687) but loses at 256×256 (0.134-0.144 vs 0.089; fixed step 0.108).
_LINE_SEARCH: str | None = None


class _BudgetSpent(Exception):
    """Raised by the closure when ``steps`` evaluations are done (ends a line search early)."""


# Coarse-to-fine: the first COARSE_FRACTION of the steps run at half the size when that half is
# at least COARSE_MIN_SIZE pixels, then the image is upsampled and refined at full size (Gatys,
# Ecker, Bethge, Hertzmann & Shechtman 2017, "Controlling Perceptual Factors in Neural Style
# Transfer", §5). A coarse step costs a quarter of a full one. Measured with
# bench/style_transfer.py at 256×256, 40 evaluations: see the README's "Speed" section.
COARSE_FRACTION = 0.5
COARSE_MIN_SIZE = 128
# The shorter side every extractor can take: random-multiscale's coarsest scale (1/8) needs 3 px
# for its reflection padding; VGG19 needs 16 px up to conv5_1.
MIN_SIDE = 24


def _stages(size: int, steps: int, coarse_to_fine: bool) -> list[tuple[int, int]]:
    """(size, evaluations) of each stage of a run: one stage, or a coarse one then the full one."""
    coarse = round(steps * COARSE_FRACTION)
    if not coarse_to_fine or size // 2 < COARSE_MIN_SIZE or coarse < 1 or coarse == steps:
        return [(size, steps)]
    return [(size // 2, coarse), (size, steps - coarse)]


def style_transfer(
    content: np.ndarray,
    style: np.ndarray,
    extractor: str | FeatureExtractor = "vgg19",
    content_layers: Sequence[str] | None = None,
    style_layers: Sequence[str] | None = None,
    content_weight: float | None = None,
    style_weight: float | None = None,
    tv_weight: float = 0.0,
    optimizer: str | None = None,
    steps: int = 100,
    size: int = 256,
    init: str = "content",
    preserve_color: bool = False,
    device: str | torch.device | None = None,
    preview_every: int = 10,
    lr: float | None = None,
    seed: int = 0,
    stop: Callable[[], bool] | None = None,
    coarse_to_fine: bool = True,
) -> Generator[StyleStep, None, StyleStep]:
    """Gatys et al. 2015 style transfer as a generator of previews.

    Yields a ``StyleStep`` every ``preview_every`` steps and a final one (``done=True``): the best
    image evaluated (or the last iterate, if better), also the generator's return value.
    Closing the generator (or ``stop()`` returning true, which is checked between steps) ends
    the run between two steps; with ``stop`` the last yield is the result so far. Each step is
    one evaluation of the objective and its gradient; L-BFGS takes the tutorial's fixed step
    (``_LINE_SEARCH = "strong_wolfe"`` adds a line search whose evaluations count as steps
    too: ``steps`` caps them all), and ``stop`` is checked between two L-BFGS iterations.

    Args:
        content, style: RGB uint8 H×W×3 images (any size; the style is resized to the output).
        extractor: ``"vgg19"``, ``"random-multiscale"`` or a ``FeatureExtractor``.
        content_layers, style_layers: dotted layer names; ``None`` takes the extractor's.
        content_weight, style_weight: α and β; ``None`` takes the extractor's.
        tv_weight: γ, total-variation smoothing of the image.
        optimizer: ``"lbfgs"`` or ``"adam"``; ``None`` takes the extractor's (L-BFGS for VGG19,
            Adam for random-multiscale).
        steps: objective evaluations.
        size: the output's longer side in pixels (the content's aspect ratio is kept).
        init: start from the ``"content"`` image or from ``"noise"``.
        preserve_color: transfer luminance only, keep the content's colors (Gatys et al. 2016).
        device: ``None`` picks cuda, mps, then cpu (ignored for a ``FeatureExtractor``).
        preview_every: steps between two previews.
        lr: step size; ``None`` is 1 for L-BFGS and the extractor's ``adam_lr`` for Adam.
        seed: seeds the noise initialization.
        stop: called between steps; returning true ends the run with the result so far.
        coarse_to_fine: when ``size // 2`` is at least ``COARSE_MIN_SIZE``, run the first
            ``COARSE_FRACTION`` of the steps at half the size, then upsample and finish at full
            size. Previews of the coarse stage are shown upsampled; the losses reported are
            those of the stage's own size, and the final ones are at full size.
    """
    if optimizer not in (None, "lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}.")
    if init not in ("content", "noise"):
        raise ValueError(f"init must be 'content' or 'noise', got {init!r}.")
    if not isinstance(size, int) or not 16 <= size <= 4096:
        raise ValueError(f"size must be an integer between 16 and 4096, got {size!r}.")
    if steps < 1 or preview_every < 1:
        raise ValueError("steps and preview_every must be at least 1.")
    ext = extractor if isinstance(extractor, FeatureExtractor) else get_extractor(extractor, device)
    optimizer = optimizer or ext.optimizer
    if lr is None:
        lr = ext.adam_lr if optimizer == "adam" else 1.0
    content_layers = ext.check_layers(content_layers or ext.content_layers)
    style_layers = ext.check_layers(style_layers or ext.style_layers)
    alpha = ext.content_weight if content_weight is None else float(content_weight)
    beta = ext.style_weight if style_weight is None else float(style_weight)
    device = ext.device

    content_img = _resize(content, size)
    out_shape = content_img.shape[:2]
    if min(out_shape) < MIN_SIDE:
        raise ValueError(
            f"At size {size} the content image becomes {out_shape[1]}×{out_shape[0]} px; its shorter "
            f"side must be at least {MIN_SIDE} px. Use a larger size or crop the image.")

    def picture(x: torch.Tensor) -> np.ndarray:
        if tuple(x.shape[-2:]) != out_shape:
            x = F.interpolate(x.detach(), size=out_shape, mode="bicubic", align_corners=False)
        out = _to_image(x)
        return _with_chroma(out, content_img) if preserve_color else out

    evals = [0]
    image: torch.Tensor | None = None
    stopped = False
    best: dict[str, object] = {}
    objective: _Objective | None = None
    coarse_to_fine = coarse_to_fine and min(out_shape) // 2 >= MIN_SIDE
    for stage_size, stage_steps in _stages(size, steps, coarse_to_fine):
        stage_content = _resize(content, stage_size)
        stage_style = _resize(style, stage_content.shape[:2])
        work_content, work_style = (
            _luminance_pair(stage_content, stage_style) if preserve_color
            else (stage_content, stage_style)
        )
        objective = _Objective(
            ext, _to_tensor(work_content, device), _to_tensor(work_style, device),
            content_layers, style_layers, alpha, beta, float(tv_weight),
        )
        if image is not None:  # the coarse stage's best evaluated image, upsampled
            start = best["image"] if "image" in best else image.detach()
            image = F.interpolate(start, size=stage_content.shape[:2], mode="bicubic",
                                  align_corners=False).clamp_(0, 1).contiguous()
        elif init == "content":
            image = _to_tensor(work_content, device)
        else:
            g = torch.Generator().manual_seed(seed)
            image = torch.rand((1, 3, *stage_content.shape[:2]), generator=g).to(device)
        # The best image of this stage; losses at different sizes are not compared.
        best = {"total": math.inf}
        stopped = yield from _optimize(objective, image, optimizer, lr, evals, evals[0] + stage_steps,
                                       preview_every, steps, stop, best, picture)
        if stopped:
            break
    assert objective is not None and image is not None
    if optimizer == "adam" or _LINE_SEARCH is None or "image" not in best:
        # The last update (Adam's, or L-BFGS's fixed step) is not evaluated yet.
        with torch.no_grad():
            final = image.detach().clamp(0, 1)
            final_losses = objective.evaluate(final, backward=False)
        if final_losses["total"] <= best["total"]:
            best.update(losses=final_losses, image=final)
    result = StyleStep(step=evals[0], image=picture(best["image"]), losses=best["losses"],
                       done=True, stopped=stopped, work_size=tuple(best["image"].shape[-2:]))
    yield result
    return result


def _optimize(objective: _Objective, image: torch.Tensor, optimizer: str, lr: float,
              evals: list[int], until: int, preview_every: int, steps: int,
              stop: Callable[[], bool] | None, best: dict[str, object],
              picture: Callable[[torch.Tensor], np.ndarray]) -> Generator[StyleStep, None, bool]:
    """One stage: optimizes ``image`` in place until ``evals[0]`` reaches ``until``.

    Keeps the best evaluated image in ``best``; yields previews; returns whether ``stop`` ended it.
    """
    image.requires_grad_(True)
    budget = until - evals[0]
    if optimizer == "lbfgs":
        # One L-BFGS iteration per opt.step() call; with _LINE_SEARCH = "strong_wolfe" (Nocedal &
        # Wright 2006, alg. 3.5) no accepted point raises the loss. The budget counts every
        # closure evaluation, line search included.
        opt: torch.optim.Optimizer = torch.optim.LBFGS(
            [image], lr=lr, max_iter=1, max_eval=budget + 1, tolerance_grad=1e-12,
            tolerance_change=1e-15, line_search_fn=_LINE_SEARCH,
        )
    else:
        opt = torch.optim.Adam([image], lr=lr)

    last: dict[str, float] = {}
    pending: list[StyleStep] = []  # previews taken inside the closure, yielded after the step
    # The last evaluation: each opt.step() starts by evaluating the point the previous line
    # search accepted, which it has already evaluated; that one is answered from here, free.
    cache: dict[str, object] = {}

    def closure() -> torch.Tensor:
        # Clamping before each evaluation keeps the image valid, as in the PyTorch tutorial.
        with torch.no_grad():
            image.clamp_(0, 1)
        if "image" in cache and torch.equal(cache["image"], image):
            image.grad.copy_(cache["grad"])
            return torch.tensor(cache["total"])
        if evals[0] >= until:
            raise _BudgetSpent
        opt.zero_grad(set_to_none=False)
        last.update(objective.evaluate(image, backward=True))
        evals[0] += 1
        if last["total"] < best["total"]:
            best.update(total=last["total"], losses=dict(last), image=image.detach().clone())
        if optimizer == "lbfgs":
            cache.update(image=image.detach().clone(), grad=image.grad.clone(), total=last["total"])
        if evals[0] % preview_every == 0 and evals[0] < steps:
            pending.append(StyleStep(step=evals[0], image=picture(image), losses=dict(last),
                                     work_size=tuple(image.shape[-2:])))
        return torch.tensor(last["total"])

    while evals[0] < until:
        if stop is not None and stop():
            return True
        before = evals[0]
        try:
            opt.step(closure)
        except _BudgetSpent:
            pass
        yield from pending
        pending.clear()
        if evals[0] == before:  # converged: L-BFGS asks for nothing new
            break
    return False


def run_to_end(run: Generator[StyleStep, None, StyleStep]) -> StyleStep:
    """Drains a ``style_transfer`` generator and returns its final step."""
    last = None
    for last in run:  # noqa: B007 - the last yield is the result
        pass
    if last is None:
        raise RuntimeError("style transfer produced no result")
    return last


# --- command line --------------------------------------------------------------------------
