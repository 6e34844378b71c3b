"""Gradient maps in pixel space: saliency, guided backprop, and Zeiler & Fergus's deconvnet.

All three are one backward pass from a score to the input pixels; they differ only in how a
rectifier passes the signal back (``vizkit.core.hooks.rectifier_override``):

- saliency (Simonyan et al. 2014): the plain gradient, ``map = max_c |∂S/∂x_c|``;
- guided backprop (Springenberg et al. 2015): ``R_in = max(R_out, 0) · 1[x > 0]`` at each ReLU;
- deconvnet (Zeiler & Fergus 2013): ``R_in = max(R_out, 0)`` at each ReLU, while max-pooling
  routes the signal through the forward pass's switches and convolutions apply their
  transposed filters — exactly what autograd does for those layers.

ReLU6 (EfficientNet-Lite, MobileNet V2) clips at 6 as well as 0. Deconvnet rectifies only the
backward signal, ``R_in = max(R_out, 0)``, whatever the forward input was; guided backprop also
gates on the forward input lying in the linear range, ``R_in = max(R_out, 0) · 1[0 < x < 6]``
(where ReLU6's own gradient is 1), so a saturated unit passes nothing back, as a dead one does.

``raw`` is the signed 1×3×S×S pixel-space signal; ``map`` reduces it to S×S as the largest
absolute value over colour channels (Simonyan et al. 2014, section 3.1).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from vizkit.core.hooks import Rule, capture_outputs, find_layer, preserve_state, rectifier_override
from vizkit.core.results import Explanation
from vizkit.core.targets import Target, check_target_early, resolve_target, target_score
from vizkit.models.base import LoadedModel

Unit = tuple[int, int] | str | None


def channel_max_abs(grad: torch.Tensor) -> np.ndarray:
    """S×S map of a 1×C×S×S pixel-space signal: ``max_c |g_c|`` (Simonyan et al. 2014)."""
    return grad[0].abs().amax(dim=0).float().numpy()


def _target_field(target: int | object) -> int | None:
    return target if isinstance(target, int) else None


def input_gradient(
    m: LoadedModel, img: np.ndarray, target: Target, rule: Rule | None
) -> tuple[torch.Tensor, int | object]:
    """∂ score / ∂ pixels (1×3×S×S, CPU) with ReLU backward ``rule``; also the resolved target."""
    check_target_early(m, target)
    with m.lock, preserve_state(m.module):
        with rectifier_override(m.module, rule) if rule else nullcontext():
            x = m.preprocess(img).requires_grad_(True)
            logits = m.module(x)
            resolved = resolve_target(m, logits, target)
            score = target_score(logits, resolved).sum()
            (grad,) = torch.autograd.grad(score, x)
    return grad.detach().cpu(), resolved


def _class_explanation(method: str, m: LoadedModel, img: np.ndarray, target: Target,
                       rule: Rule | None) -> Explanation:
    grad, resolved = input_gradient(m, img, target, rule)
    info = {"rule": rule or "gradient"}
    if callable(resolved):
        info["target"] = "callable"
    return Explanation(method=method, target=_target_field(resolved), layer=None,
                       map=channel_max_abs(grad), raw=grad, info=info)


def saliency(m: LoadedModel, img: np.ndarray, target: Target = None) -> Explanation:
    """Gradient saliency (Simonyan et al. 2014): ``map = max_c |∂S_target/∂x_c|``.

    Args:
        m: the model.
        img: RGB uint8 H×W×3.
        target: class index, ``None`` for the top prediction, or a callable on the logits.
    """
    return _class_explanation("saliency", m, img, target, None)


def guided_backprop(m: LoadedModel, img: np.ndarray, target: Target = None) -> Explanation:
    """Guided backprop (Springenberg et al. 2015): ``R_in = max(R_out, 0) · 1[x > 0]`` at ReLUs.

    Raises:
        vizkit.core.hooks.FunctionalReLUError: the model rectifies with ``F.relu`` calls (GoogLeNet),
            which cannot be overridden; a plain gradient there would be a wrong map.
    """
    return _class_explanation("guided_backprop", m, img, target, "guided")


def deconvnet(
    m: LoadedModel,
    img: np.ndarray,
    layer: str | None = None,
    channel: int | None = None,
    unit: Unit = None,
    *,
    target: Target = None,
) -> Explanation:
    """Zeiler & Fergus (2013) deconvnet projection back to pixels.

    Two forms:

    - unit form, ``deconvnet(m, img, layer, channel, unit=None)``: all other activations of
      ``layer`` are set to zero and the chosen activation is projected down (unpooling with
      the forward switches, rectification, transposed filters). ``unit=(y, x)`` picks a
      position, ``None`` the channel's strongest one, ``"all"`` the whole channel map. The
      projected signal is the activation itself, so ``raw`` is that value times the
      deconvnet "gradient" of the unit (captum ``NeuronDeconvolution``).
    - class form, ``deconvnet(m, img, target=...)`` (no layer, no channel): the projection of
      a class score, as captum ``Deconvolution``.

    Raises:
        ValueError: a wrong layer name (the message lists the valid ones), channel or unit out
            of range, or a mix of both forms.
        vizkit.core.hooks.FunctionalReLUError: the model rectifies with ``F.relu`` calls (GoogLeNet).
    """
    if layer is None and channel is None:
        if unit is not None:
            raise ValueError("unit needs a layer and a channel.")
        return _class_explanation("deconvnet", m, img, target, "deconvnet")
    if layer is None or channel is None:
        raise ValueError("The unit form needs both layer and channel; the class form neither.")
    if target is not None:
        raise ValueError("Give either layer/channel (a unit) or target (a class), not both.")
    find_layer(m.module, layer)
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise ValueError(f"channel must be an integer, got {channel!r}.")
    channel = int(channel)
    with m.lock, preserve_state(m.module), rectifier_override(m.module, "deconvnet"):
        with capture_outputs(m.module, [layer]) as acts:
            x = m.preprocess(img).requires_grad_(True)
            m.module(x)
        act = acts[layer]
        if act.dim() == 2:
            act4 = act[:, :, None, None]
        elif act.dim() == 4:
            act4 = act
        else:
            raise ValueError(f"Layer {layer!r} outputs shape {tuple(act.shape)}; deconvnet needs N×C×H×W.")
        n_channels, h, w = act4.shape[1:]
        if not 0 <= channel < n_channels:
            raise ValueError(f"Channel {channel} is outside layer {layer!r}'s {n_channels} channels.")
        fmap = act4[0, channel].detach()
        signal = torch.zeros_like(act4)
        if isinstance(unit, str):
            if unit != "all":
                raise ValueError(f"unit must be (y, x), None (strongest) or 'all', got {unit!r}.")
            signal[0, channel] = fmap
            where: tuple[int, int] | str = "all"
            value = float(fmap.max())
        else:
            if unit is None:
                flat = int(fmap.flatten().argmax())
                where = (flat // w, flat % w)
            else:
                y, xx = (int(v) for v in unit)
                if not (0 <= y < h and 0 <= xx < w):
                    raise ValueError(f"Unit {unit!r} is outside layer {layer!r}'s {h}×{w} map.")
                where = (y, xx)
            value = float(fmap[where])
            signal[0, channel, where[0], where[1]] = fmap[where]
        (grad,) = torch.autograd.grad(act4, x, grad_outputs=signal)
    grad = grad.detach().cpu()
    info = {"channel": channel, "unit": where, "activation": value,
            "layer_shape": tuple(act.shape[1:]), "calls": acts.calls[layer]}
    return Explanation(method="deconvnet", target=None, layer=layer, map=channel_max_abs(grad),
                       raw=grad, info=info)
