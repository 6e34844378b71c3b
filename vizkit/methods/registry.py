"""The method registry: ``list_methods()``, ``get_method()`` (timm's registry, applied to methods).

Every explanation method is registered here once, as a ``MethodSpec``: its name, title and
citation, what it explains (a class, a callable on the logits, a unit, a layer), what it needs
from a model (a GAP head, ``nn.ReLU`` modules) and how to call it cheaply. Everything that lists
methods iterates this registry instead of keeping its own list: the pages (pages/cam.py,
pages/deconvnet.py), the sanity check, the pointing game and its command, bench/methods.py, and
the generic tests (hooks, threads, interrupts, memory; tests/support.py builds their cases).
Adding a method is its module plus one ``MethodSpec`` in the list below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from torch import nn

from vizkit.core.registry import Registry
from vizkit.core.results import Activations, Explanation
from vizkit.methods.backprop import deconvnet, guided_backprop, saliency
from vizkit.methods.class_maps import cam, grad_cam, grad_cam_pp
from vizkit.methods.filters import FilterWeights, Maximization, filter_weights, maximize_activation
from vizkit.methods.layer_activations import activations
from vizkit.methods.occlusion.sensitivity import occlusion
from vizkit.methods.receptive_fields import summarize
from vizkit.models.base import LoadedModel

#: What a method can explain: a class index (or ``None``, the top prediction), a callable on
#: the logits, one unit (a layer and a channel), or a whole layer. A method with no target
#: kind explains the model itself (its structure).
TARGET_KINDS = ("class", "callable", "unit", "layer")


@dataclass(frozen=True)
class MethodSpec:
    """One explanation method, registered once.

    Attributes:
        name: registry key, also ``Explanation.method`` of its results.
        title: a human name for the UI.
        citation: the paper it follows, e.g. ``"Selvaraju et al. 2017"``.
        summary: what it computes, in one sentence (the pages show ``citation: summary``).
        family: the module of ``vizkit.methods`` it lives in (pages group methods by it).
        fn: the function, ``fn(m, img, ...)`` (``fn(m, ...)`` when ``image`` is False).
        targets: the kinds of ``TARGET_KINDS`` it explains; empty: the model itself.
        image: whether it takes an image (False: it reads the weights or the architecture).
        forward: whether it runs the model (and so holds ``m.lock`` and can fail in a forward).
        needs_gap_head: exact only for a global-average-pooling + linear head (CAM); other
            models get a ``ValueError`` that names the alternative.
        needs_rectifiers: overrides the backward of ``nn.ReLU`` modules; a model that
            rectifies with ``F.relu`` calls gets ``vizkit.core.hooks.FunctionalReLUError``.
        layer_type: the module type a layer or unit target must have (``None``: any).
        many_units: a unit target goes in as ``channels=[c]`` (it takes many units of one
            layer per call) rather than ``channel=c``.
        long_running: reports ``progress(done, total)`` (returning False stops it), can be
            interrupted, and takes ``batch_size`` (halved on out-of-memory).
        quick: keyword arguments that make a call cheap (the generic tests use them).
        result: the type it returns.
    """

    name: str
    title: str
    citation: str
    summary: str
    family: str
    fn: Callable[..., Any] = field(repr=False)
    targets: tuple[str, ...] = ("class", "callable")
    image: bool = True
    forward: bool = True
    needs_gap_head: bool = False
    needs_rectifiers: bool = False
    layer_type: type[nn.Module] | None = None
    many_units: bool = False
    long_running: bool = False
    quick: Mapping[str, Any] = field(default_factory=dict)
    result: type = Explanation

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.targets if kind not in TARGET_KINDS]
        if unknown:
            raise ValueError(f"Method {self.name!r}: unknown target kind(s) {unknown}; "
                             f"use {', '.join(TARGET_KINDS)}.")
        object.__setattr__(self, "quick", MappingProxyType(dict(self.quick)))

    @property
    def caption(self) -> str:
        """``citation: summary``, as the pages show it."""
        return f"{self.citation}: {self.summary}"

    def run(
        self,
        m: LoadedModel,
        img: np.ndarray | None = None,
        *,
        target: Any = None,
        unit: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Calls the method with a target of any kind it takes.

        Args:
            m: the model.
            img: RGB uint8 H×W×3; ignored by a method that takes no image.
            target: a class index, ``None`` (the top prediction, or no target), or a callable.
            unit: ``(layer, channel)`` for a method that explains units.
            **kwargs: passed on (``layer=`` for a layer target, settings, ``progress``, ...).

        Raises:
            ValueError: the method does not take that kind of target (the message says which
                it takes), or it needs an image and got none.
        """
        args: list[Any] = [m]
        if self.image:
            if img is None:
                raise ValueError(f"{self.title} needs an image.")
            args.append(img)
        if target is not None:
            kind = "callable" if callable(target) else "class"
            self._check_kind(kind)
            kwargs["target"] = target
        if unit is not None:
            self._check_kind("unit")
            layer, channel = unit
            kwargs["layer"] = layer
            if self.many_units:
                kwargs["channels"] = [channel]
            else:
                kwargs["channel"] = channel
        return self.fn(*args, **kwargs)

    def _check_kind(self, kind: str) -> None:
        if kind not in self.targets:
            takes = ", ".join(self.targets) or "no target (it explains the model)"
            raise ValueError(f"{self.title} does not explain a {kind}; it takes: {takes}.")


_REGISTRY: Registry[MethodSpec] = Registry("method")


def register_method(spec: MethodSpec) -> MethodSpec:
    """Adds ``spec`` to the registry (a name may be registered once)."""
    return _REGISTRY.register(spec)


def unregister_method(name: str) -> None:
    """Removes a method (for tests that register a toy one)."""
    del _REGISTRY[get_method(name).name]


for _spec in [
    MethodSpec("activations", "Layer activations", "Zeiler & Fergus 2013", "every channel of a layer, with "
               "its statistics.", "layer_activations", activations, targets=("layer",), result=Activations),
    MethodSpec("deconvnet", "Deconvnet", "Zeiler & Fergus 2013", "rectify the backward signal at each ReLU.",
               "backprop", deconvnet, targets=("class", "callable", "unit"), needs_rectifiers=True),
    MethodSpec("guided_backprop", "Guided backprop", "Springenberg et al. 2015", "gradient, gated by forward "
               "and backward signs at each ReLU.", "backprop", guided_backprop, needs_rectifiers=True),
    MethodSpec("saliency", "Saliency", "Simonyan et al. 2014", "the plain gradient, max |·| over colours.",
               "backprop", saliency),
    MethodSpec("cam", "CAM", "Zhou et al. 2016", "the linear head's weights times the last feature maps "
               "(GAP networks only).", "class_maps", cam, targets=("class",), needs_gap_head=True),
    MethodSpec("grad_cam", "Grad-CAM", "Selvaraju et al. 2017", "feature maps weighted by their mean "
               "gradient.", "class_maps", grad_cam),
    MethodSpec("grad_cam_pp", "Grad-CAM++", "Chattopadhyay et al. 2018", "higher-order gradient weights.",
               "class_maps", grad_cam_pp),
    MethodSpec("occlusion", "Occlusion", "Zeiler & Fergus 2013", "the drop of the class probability while a "
               "patch hides each position.", "occlusion", occlusion, long_running=True,
               quick={"patch": 16, "stride": 16}),
    MethodSpec("filter_weights", "Filter weights", "Zeiler & Fergus 2013", "a convolution's kernels as "
               "images, centred on zero.", "filters", filter_weights, targets=("layer",), image=False,
               forward=False, layer_type=nn.Conv2d, result=FilterWeights),
    MethodSpec("maximize_activation", "Activation maximization", "Olah et al. 2017", "the image each channel "
               "responds to most, by regularized gradient ascent.", "filters", maximize_activation,
               targets=("unit",), image=False, many_units=True, long_running=True,
               quick={"steps": 3, "size": 32}, result=Maximization),
    MethodSpec("summarize", "Model summary", "Araujo et al. 2019", "per-layer output shape, parameters, MACs "
               "and receptive field.", "receptive_fields", summarize, targets=(), image=False, forward=False,
               result=list),
]:
    register_method(_spec)


def list_methods(
    target: str | None = None,
    family: str | None = None,
    result: type | None = None,
    long_running: bool | None = None,
) -> list[MethodSpec]:
    """Registered methods in registration order, optionally only those that match.

    Args:
        target: only methods that explain this kind of target (one of ``TARGET_KINDS``).
        family: only methods of this ``vizkit.methods`` module, e.g. ``"class_maps"``.
        result: only methods that return this type, e.g. ``Explanation``.
        long_running: only methods that are (True) or are not (False) long-running.
    """
    if target is not None and target not in TARGET_KINDS:
        raise ValueError(f"Unknown target kind {target!r}: use one of {', '.join(TARGET_KINDS)}.")
    return [
        spec for spec in _REGISTRY.values()
        if (target is None or target in spec.targets)
        and (family is None or spec.family == family)
        and (result is None or spec.result is result)
        and (long_running is None or spec.long_running == long_running)
    ]


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``; a wrong name lists the valid ones."""
    return _REGISTRY.lookup(name)
