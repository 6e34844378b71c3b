"""Class activation maps: CAM (Zhou et al. 2016), Grad-CAM (Selvaraju et al. 2017) and
Grad-CAM++ (Chattopadhyay et al. 2018).

Each weighs the feature maps ``A_k`` of one layer (default ``m.spec.cam_layer``) and keeps the
positive part: ``raw = ReLU(Σ_k w_k A_k)`` at the layer's resolution; ``map`` is ``raw``
upsampled bilinearly (align_corners=False) to the model's input resolution.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vizkit.core.hooks import capture_outputs, find_layer, preserve_state
from vizkit.core.results import Explanation
from vizkit.core.targets import Target, check_target_early, resolve_target, target_score
from vizkit.models.base import LoadedModel


def _upsample(raw: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    up = F.interpolate(raw[None, None], size=size, mode="bilinear", align_corners=False)
    return up[0, 0].float().numpy()


def _feature_map(layer: str, act: torch.Tensor) -> torch.Tensor:
    if act.dim() != 4:
        raise ValueError(f"Layer {layer!r} outputs shape {tuple(act.shape)}; CAM methods need N×C×H×W.")
    return act


def _layer_gradient(m: LoadedModel, img: np.ndarray, target: Target, layer: str | None):
    """Feature maps A, ∂score/∂A (both 1×C×h×w, CPU), the resolved target, layer name, input size."""
    check_target_early(m, target)
    layer = layer or m.spec.cam_layer
    find_layer(m.module, layer)
    with m.lock, preserve_state(m.module), capture_outputs(m.module, [layer]) as acts:
        x = m.preprocess(img)
        logits = m.module(x)
        act = _feature_map(layer, acts[layer])
        resolved = resolve_target(m, logits, target)
        (grad,) = torch.autograd.grad(target_score(logits, resolved).sum(), act)
    return act.detach().cpu(), grad.detach().cpu(), resolved, layer, tuple(x.shape[-2:])


def _result(method: str, weighted: torch.Tensor, resolved, layer: str, size, info: dict) -> Explanation:
    raw = weighted.clamp(min=0)
    if callable(resolved):
        info = {**info, "target": "callable"}
    return Explanation(method=method, target=resolved if isinstance(resolved, int) else None,
                       layer=layer, map=_upsample(raw, size), raw=raw, info=info)


def grad_cam(m: LoadedModel, img: np.ndarray, target: Target = None, layer: str | None = None) -> Explanation:
    """Grad-CAM (Selvaraju et al. 2017): ``ReLU(Σ_k α_k A_k)``, ``α_k = mean_ij ∂S/∂A_k^ij``.

    Args:
        m: the model.
        img: RGB uint8 H×W×3.
        target: class index, ``None`` for the top prediction, or a callable on the logits.
        layer: dotted layer name; default ``m.spec.cam_layer``.
    """
    act, grad, resolved, layer, size = _layer_gradient(m, img, target, layer)
    alpha = grad.mean(dim=(2, 3), keepdim=True)
    return _result("grad_cam", (alpha * act).sum(1)[0], resolved, layer, size, {})


def grad_cam_pp(
    m: LoadedModel, img: np.ndarray, target: Target = None, layer: str | None = None
) -> Explanation:
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 with the exponential score's closed form).

    ``w_k = Σ_ij a_k^ij ReLU(g_k^ij)``, ``a_k^ij = g² / (2g² + Σ_ab A_k^ab · g³)`` (0 where g = 0),
    ``g = ∂S/∂A``; then ``ReLU(Σ_k w_k A_k)``.
    """
    act, grad, resolved, layer, size = _layer_gradient(m, img, target, layer)
    act, grad = act.double(), grad.double()
    g2, g3 = grad.pow(2), grad.pow(3)
    denom = 2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(grad != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        torch.zeros_like(grad))
    weights = (alpha * grad.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return _result("grad_cam_pp", (weights * act).sum(1)[0].float(), resolved, layer, size, {})


def _gap_linear_head(module: nn.Module, act: torch.Tensor, logits: torch.Tensor) -> nn.Linear | None:
    """The Linear layer ``fc`` with ``logits == fc(mean_ij A)``, if the model's head is GAP + linear."""
    pooled = act.mean(dim=(2, 3))
    scale = float(logits.abs().max()) + 1e-12
    for sub in module.modules():
        if isinstance(sub, nn.Linear) and sub.in_features == act.shape[1] \
                and sub.out_features == logits.shape[1]:
            if torch.allclose(F.linear(pooled, sub.weight, sub.bias), logits, rtol=1e-4, atol=1e-5 * scale):
                return sub
    return None


def cam_head(m: LoadedModel, act: torch.Tensor, logits: torch.Tensor, layer: str) -> nn.Linear:
    """The GAP + linear head that CAM weighs ``act`` (``layer``'s output) with, or a clear error."""
    head = _gap_linear_head(m.module, act, logits)
    if head is None:
        raise ValueError(
            f"CAM needs a global-average-pooling + linear head fed by layer {layer!r}; "
            f"{m.spec.name} has none there (its logits are not fc(mean(A))). Use grad_cam instead."
        )
    return head


def cam(m: LoadedModel, img: np.ndarray, target: int | None = None, layer: str | None = None) -> Explanation:
    """CAM (Zhou et al. 2016): ``ReLU(Σ_k w_k^c A_k)`` with the linear head's weights ``w^c``.

    Exact for a global-average-pooling + linear head fed by ``layer`` (default
    ``m.spec.cam_layer``); the head is verified numerically (``logits == fc(mean A)``).

    Raises:
        ValueError: the model has no GAP + linear head after ``layer`` (use ``grad_cam``), or
            the target is a callable (CAM explains one class).
    """
    if callable(target):
        raise ValueError("CAM explains one class: give a class index or None, not a callable.")
    check_target_early(m, target)
    layer = layer or m.spec.cam_layer
    find_layer(m.module, layer)
    with m.lock, preserve_state(m.module), torch.no_grad():
        with capture_outputs(m.module, [layer], detach=True) as acts:
            x = m.preprocess(img)
            logits = m.module(x)
        act = _feature_map(layer, acts[layer])
        head = cam_head(m, act, logits, layer)
        resolved = resolve_target(m, logits, target)
        weighted = torch.einsum("k,khw->hw", head.weight[resolved], act[0])
    head_name = next(n for n, s in m.module.named_modules() if s is head)
    return _result("cam", weighted.detach().float().cpu(), resolved, layer, tuple(x.shape[-2:]),
                   {"head": head_name})
