"""Deletion and insertion curves: how faithful an attribution map is to the model.

Petsiuk et al. 2018 (RISE), section 4.1: pixels are removed from the image (deletion) or added
to a blurred copy (insertion) in the order of the map, most important first; the target class
probability is recorded after each step. A faithful map makes the deletion curve fall fast
(low area) and the insertion curve rise fast (high area). Areas use the trapezoid rule over the
fraction of pixels changed, in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from vizkit.core.targets import Target, check_target_early, resolve_target, target_score
from vizkit.models.base import LoadedModel


@dataclass(frozen=True)
class FaithfulnessCurves:
    """Deletion and insertion curves of one map.

    Attributes:
        target: the class index explained (or None for a callable target).
        fractions: fraction of pixels changed at each step, 0 … 1 (steps + 1 values).
        deletion: target probability as pixels are set to black, most important first.
        insertion: target probability as pixels are copied onto a blurred canvas.
        deletion_auc: trapezoid area under ``deletion`` (lower is more faithful).
        insertion_auc: trapezoid area under ``insertion`` (higher is more faithful).
    """

    target: int | None
    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: float
    insertion_auc: float


def blurred(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """RISE's insertion canvas: a Gaussian blur, σ = 5 px at 224 px, scaled to the input size."""
    sigma = max(1.0, 5.0 * size / 224)
    kernel = int(2 * round(2 * sigma) + 1)
    return TF.gaussian_blur(pixels, [kernel, kernel], [sigma, sigma])


def perturbation_order(attribution: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most important first (stable for ties, so the order is reproducible)."""
    flat = np.asarray(attribution, dtype=np.float64).ravel()
    flat = np.where(np.isfinite(flat), flat, -np.inf)
    return np.argsort(-flat, kind="stable")


def deletion_insertion(
    m: LoadedModel,
    img: np.ndarray,
    attribution: np.ndarray,
    target: Target = None,
    steps: int = 32,
    batch_size: int = 16,
) -> FaithfulnessCurves:
    """Deletion and insertion curves of ``attribution`` for ``img`` (Petsiuk et al. 2018).

    Args:
        m: the model.
        img: RGB uint8 H×W×3 (resized to the model's input like every method).
        attribution: S×S map at the model's input resolution (an ``Explanation.map``).
        target: class index, ``None`` for the top prediction, or a callable on the logits
            (then the curves record that score instead of a probability).
        steps: number of perturbation steps; step k changes ``round(k N / steps)`` pixels.
        batch_size: perturbed images per forward pass.

    Returns:
        FaithfulnessCurves with both curves and their areas.
    """
    size = m.input_size
    attribution = np.asarray(attribution)
    if attribution.shape != (size, size):
        raise ValueError(f"The map must be {size}×{size} (the model's input), got {attribution.shape}.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    check_target_early(m, target)
    n = size * size
    counts = np.round(np.arange(steps + 1) * n / steps).astype(np.int64)
    order = torch.from_numpy(perturbation_order(attribution))
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n)
    rank = rank.view(1, 1, size, size)

    pixels = torch.from_numpy(m.resize(img)).permute(2, 0, 1).float().div(255).unsqueeze(0)
    black = torch.zeros_like(pixels)
    canvas = blurred(pixels, size)
    mean = torch.tensor(m.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.spec.std).view(1, 3, 1, 1)

    with m.lock, torch.inference_mode():
        resolved = resolve_target(m, m.module(((pixels - mean) / std).to(m.device)), target)
        curves = []
        for start_from, fill_with in ((pixels, black), (canvas, pixels)):
            scores = []
            for lo in range(0, steps + 1, batch_size):
                k = torch.from_numpy(counts[lo:lo + batch_size]).view(-1, 1, 1, 1)
                changed = rank < k  # B×1×S×S: the k most important pixels
                batch = torch.where(changed, fill_with, start_from)
                logits = m.module(((batch - mean) / std).to(m.device)).float()
                if callable(resolved):
                    score = target_score(logits, resolved)
                else:
                    score = torch.softmax(logits, dim=1)[:, resolved]
                scores.append(score.cpu())
            curves.append(torch.cat(scores).numpy().astype(np.float64))
    fractions = counts / n
    deletion, insertion = curves
    return FaithfulnessCurves(
        target=None if callable(resolved) else int(resolved),
        fractions=fractions,
        deletion=deletion,
        insertion=insertion,
        deletion_auc=float(np.trapezoid(deletion, fractions)),
        insertion_auc=float(np.trapezoid(insertion, fractions)),
    )
