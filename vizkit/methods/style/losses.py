"""The objective of neural style transfer (Gatys, Ecker & Bethge 2015) and its gradient.

An image ``x`` is optimized so that its features ``F_l`` match the content image's ``P_l`` and its
Gram matrices ``G_l = F_l F_lᵀ / (C·M)`` (C channels, M = H·W positions) match the style image's
``A_l``:

    total = α·Σ_l mean((F_l − P_l)²) + β·Σ_l mean((G_l − A_l)²) + γ·TV(x)

(the normalization of the PyTorch tutorial, so its weights carry over). The gradients of the
content and style terms are written in closed form while the features are computed,

    ∂/∂F mean((F − P)²) = 2(F − P)/(C·M),    ∂/∂F mean((G − A)²) = 4(G − A)F/(C³·M),

and pushed into one backward pass from every loss layer at once: no loss modules, no hooks, no
autograd graph for the Grams, targets computed once outside autograd (``Objective``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vizkit.methods.style.extractors import FeatureExtractor


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix ``G = F Fᵀ / (C·M)`` of 1×C×H×W features (Gatys et al. 2015, eq. 3)."""
    _, c, h, w = features.shape
    flat = features.reshape(c, h * w)
    return flat @ flat.T / (c * h * w)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Content term ``mean((F − P)²)`` (Gatys et al. 2015, eq. 1, mean instead of ½·sum)."""
    return (features - target).square().mean()


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Style term of one layer ``mean((G − A)²)`` over the C² Gram entries (Gatys et al., eq. 4)."""
    return (gram_matrix(features) - target_gram).square().mean()


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation ``mean((x[i+1,j] − x[i,j])²) + mean((x[i,j+1] − x[i,j])²)``."""
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    return dy.square().mean() + dx.square().mean()


def as_rows(features: torch.Tensor) -> torch.Tensor:
    """1×C×H×W → M×C, a view when ``features`` is channels_last (no copy)."""
    _, c, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(h * w, c)


def gram_of_rows(rows: torch.Tensor) -> torch.Tensor:
    """``gram_matrix`` of M×C rows (``as_rows``): ``RᵀR / (C·M)``."""
    m, c = rows.shape
    return rows.T @ rows / (c * m)


def style_term(features: torch.Tensor, target_gram: torch.Tensor,
               weight: float = 1.0) -> tuple[float, torch.Tensor]:
    """``mean((G − A)²)`` and ``weight`` times its gradient ``4(G − A)F/(C³·M)``.

    In the target's precision; the weight is folded into the C×C factor (no full-size product).
    """
    _, c, h, w = features.shape
    rows = as_rows(features.to(target_gram.dtype))
    diff = gram_of_rows(rows) - target_gram
    loss = diff.square().mean()
    grad_rows = rows @ (diff * (weight * 4.0 / (c ** 3 * h * w)))
    grad = grad_rows.reshape(1, h, w, c).permute(0, 3, 1, 2)
    return float(loss), grad


def content_term(features: torch.Tensor, target: torch.Tensor,
                 weight: float = 1.0) -> tuple[float, torch.Tensor]:
    """``mean((F − P)²)`` and ``weight`` times its gradient ``2(F − P)/(C·M)``."""
    diff = features.to(target.dtype) - target
    return float(diff.square().mean()), diff * (weight * 2.0 / diff.numel())


@dataclass(frozen=True)
class LossSettings:
    """What the objective measures: the layers of each term and the weights α, β, γ.

    Attributes:
        content_layers: layers whose features must match the content image's (dotted names).
        style_layers: layers whose Gram matrices must match the style image's.
        content_weight, style_weight, tv_weight: α, β and γ of the total.
    """

    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    content_weight: float
    style_weight: float
    tv_weight: float = 0.0


class Objective:
    """Features, losses and their gradient for one run; targets fixed at construction."""

    def __init__(self, extractor: FeatureExtractor, content: torch.Tensor, style: torch.Tensor,
                 settings: LossSettings):
        self.extractor = extractor
        content_layers, style_layers = settings.content_layers, settings.style_layers
        self.layers = tuple(dict.fromkeys(content_layers + style_layers))
        self.weights = {"content": settings.content_weight, "style": settings.style_weight,
                        "tv": settings.tv_weight}
        device = extractor.device
        self.mean = torch.tensor(extractor.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(extractor.std, device=device).view(1, 3, 1, 1)
        self.autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
        # Targets: computed once, outside autograd, in float32.
        with torch.no_grad():
            content_feats = self.features(content, content_layers)
            style_feats = self.features(style, style_layers)
            self.content_targets = {k: content_feats[k].float() for k in content_layers}
            self.style_grams = {k: gram_of_rows(as_rows(style_feats[k].float())) for k in style_layers}
        # Per-layer factors of the style term: 1, or 1 / mean(A²) with the extractor's gram_norm.
        self.style_scales = {
            k: 1.0 / max(float(g.square().mean()), 1e-30) if extractor.gram_norm else 1.0
            for k, g in self.style_grams.items()
        }

    def features(self, image: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        x = ((image - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.extractor.module.walk(x, layers)

    def evaluate(self, image: torch.Tensor, backward: bool) -> dict[str, float]:
        """Weighted loss terms at ``image``; with ``backward``, accumulates ∂total/∂image."""
        with torch.set_grad_enabled(backward):
            feats = self.features(image, self.layers)
        roots, grads = [], []
        terms = {"content": 0.0, "style": 0.0}
        with torch.no_grad():
            for layer in self.layers:
                h = feats[layer]
                grad = None
                if layer in self.content_targets:
                    value, grad = content_term(h, self.content_targets[layer], self.weights["content"])
                    terms["content"] += value
                if layer in self.style_grams:
                    scale = self.style_scales[layer]
                    value, g = style_term(h, self.style_grams[layer], self.weights["style"] * scale)
                    terms["style"] += value * scale
                    grad = g if grad is None else grad.add_(g)
                roots.append(h)
                grads.append(grad.to(h.dtype).contiguous(memory_format=torch.channels_last))
        with torch.set_grad_enabled(backward):
            tv = tv_loss(image) * self.weights["tv"] if self.weights["tv"] else None
        if backward:
            if tv is not None:
                roots.append(tv)
                grads.append(torch.ones_like(tv))
            torch.autograd.backward(roots, grads)
        losses = {
            "content": terms["content"] * self.weights["content"],
            "style": terms["style"] * self.weights["style"],
            "tv": float(tv.detach()) if tv is not None else 0.0,
        }
        losses["total"] = losses["content"] + losses["style"] + losses["tv"]
        return losses
