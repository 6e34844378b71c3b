"""The only place vizkit touches hooks: context managers that clean up after themselves.

Every hook is registered inside a ``@contextmanager`` and removed in its ``finally``; the
``preserve_state`` guard restores every flag a method may touch (training, requires_grad,
``.grad``, ``inplace``). Gradients come from ``torch.autograd.grad`` on saved activations,
not from module backward hooks (pytorch#61519: in-place ReLUs break those).
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

Rule = Literal["guided", "deconvnet"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


class FunctionalReLUError(ValueError):
    """The model rectifies with a function call (``F.relu``) where a ``nn.ReLU`` module is needed."""


class _StopForward(Exception):
    """Raised by ``capture_outputs(stop=True)`` once every requested layer has run."""


def find_layer(module: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``named_modules()``; a wrong name lists the valid ones."""
    modules = dict(module.named_modules())
    if not isinstance(name, str) or not name or name not in modules:
        valid = [n for n in modules if n]
        close = difflib.get_close_matches(str(name), valid, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"Unknown layer {name!r}.{hint} Valid layers: {', '.join(valid)}.")
    return modules[name]


def hook_count(module: nn.Module) -> int:
    """Total number of hooks registered on ``module`` and its submodules (0 when clean)."""
    return sum(len(getattr(sub, d, {})) for sub in module.modules() for d in _HOOK_DICTS)


@contextmanager
def preserve_state(module: nn.Module) -> Iterator[None]:
    """Restores, on exit (also after an error), everything a method may change on ``module``.

    Training flags, ``inplace`` flags, each parameter's ``requires_grad`` and ``.grad``, and
    hook dictionaries (any hook added inside is dropped: hooks never outlive a call).
    """
    subs = list(module.modules())
    training = [sub.training for sub in subs]
    inplace = [(sub, sub.inplace) for sub in subs if isinstance(getattr(sub, "inplace", None), bool)]
    params = list(module.parameters())
    flags = [(p.requires_grad, p.grad) for p in params]
    hooks = [{d: list(getattr(sub, d, {})) for d in _HOOK_DICTS} for sub in subs]
    try:
        yield
    finally:
        # Only what changed is written back: setting a flag on every module and parameter cost
        # ~20 ms a call on EfficientNet-Lite0 (nn.Module.__setattr__), more than a live frame can spare.
        for sub, flag in zip(subs, training, strict=True):
            if sub.training is not flag:
                sub.training = flag
        for sub, flag in inplace:
            if sub.inplace is not flag:
                sub.inplace = flag
        for p, (requires_grad, grad) in zip(params, flags, strict=True):
            if p.requires_grad is not requires_grad:
                p.requires_grad_(requires_grad)
            if p.grad is not grad:
                p.grad = grad
        for sub, before in zip(subs, hooks, strict=True):
            for d, keys in before.items():
                registry = getattr(sub, d, None)
                if registry is None:
                    continue
                for key in [k for k in registry if k not in keys]:
                    del registry[key]


@contextmanager
def no_inplace(module: nn.Module) -> Iterator[None]:
    """Switches off ``inplace`` on every submodule that has it (torchvision's ReLUs), then restores."""
    changed = [sub for sub in module.modules() if getattr(sub, "inplace", None) is True]
    try:
        for sub in changed:
            sub.inplace = False
        yield
    finally:
        for sub in changed:
            sub.inplace = True


class Captured(dict):
    """Layer name → its output in the last call; ``calls`` counts the calls of each layer."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}


@contextmanager
def capture_outputs(
    module: nn.Module,
    layers: Iterable[str],
    *,
    detach: bool = False,
    stop: bool = False,
    first: bool = False,
    reduce: Callable[[torch.Tensor], object] | None = None,
) -> Iterator[Captured]:
    """Records the outputs of ``layers`` during forward passes run inside the block.

    A module called several times per forward (torchvision ResNet reuses one ReLU per block)
    keeps its last call, or its first with ``first``; ``captured.calls`` says how many there were.

    Args:
        module: the model.
        layers: dotted ``named_modules()`` names.
        detach: store a detached snapshot (for display). Otherwise the stored tensor stays in
            the graph, so ``torch.autograd.grad(score, captured[name])`` works, and downstream
            layers get a clone so a later in-place op (``F.relu(x, inplace=True)``) cannot
            overwrite it.
        stop: abort the forward once every layer has run (the block's forward call then
            returns early, without logits; the exception does not leave the block).
        first: keep each layer's first call, so several layers captured in one forward get
            the same outputs as each captured alone with ``stop`` (mining relies on it).
        reduce: store ``reduce(output.detach())`` instead of the output (e.g. each channel's
            maximum), so a wide layer's maps are never kept; implies a detached result.
    """
    names = list(dict.fromkeys(layers))
    targets = [(name, find_layer(module, name)) for name in names]
    captured = Captured()

    def make_hook(name: str):
        def hook(_mod, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"Layer {name!r} returns {type(output).__name__}, not a tensor.")
            captured.calls[name] = captured.calls.get(name, 0) + 1
            if first and captured.calls[name] > 1:
                result = None
            elif reduce is not None:
                captured[name] = reduce(output.detach())
                result = None
            elif detach:
                captured[name] = output.detach().clone()
                result = None
            else:
                captured[name] = output
                result = output.clone()
            if stop and len(captured) == len(names):
                raise _StopForward
            return result

        return hook

    handles = []
    try:
        for name, layer in targets:
            handles.append(layer.register_forward_hook(make_hook(name)))
        yield captured
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


class _ModifiedRectifier(torch.autograd.Function):
    """Forward: the rectifier's output; backward: the rule of guided backprop or deconvnet.

    The gradient goes straight to the rectifier's input, bypassing its own backward.

    Guided backprop (Springenberg et al. 2015): ``grad_in = max(grad_out, 0) · 1[x in the
    rectifier's linear range]``: ``x > 0`` for ReLU, ``0 < x < 6`` for ReLU6. Deconvnet (Zeiler &
    Fergus 2013): ``grad_in = max(grad_out, 0)``, the backward signal rectified whatever the
    forward input was (so also where ReLU6 saturated).
    """

    @staticmethod
    def forward(ctx, x, out, mask, guided: bool):
        ctx.guided = guided
        if guided:
            ctx.save_for_backward(mask)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clamp(min=0)
        if ctx.guided:
            (mask,) = ctx.saved_tensors
            grad = grad * mask
        return grad, None, None, None


_RECTIFIER_FUNCS = {
    F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_,
    F.relu6, F.hardtanh, F.hardtanh_, torch.nn.functional.threshold, torch.threshold,
    torch.threshold_, torch.clamp_min, torch.Tensor.clamp_min,
}

_RECTIFIER_MODULES = (nn.ReLU, nn.ReLU6)


class _RectifierWatch(TorchFunctionMode):
    """Fails on a rectifying function call made outside a hooked ReLU module."""

    def __init__(self, depth: threading.local) -> None:
        super().__init__()
        self.depth = depth

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RECTIFIER_FUNCS and getattr(self.depth, "value", 0) == 0:
            name = getattr(func, "__name__", str(func))
            raise FunctionalReLUError(
                f"This model rectifies with a function call ({name}) instead of an nn.ReLU "
                "module (e.g. torchvision's GoogLeNet/Inception BasicConv2d calls F.relu). "
                "Deconvnet and guided backprop must override every ReLU's backward pass; they "
                "cannot reach a function call, and would silently give a plain gradient there."
            )
        return func(*args, **(kwargs or {}))


@contextmanager
def rectifier_override(module: nn.Module, rule: Rule) -> Iterator[None]:
    """Replaces the backward pass of every ``nn.ReLU``/``nn.ReLU6`` call inside the block.

    ``rule="guided"`` gives guided backprop, ``rule="deconvnet"`` Zeiler & Fergus's deconvnet
    rectification. Each call of a reused module (ResNet) is overridden separately. In-place
    rectifiers are switched to out-of-place for the block. A rectifying *function* call
    (``F.relu``) anywhere in the forward raises ``FunctionalReLUError``: it cannot be
    overridden, and ignoring it would give a wrong map.
    """
    if rule not in ("guided", "deconvnet"):
        raise ValueError(f"Unknown rule {rule!r}; use 'guided' or 'deconvnet'.")
    guided = rule == "guided"
    depth = threading.local()

    def pre_hook(_mod, _inputs):
        depth.value = getattr(depth, "value", 0) + 1

    def hook(mod, inputs, output):
        depth.value -= 1
        mask = None
        if guided:
            x = inputs[0]
            mask = x > 0 if isinstance(mod, nn.ReLU) else (x > mod.min_val) & (x < mod.max_val)
        return _ModifiedRectifier.apply(inputs[0], output.detach(), mask, guided)

    rectifiers = [sub for sub in module.modules() if isinstance(sub, _RECTIFIER_MODULES)]
    handles = []
    try:
        with no_inplace(module):
            for sub in rectifiers:
                handles.append(sub.register_forward_pre_hook(pre_hook))
                handles.append(sub.register_forward_hook(hook))
            with _RectifierWatch(depth):
                yield
    finally:
        for handle in handles:
            handle.remove()
