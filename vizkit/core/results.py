"""Frozen result types shared by every method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Explanation:
    """One attribution map.

    Attributes:
        method: the method's name, e.g. ``"grad_cam"``.
        target: the class index explained, or ``None`` for a unit/channel target.
        layer: the layer the method used, if any.
        map: H×W float32 at the model's input resolution.
        raw: the method's raw output, detached on the CPU (e.g. 1×C×H×W gradients).
        info: anything else worth showing (channel, unit, timings, approximate=True, ...).
    """

    method: str
    target: int | None
    layer: str | None
    map: np.ndarray
    raw: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Activations:
    """All channels of one layer for one image.

    Attributes:
        layer: dotted module name.
        maps: C×h×w float32 (the layer's output for the image).
        mean: per-channel spatial mean, shape C.
        max: per-channel spatial max, shape C.
        active: per-channel fraction of positions > 0, shape C.
        top_channels: channel indices sorted by mean activation, strongest first.
    """

    layer: str
    maps: np.ndarray
    mean: np.ndarray
    max: np.ndarray
    active: np.ndarray
    top_channels: np.ndarray
