"""Top-k class predictions."""

from __future__ import annotations

import numpy as np
import torch

from vizkit.models.base import LoadedModel


def predict(m: LoadedModel, img: np.ndarray, top: int = 5) -> list[tuple[str, float]]:
    """The ``top`` most probable classes of ``img`` as ``(class_name, probability)``."""
    with m.lock, torch.inference_mode():
        probs = torch.softmax(m.module(m.preprocess(img)), dim=1)[0].cpu()
    values, indices = probs.topk(min(top, probs.numel()))
    return [(m.classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
