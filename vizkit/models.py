"""The model registry: specs, ``list_models()``, ``load_model()``.

Follows timm's pattern: a registry of specs (input size, mean, std, classes, default CAM layer)
and one constructor, so tests parametrized over ``list_models()`` cover every model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.transforms.v2 import functional as TF

from vizkit import weights as weights_io
from vizkit.devices import pick_device

ASSETS = Path(__file__).resolve().parent.parent / "assets"

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


class FashionZF(nn.Module):
    """A small ZFNet-style CNN with a global-average-pooling head (Lin et al. 2014).

    conv → ReLU (modules, not ``F.relu``, so deconvnet can rectify them) → max-pool, five
    convolutions, then GAP and one linear layer, so CAM (Zhou et al. 2016) is exact.
    """

    widths = (48, 96, 160, 160, 256)

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] | None = None):
        super().__init__()
        w1, w2, w3, w4, w5 = widths or self.widths
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, w1, 5, padding=2)),
            ("bn1", nn.BatchNorm2d(w1)),
            ("relu1", nn.ReLU(inplace=True)),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(w1, w2, 3, padding=1)),
            ("bn2", nn.BatchNorm2d(w2)),
            ("relu2", nn.ReLU(inplace=True)),
            ("pool2", nn.MaxPool2d(2)),
            ("conv3", nn.Conv2d(w2, w3, 3, padding=1)),
            ("bn3", nn.BatchNorm2d(w3)),
            ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(w3, w4, 3, padding=1)),
            ("bn4", nn.BatchNorm2d(w4)),
            ("relu4", nn.ReLU(inplace=True)),
            ("pool4", nn.MaxPool2d(2)),
            ("conv5", nn.Conv2d(w4, w5, 3, padding=1)),
            ("bn5", nn.BatchNorm2d(w5)),
            ("relu5", nn.ReLU(inplace=True)),
        ]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(torch.flatten(x, 1))


@dataclass(frozen=True)
class ModelSpec:
    """What vizkit needs to know about one model.

    Attributes:
        name: registry key.
        title: a human name for the UI.
        input_size: square side the model sees.
        mean, std: per-channel normalization of [0, 1] RGB.
        cam_layer: default layer for CAM / Grad-CAM (dotted ``named_modules()`` name).
        classes: class names, index-aligned with the logits.
        weights_enum: torchvision weight enum member, ``None`` for the bundled model.
        weights_file: the bundled safetensors file, ``None`` for zoo models.
        bundled: whether it works with no network at all.
    """

    name: str
    title: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cam_layer: str
    classes: tuple[str, ...]
    builder: Callable[..., nn.Module] = field(repr=False)
    weights_enum: object | None = None
    weights_file: Path | None = None
    bundled: bool = False


@dataclass
class LoadedModel:
    """A model ready for vizkit: module in eval mode on its device, plus its spec.

    ``lock`` serializes hook use: Streamlit shares one cached model across session threads.
    """

    module: nn.Module
    spec: ModelSpec
    device: torch.device
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def resize(self, img: np.ndarray) -> np.ndarray:
        """The uint8 H×W×3 image exactly as the model sees it (for overlays)."""
        tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        size = [self.spec.input_size, self.spec.input_size]
        resized = TF.resize(tensor, size, antialias=True)
        return resized.permute(1, 2, 0).contiguous().numpy()

    def preprocess(self, img: np.ndarray) -> torch.Tensor:
        """RGB uint8 H×W×3 → normalized 1×3×S×S float tensor on the model's device."""
        tensor = torch.from_numpy(self.resize(img)).permute(2, 0, 1).float().div_(255)
        tensor = TF.normalize(tensor, list(self.spec.mean), list(self.spec.std))
        return tensor.unsqueeze(0).to(self.device)

    def deprocess(self, tensor: torch.Tensor) -> np.ndarray:
        """Inverse of ``preprocess``: 1×3×S×S (or 3×S×S) → uint8 H×W×3, clipped."""
        x = tensor.detach().float().cpu()
        if x.dim() == 4:
            x = x[0]
        mean = torch.tensor(self.spec.mean).view(3, 1, 1)
        std = torch.tensor(self.spec.std).view(3, 1, 1)
        x = (x * std + mean).clamp(0, 1)
        return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    def layers(self) -> list[str]:
        """Dotted names of the leaf and block modules, in forward-definition order."""
        return [name for name, _ in self.module.named_modules() if name]

    def conv_layers(self) -> list[str]:
        """Dotted names of the Conv2d modules."""
        return [n for n, m in self.module.named_modules() if isinstance(m, nn.Conv2d)]

    def check_target(self, target: int) -> int:
        """Rejects a class index outside the logits before it reaches the device."""
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
            raise ValueError(f"Class target must be an integer index, got {target!r}.")
        if not 0 <= int(target) < len(self.spec.classes):
            raise ValueError(
                f"Class index {target} is outside this model's {len(self.spec.classes)} classes "
                f"(0..{len(self.spec.classes) - 1})."
            )
        return int(target)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MEAN = (0.5, 0.5, 0.5)
FASHION_STD = (0.25, 0.25, 0.25)


def _zoo(name: str, title: str, enum, cam_layer: str) -> ModelSpec:
    return ModelSpec(
        name=name, title=title, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        cam_layer=cam_layer, classes=tuple(enum.meta["categories"]),
        builder=getattr(torchvision.models, name), weights_enum=enum,
    )


_tv = torchvision.models
REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="fashion-zf", title="fashion-zf (bundled, FashionScenes)", input_size=64,
            mean=FASHION_MEAN, std=FASHION_STD, cam_layer="features.relu5",
            classes=tuple(FASHION_CLASSES), builder=FashionZF,
            weights_file=ASSETS / "fashion-zf.safetensors", bundled=True,
        ),
        _zoo("alexnet", "AlexNet", _tv.AlexNet_Weights.IMAGENET1K_V1, "features.11"),
        _zoo("vgg16", "VGG16", _tv.VGG16_Weights.IMAGENET1K_V1, "features.29"),
        _zoo("vgg19", "VGG19", _tv.VGG19_Weights.IMAGENET1K_V1, "features.35"),
        _zoo("resnet18", "ResNet-18", _tv.ResNet18_Weights.IMAGENET1K_V1, "layer4"),
        _zoo("resnet50", "ResNet-50", _tv.ResNet50_Weights.IMAGENET1K_V2, "layer4"),
        _zoo("googlenet", "GoogLeNet", _tv.GoogLeNet_Weights.IMAGENET1K_V1, "inception5b"),
        _zoo("squeezenet1_1", "SqueezeNet 1.1", _tv.SqueezeNet1_1_Weights.IMAGENET1K_V1,
             "features.12"),
        _zoo("mobilenet_v2", "MobileNet V2", _tv.MobileNet_V2_Weights.IMAGENET1K_V2,
             "features.18"),
    ]
}


def list_models() -> list[str]:
    """Registry names, the bundled model first."""
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; a wrong name lists the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}. Available: {', '.join(REGISTRY)}.") from None


def weights_available(name: str) -> bool:
    """Whether ``name`` can load its trained weights with no network."""
    spec = get_spec(name)
    if spec.bundled:
        return spec.weights_file is not None and spec.weights_file.is_file()
    return weights_io.zoo_checkpoint_path(spec).is_file()


def build_module(spec: ModelSpec, pretrained: bool) -> nn.Module:
    """An untrained module of ``spec``'s architecture, shaped to take its pretrained weights."""
    if spec.bundled:
        return spec.builder(num_classes=len(spec.classes))
    kwargs: dict = {"weights": None}
    if spec.name == "googlenet":
        # torchvision's pretrained GoogLeNet expects transform_input and carries aux heads
        # in its state dict; without weights, aux heads only slow the forward.
        kwargs.update(aux_logits=pretrained, transform_input=pretrained, init_weights=not pretrained)
    return spec.builder(**kwargs)


def load_model(
    name: str,
    device: str | torch.device | None = None,
    weights: str | Path | None = "default",
) -> LoadedModel:
    """Builds a registry model, loads its weights, puts it in eval mode on ``device``.

    Args:
        name: a name from ``list_models()``.
        device: ``None`` picks cuda, mps, then cpu (``VIZKIT_DEVICE`` overrides).
        weights: ``"default"`` for the bundled or torchvision weights, ``None`` for random
            initialization (seed torch first for reproducibility), or a path to a user's
            safetensors / state-dict file.

    Raises:
        vizkit.weights.WeightsError: weights missing (the message names file and folder) or
            unusable (pickle, wrong keys or shapes, NaN/Inf).
    """
    spec = get_spec(name)
    pretrained = weights is not None
    module = build_module(spec, pretrained)
    if weights == "default":
        if spec.bundled:
            state = weights_io.read_state_dict(spec.weights_file)
        else:
            state = weights_io.zoo_state_dict(spec)
        weights_io.apply_state_dict(module, state, source=spec.name)
    elif weights is not None:
        state = weights_io.read_state_dict(Path(weights))
        weights_io.apply_state_dict(module, state, source=str(weights))
    if spec.name == "googlenet" and pretrained:
        module.aux_logits = False
        module.aux1 = None
        module.aux2 = None
    return wrap_module(module, spec, device)


def wrap_module(module: nn.Module, spec: ModelSpec, device=None) -> LoadedModel:
    """Wraps any module with a spec (tests use this for tiny hand-set models)."""
    chosen = pick_device(device)
    module = module.to(chosen).eval()
    return LoadedModel(module=module, spec=spec, device=chosen)
