"""All channels of one layer for one image, with per-channel statistics."""

from __future__ import annotations

import numpy as np
import torch

from vizkit.core.hooks import capture_outputs, find_layer, preserve_state
from vizkit.core.results import Activations
from vizkit.models.base import LoadedModel


def activations(m: LoadedModel, img: np.ndarray, layer: str) -> Activations:
    """The feature maps of ``layer`` for ``img`` (Zeiler & Fergus 2013, "browse every channel").

    A layer with a vector output (a ``Linear``) gives C×1×1 maps. A module called several times
    per forward (ResNet's shared ReLU) shows its last call.

    Returns:
        Activations: ``maps`` C×h×w, per-channel ``mean``, ``max``, fraction ``active`` (> 0),
        and ``top_channels`` sorted by mean activation, strongest first.
    """
    find_layer(m.module, layer)
    with m.lock, preserve_state(m.module), torch.no_grad():
        with capture_outputs(m.module, [layer], detach=True) as acts:
            m.module(m.preprocess(img))
    out = acts[layer][0].float().cpu()
    if out.dim() == 1:
        out = out[:, None, None]
    elif out.dim() != 3:
        shape = tuple(acts[layer].shape)
        raise ValueError(f"Layer {layer!r} outputs shape {shape}; expected N×C×H×W or N×C.")
    flat = out.flatten(1)
    mean = flat.mean(1)
    return Activations(
        layer=layer,
        maps=out.numpy(),
        mean=mean.numpy(),
        max=flat.amax(1).numpy(),
        active=(flat > 0).float().mean(1).numpy(),
        top_channels=torch.argsort(mean, descending=True, stable=True).numpy(),
    )
