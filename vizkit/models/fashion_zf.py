"""The bundled model: ``fashion-zf``, a ZFNet-style CNN with a GAP head, trained on FashionScenes.

It is the default for the bundled scenes and needs no network at all: its weights are
``assets/fashion-zf.safetensors``, written by ``python -m vizkit train`` (``vizkit/data/training.py``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from vizkit.core.assets import ASSETS
from vizkit.models.base import ModelSpec

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MEAN = (0.5, 0.5, 0.5)
FASHION_STD = (0.25, 0.25, 0.25)


class FashionZF(nn.Module):
    """A small ZFNet-style CNN with a global-average-pooling head (Lin et al. 2014).

    conv → ReLU (modules, not ``F.relu``, so deconvnet can rectify them) → max-pool, five
    convolutions, then GAP and one linear layer, so CAM (Zhou et al. 2016) is exact.
    """

    widths = (48, 96, 160, 160, 256)

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] | None = None):
        super().__init__()
        widths = widths or self.widths
        layers: list[tuple[str, nn.Module]] = []
        # Block i: conv (5×5 first, then 3×3, "same" padding) → BN → ReLU, then a 2×2 max-pool
        # after blocks 1, 2 and 4 (64 → 8 px before the GAP head).
        for i, (c_in, c_out) in enumerate(zip((3, *widths[:-1]), widths, strict=True), 1):
            kernel = 5 if i == 1 else 3
            layers += [(f"conv{i}", nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)),
                       (f"bn{i}", nn.BatchNorm2d(c_out)), (f"relu{i}", nn.ReLU(inplace=True))]
            if i in (1, 2, 4):
                layers.append((f"pool{i}", nn.MaxPool2d(2)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(torch.flatten(x, 1))



SPECS = [
    ModelSpec(
        name="fashion-zf", title="fashion-zf (bundled, FashionScenes)", input_size=64,
        mean=FASHION_MEAN, std=FASHION_STD, cam_layer="features.relu5",
        classes=tuple(FASHION_CLASSES), builder=FashionZF,
        weights_file=ASSETS / "fashion-zf.safetensors", bundled=True,
    ),
]
