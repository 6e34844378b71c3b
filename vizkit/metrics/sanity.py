"""The model-parameter randomization test of Adebayo et al. (2018), "Sanity Checks for
Saliency Maps": re-initialize layers cascading from the top and measure how much of the map
survives (Spearman rank correlation with the trained model's map).

A method whose map barely changes when the weights are random explains the image more than the
model (deconvnet and guided backprop partly do, whatever the weights; Nie et al. 2018).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vizkit.core.results import Explanation
from vizkit.core.targets import Target, check_target_early
from vizkit.methods.registry import get_method, list_methods
from vizkit.models.base import LoadedModel

Method = Callable[[LoadedModel, np.ndarray, Target], Explanation]

_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class SanityResult:
    """Cascading randomization of one method.

    Attributes:
        method: the method's name.
        target: the class index explained in every step.
        steps: step i re-initialized the layers of steps[0..i] (top of the network first); each
            entry is the weight layer's name with the norm layers that follow it.
        correlations: Spearman rank correlation between the trained map and the map after each
            step (0.0 where a map is constant: it shares no ranking).
        final: the correlation with every layer re-initialized (``correlations[-1]``).
    """

    method: str
    target: int | None
    steps: tuple[tuple[str, ...], ...]
    correlations: tuple[float, ...]
    final: float


def sanity_methods() -> list[str]:
    """The registered methods the check takes by name: one-pass maps of a class target."""
    return [spec.name for spec in list_methods(target="class", result=Explanation, long_running=False)]


def _method(name: str) -> Method:
    names = sanity_methods()
    if name not in names:
        raise ValueError(f"Unknown method {name!r}. Available: {', '.join(names)}.")
    spec = get_method(name)
    return lambda m, img, target: spec.run(m, img, target=target)


def randomization_steps(module: nn.Module) -> list[list[str]]:
    """Parametrized layers grouped per weight layer (a norm joins the layer before), top first."""
    groups: list[list[str]] = []
    for name, sub in module.named_modules():
        if not any(True for _ in sub.parameters(recurse=False)):
            continue
        if isinstance(sub, _NORMS) and groups:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups[::-1]


def _reinitialize(sub: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default init, drawn from ``gen``: U(±1/√fan_in); norm layers back to identity."""
    if isinstance(sub, _NORMS):
        sub.reset_parameters()
        return
    params = list(sub.parameters(recurse=False))
    fan_in = next((p[0].numel() for p in params if p.dim() > 1), 1)
    bound = 1.0 / math.sqrt(fan_in)
    for p in params:
        fresh = torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1
        p.copy_((fresh * bound).to(p.dtype))


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    # Imported here: scipy.stats takes longer to import than the rest of vizkit's own modules,
    # and only this check needs it (``import vizkit`` stays fast).
    from scipy.stats import spearmanr

    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def sanity_check(
    m: LoadedModel,
    img: np.ndarray,
    method: str | Method = "grad_cam",
    target: Target = None,
    *,
    seed: int = 0,
) -> SanityResult:
    """Cascading model-parameter randomization (Adebayo et al. 2018, section 3.1).

    Works on a deep copy: the caller's model is never changed. The class explained is fixed to
    the trained model's (``target=None`` → its top prediction) in every step.

    Args:
        m: the model.
        img: RGB uint8 H×W×3.
        method: a name from ``sanity_methods()`` (registered one-pass methods of a class
            target) or a function ``f(m, img, target) -> Explanation``.
        target: class index, ``None`` for the top prediction, or a callable on the logits.
        seed: seed of the re-initialization (its own generator; global RNG untouched).
    """
    if isinstance(method, str):
        name, fn = method, _method(method)
    else:
        name, fn = getattr(method, "__name__", "custom"), method
    check_target_early(m, target)
    with m.lock, torch.no_grad():
        module = copy.deepcopy(m.module)
    work = LoadedModel(module=module, spec=m.spec, device=m.device)
    reference = fn(work, img, target)
    fixed = reference.target if reference.target is not None else target
    modules = dict(module.named_modules())
    gen = torch.Generator().manual_seed(seed)
    steps = randomization_steps(module)
    correlations = []
    for group in steps:
        with torch.no_grad():
            for layer in group:
                _reinitialize(modules[layer], gen)
        correlations.append(_rank_correlation(reference.map, fn(work, img, fixed).map))
    return SanityResult(
        method=name,
        target=reference.target,
        steps=tuple(tuple(g) for g in steps),
        correlations=tuple(correlations),
        final=correlations[-1] if correlations else 1.0,
    )
