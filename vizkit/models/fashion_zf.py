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



SPECS = [
    ModelSpec(
        name="fashion-zf", title="fashion-zf (bundled, FashionScenes)", input_size=64,
        mean=FASHION_MEAN, std=FASHION_STD, cam_layer="features.relu5",
        classes=tuple(FASHION_CLASSES), builder=FashionZF,
        weights_file=ASSETS / "fashion-zf.safetensors", bundled=True,
    ),
]
