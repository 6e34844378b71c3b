"""What a method explains: a class index, the top prediction, or a callable on the logits."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vizkit.models.base import LoadedModel

Target = int | Callable[[torch.Tensor], torch.Tensor] | None


def resolve_target(m: LoadedModel, logits: torch.Tensor, target: Target) -> int | Callable:
    """Turns ``target`` into a class index (``None`` → the top prediction of ``logits[0]``).

    A callable passes through unchanged. An index outside the model's classes raises
    ``ValueError`` here, before anything is indexed on the device.
    """
    if callable(target):
        return target
    if target is None:
        return int(logits[0].argmax())
    return m.check_target(target)


def check_target_early(m: LoadedModel, target: Target) -> None:
    """Validates a target before any forward pass (a bad index must not reach the device)."""
    if target is not None and not callable(target):
        m.check_target(target)


def target_score(logits: torch.Tensor, target: int | Callable) -> torch.Tensor:
    """Per-sample score to explain: ``logits[:, target]`` or ``target(logits)`` (shape B)."""
    if callable(target):
        score = target(logits)
        return score.reshape(logits.shape[0], -1).sum(1)
    return logits[:, target]
