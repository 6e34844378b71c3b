"""Everything one video frame needs, from one forward pass (and one backward for Grad-CAM).

A live stream or a clip asks, per frame, for the top-k classes, one layer's channels, a class map
and, for a clip, every convolution's features. Calling ``predict``, ``activations`` and
``grad_cam`` one after another would run the network three times; ``analyze_frame`` runs it once
and gives the same numbers (tests/test_video_frames.py checks each against those functions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

from vizkit.core.hooks import capture_outputs, preserve_state
from vizkit.methods.class_maps import cam_head
from vizkit.models.base import LoadedModel

ClassMap = Literal["grad_cam", "cam"]
CLASS_MAPS: tuple[str, ...] = ("grad_cam", "cam")
INPUT = "input"  # the name of the preprocessed input among ``FrameResult.features``


@dataclass(frozen=True)
class FrameResult:
    """What one frame gave.

    Attributes:
        top: the ``top`` most probable classes as ``(class index, probability)``.
        layer: the layer whose channels are in ``maps`` (``None`` if none was asked for).
        maps: its C×h×w output (a vector output is C×1×1), as ``activations`` gives it.
        class_map: ``ReLU(Σ_k w_k A_k)`` at the CAM layer's resolution, for the top class.
        class_map_method: ``"grad_cam"``, ``"cam"`` or ``None``.
        class_map_target: the class it explains: the logits' argmax, as ``grad_cam(target=None)``
            picks it (``top[0]`` may differ only between classes of equal probability).
        features: layer name → its flattened output (``INPUT`` for the preprocessed image), for
            frame-to-frame similarity.
    """

    top: list[tuple[int, float]]
    layer: str | None = None
    maps: np.ndarray | None = None
    class_map: np.ndarray | None = None
    class_map_method: str | None = None
    class_map_target: int | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def top_class(self) -> int:
        return self.top[0][0]

    def channel_map(self, channel: int) -> np.ndarray:
        """Channel ``channel`` of ``maps`` (h×w); an index outside the layer names its size."""
        if self.maps is None:
            raise ValueError("No layer was asked for: pass layer= to analyze_frame.")
        if not 0 <= channel < self.maps.shape[0]:
            raise ValueError(f"Channel {channel} is outside layer {self.layer!r}'s "
                             f"{self.maps.shape[0]} channels.")
        return self.maps[channel]

    @property
    def channel_means(self) -> np.ndarray:
        """Per-channel spatial mean of ``maps`` (the ``mean`` of ``activations``)."""
        if self.maps is None:
            raise ValueError("No layer was asked for: pass layer= to analyze_frame.")
        return self.maps.reshape(self.maps.shape[0], -1).mean(1)


def analyze_frame(
    m: LoadedModel,
    img: np.ndarray,
    *,
    layer: str | None = None,
    class_map: ClassMap | None = None,
    top: int = 5,
    feature_layers: tuple[str, ...] | list[str] = (),
) -> FrameResult:
    """One frame through the network: top-k, ``layer``'s channels, a class map, features.

    Args:
        m: the model (for a live stream, ``m.private_copy()``: this function takes ``m.lock``).
        img: RGB uint8 H×W×3.
        layer: a layer whose channels to return (``maps``), or ``None``.
        class_map: ``"grad_cam"`` (Selvaraju et al. 2017: ``α_k = mean_ij ∂S/∂A_k^ij``, one
            backward pass) or ``"cam"`` (Zhou et al. 2016: the GAP + linear head's weights) of
            the top class at ``m.spec.cam_layer``, or ``None``.
        top: how many classes in ``top``.
        feature_layers: layers whose flattened outputs go into ``features`` (``INPUT`` is the
            preprocessed image).

    Raises:
        ValueError: an unknown layer or class map, or CAM on a model without a GAP + linear head.
    """
    if class_map is not None and class_map not in CLASS_MAPS:
        raise ValueError(f"Unknown class map {class_map!r}; use one of {', '.join(CLASS_MAPS)}.")
    cam_layer = m.spec.cam_layer if class_map else None
    hooked = [name for name in feature_layers if name != INPUT]
    detached = list(dict.fromkeys(n for n in (layer, *hooked) if n is not None))
    if class_map == "cam":
        detached = list(dict.fromkeys([*detached, cam_layer]))
    graph = [cam_layer] if class_map == "grad_cam" else []
    with m.lock, preserve_state(m.module), torch.enable_grad() if graph else torch.inference_mode():
        with capture_outputs(m.module, detached, detach=True) as acts, \
                capture_outputs(m.module, graph) as live:
            x = m.preprocess(img)
            logits = m.module(x)
        probs = torch.softmax(logits.detach().float(), dim=1)[0].cpu()
        values, indices = probs.topk(min(top, probs.numel()))
        ranked = [(int(i), float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
        target = int(logits[0].argmax())
        heat = None
        if class_map == "grad_cam":
            act = _spatial(cam_layer, live[cam_layer])
            (grad,) = torch.autograd.grad(logits[0, target], act)
            # grad_cam's weighting (vizkit/methods/class_maps.py), on this pass's activation
            alpha = grad.mean(dim=(2, 3), keepdim=True)
            heat = (alpha * act.detach()).sum(1)[0]
        elif class_map == "cam":
            act = _spatial(cam_layer, acts[cam_layer])
            head = cam_head(m, act, logits, cam_layer)
            heat = torch.einsum("k,khw->hw", head.weight[target].detach(), act[0])
    maps = None
    if layer is not None:
        out = acts[layer][0].float().cpu()
        if out.dim() == 1:
            out = out[:, None, None]
        elif out.dim() != 3:
            raise ValueError(f"Layer {layer!r} outputs shape {tuple(acts[layer].shape)}; "
                             "expected N×C×H×W or N×C.")
        maps = out.numpy()
    features = {name: (x if name == INPUT else acts[name]).detach()[0].flatten().float().cpu()
                for name in feature_layers}
    return FrameResult(
        top=ranked, layer=layer, maps=maps,
        class_map=None if heat is None else heat.clamp(min=0).float().cpu().numpy(),
        class_map_method=class_map, class_map_target=target if class_map else None, features=features,
    )


def _spatial(layer: str, act: torch.Tensor) -> torch.Tensor:
    if act.dim() != 4:
        raise ValueError(f"Layer {layer!r} outputs shape {tuple(act.shape)}; class maps need N×C×H×W.")
    return act


def upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A layer-resolution map at ``size`` (bilinear, align_corners=False, as the class maps do)."""
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """``a·b / (|a| |b|)`` of two flattened feature vectors; 1.0 when both are zero (nothing changed)."""
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return max(-1.0, min(1.0, float(torch.dot(a, b)) / (na * nb)))
