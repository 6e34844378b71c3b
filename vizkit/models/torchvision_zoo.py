"""The torchvision zoo: AlexNet, VGG, ResNet, GoogLeNet, SqueezeNet, MobileNet V2.

torchvision's architectures, weight enums, class names and preprocessing. Their weights come
from torchvision's cache or its download (``vizkit/models/weights.py``); offline, a local copy is
imported with ``python -m vizkit weights import FILE --model NAME``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torchvision
from torch import nn

from vizkit.models.base import ModelSpec
from vizkit.models.weights import (
    WeightsError,
    apply_state_dict,
    expected_hash_prefix,
    read_state_dict,
    sha256_of,
    zoo_checkpoint_path,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _zoo(name: str, title: str, enum, cam_layer: str) -> ModelSpec:
    return ModelSpec(
        name=name, title=title, input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        cam_layer=cam_layer, classes=tuple(enum.meta["categories"]),
        builder=getattr(torchvision.models, name), weights_enum=enum,
    )


_tv = torchvision.models
SPECS = [
    _zoo("alexnet", "AlexNet", _tv.AlexNet_Weights.IMAGENET1K_V1, "features.11"),
    _zoo("vgg16", "VGG16", _tv.VGG16_Weights.IMAGENET1K_V1, "features.29"),
    _zoo("vgg19", "VGG19", _tv.VGG19_Weights.IMAGENET1K_V1, "features.35"),
    _zoo("resnet18", "ResNet-18", _tv.ResNet18_Weights.IMAGENET1K_V1, "layer4"),
    _zoo("resnet50", "ResNet-50", _tv.ResNet50_Weights.IMAGENET1K_V2, "layer4"),
    _zoo("googlenet", "GoogLeNet", _tv.GoogLeNet_Weights.IMAGENET1K_V1, "inception5b"),
    _zoo("squeezenet1_1", "SqueezeNet 1.1", _tv.SqueezeNet1_1_Weights.IMAGENET1K_V1, "features.12"),
    _zoo("mobilenet_v2", "MobileNet V2", _tv.MobileNet_V2_Weights.IMAGENET1K_V2, "features.18"),
]


def build_zoo_module(spec: ModelSpec, pretrained: bool) -> nn.Module:
    """An untrained torchvision module of ``spec``'s architecture, shaped to take its weights."""
    kwargs: dict = {"weights": None}
    if spec.name == "googlenet":
        # torchvision's pretrained GoogLeNet expects transform_input and carries aux heads
        # in its state dict; without weights, aux heads only slow the forward.
        kwargs.update(aux_logits=pretrained, transform_input=pretrained, init_weights=not pretrained)
    return spec.builder(**kwargs)


def finish_loading(module: nn.Module, spec: ModelSpec) -> None:
    """Drops what only training needs once the weights are in (GoogLeNet's auxiliary heads)."""
    if spec.name == "googlenet":
        module.aux_logits = False
        module.aux1 = None
        module.aux2 = None


def import_zoo_weights(source: str | Path, spec: ModelSpec) -> Path:
    """Copies a local torchvision checkpoint into the cache after checking it.

    Checks, in order: torchvision's sha256 prefix from the file name, that it reads as a plain
    state dict (no pickle), and that it loads strictly into ``spec``'s architecture. The copy is
    atomic (temporary file, then rename).

    Returns:
        The path it now has in the cache.
    """
    source = Path(source)
    if not source.is_file():
        raise WeightsError(f"File not found: {source}")
    target = zoo_checkpoint_path(spec)
    prefix = expected_hash_prefix(target.name)
    digest = sha256_of(source)
    if not digest.startswith(prefix):
        raise WeightsError(
            f"{source.name} is not torchvision's {target.name}: its sha256 starts with "
            f"{digest[:len(prefix)]}, torchvision's file starts with {prefix}. The download may be "
            f"incomplete, or it is another model's file. For your own weights use "
            f"load_model({spec.name!r}, weights=PATH) instead."
        )
    module = build_zoo_module(spec, pretrained=True)
    apply_state_dict(module, read_state_dict(source), source=source.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".import-", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        shutil.copyfile(source, tmp_path)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)
    return target
