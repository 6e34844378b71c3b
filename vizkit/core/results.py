"""Frozen result types shared by every method."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

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
        info: anything else worth showing, by name (channel, unit, ...); a method whose run
            description other code reads gives a typed ``InfoRecord`` (occlusion's
            ``OcclusionRun``), which reads as the same mapping.
    """

    method: str
    target: int | None
    layer: str | None
    map: np.ndarray
    raw: torch.Tensor
    info: Mapping[str, Any] = field(default_factory=dict)


class InfoRecord(Mapping):
    """Base of a frozen dataclass that also reads as ``Explanation.info``'s mapping.

    Code reads the typed fields (``run.box``); the mapping view (``info["box"]``, ``"fallback" in
    info``) keeps the ``Explanation`` contract for code that shows any method's ``info``. Its keys
    are the fields, less those in ``OPTIONAL`` that are ``None`` (a value that does not apply), plus
    the properties named in ``DERIVED``. Equality is identity (fields hold arrays).
    """

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    DERIVED: ClassVar[tuple[str, ...]] = ()

    def _keys(self) -> list[str]:
        names = [f.name for f in fields(self)  # type: ignore[arg-type]
                 if not (f.name in self.OPTIONAL and getattr(self, f.name) is None)]
        return names + list(self.DERIVED)

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    __eq__ = object.__eq__
    __hash__ = object.__hash__


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
