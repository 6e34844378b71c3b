"""Invariance to translation, scale and rotation (Zeiler & Fergus 2013, section 5, Fig. 5).

The image is transformed over a range of values; for each value, the Euclidean distance
``‖φ_l(T_v(x)) − φ_l(x)‖₂`` between the flattened feature vectors of the transformed and the
original image at a low and a high layer ``l``, and the softmax probability of the image's class.
Zeiler & Fergus found small transformations change the first layer a lot and the top layers
little, and the output invariant to translation and scale but not to rotation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import plotly.graph_objects as go
from torch import nn

from vizkit.analyses.features import layer_features
from vizkit.core.hooks import find_layer
from vizkit.models.base import LoadedModel

TRANSFORMS = ("translate_x", "translate_y", "scale", "rotate")
IDENTITY = {"translate_x": 0.0, "translate_y": 0.0, "scale": 1.0, "rotate": 0.0}
UNITS = {"translate_x": "pixels", "translate_y": "pixels", "scale": "factor", "rotate": "degrees"}


@dataclass(frozen=True)
class Invariance:
    """Invariance curves of one image under one transform.

    Attributes:
        transform: one of ``TRANSFORMS``.
        values: the transform's values, e.g. degrees (the identity among them gives distance 0).
        layers: the layers compared, low first.
        distances: layer → Euclidean distance to the original's feature vector, per value.
        relative: layer → the same divided by the original vector's norm (comparable across layers).
        probability: softmax probability of ``target`` per value.
        target: the class whose probability is shown.
        images: the transformed images as the model sees them, N×S×S×3 uint8.
    """

    transform: str
    values: np.ndarray
    layers: tuple[str, ...]
    distances: dict[str, np.ndarray]
    relative: dict[str, np.ndarray]
    probability: np.ndarray
    target: int
    images: np.ndarray


def default_range(transform: str, size: int, n: int = 13) -> np.ndarray:
    """Zeiler & Fergus's ranges: shifts up to a quarter of the image, scale 0.5–1.5, a full turn."""
    if transform in ("translate_x", "translate_y"):
        q = size // 4
        return np.linspace(-q, q, n).round()
    if transform == "scale":
        return np.linspace(0.5, 1.5, n)
    if transform == "rotate":
        return np.linspace(0.0, 360.0, n)
    raise ValueError(f"Unknown transform {transform!r}; use one of {', '.join(TRANSFORMS)}.")


def transform_image(img: np.ndarray, transform: str, value: float, fill: Sequence[float]) -> np.ndarray:
    """``img`` (S×S×3 uint8) shifted by ``value`` pixels, scaled by ``value`` or rotated by
    ``value`` degrees (counter-clockwise) about its centre; uncovered pixels get ``fill``.

    The identity returns an exact copy, and rotations by multiples of 90° are exact pixel
    permutations (no interpolation), so symmetric images stay exactly symmetric.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"Unknown transform {transform!r}; use one of {', '.join(TRANSFORMS)}.")
    value = float(value)
    if not math.isfinite(value) or (transform == "scale" and value <= 0):
        raise ValueError(f"Invalid {transform} value {value!r}.")
    if value == IDENTITY[transform]:
        return img.copy()
    h, w = img.shape[:2]
    if transform == "rotate" and value % 90 == 0:
        return np.ascontiguousarray(np.rot90(img, int(value // 90) % 4))
    centre = ((w - 1) / 2, (h - 1) / 2)
    if transform == "translate_x":
        mat = np.float64([[1, 0, value], [0, 1, 0]])
    elif transform == "translate_y":
        mat = np.float64([[1, 0, 0], [0, 1, value]])
    elif transform == "scale":
        mat = cv2.getRotationMatrix2D(centre, 0.0, value)
    else:
        mat = cv2.getRotationMatrix2D(centre, value, 1.0)
    border = tuple(float(c) for c in fill)
    return cv2.warpAffine(img, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=border)


def default_invariance_layers(m: LoadedModel) -> tuple[str, str]:
    """A low and a high layer: the first rectifier (else convolution) and the CAM layer."""
    relus = [n for n, mod in m.module.named_modules() if isinstance(mod, (nn.ReLU, nn.ReLU6))]
    low = (relus or m.conv_layers() or [m.spec.cam_layer])[0]
    return low, m.spec.cam_layer


def invariance(
    m: LoadedModel,
    img: np.ndarray,
    transform: str,
    values: Sequence[float] | None = None,
    layers: Sequence[str] | None = None,
    target: int | None = None,
) -> Invariance:
    """Feature distances and class probability over a transform's range (Zeiler & Fergus Fig. 5).

    Args:
        m: the model.
        img: RGB uint8 H×W×3; transformed at the model's resolution (``m.resize``).
        transform: ``"translate_x"``, ``"translate_y"`` (pixels), ``"scale"`` (factor) or
            ``"rotate"`` (degrees, counter-clockwise).
        values: the transform's values (default: ``default_range``).
        layers: layers to compare (default: a low and a high one, ``default_invariance_layers``).
        target: class whose probability is plotted (default: the top class of the original).

    Returns:
        Invariance: distance 0 at the identity value (an identical input gives identical
        features; it is not recomputed).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"Unknown transform {transform!r}; use one of {', '.join(TRANSFORMS)}.")
    if target is not None:
        target = m.check_target(target)
    layers = tuple(dict.fromkeys(layers or default_invariance_layers(m)))
    for name in layers:
        find_layer(m.module, name)
    vals = np.asarray(default_range(transform, m.input_size) if values is None else values, dtype=np.float64)
    if vals.ndim != 1 or len(vals) == 0:
        raise ValueError("values must be a non-empty list of numbers.")
    base = m.resize(img)
    fill = [255 * c for c in m.spec.mean]  # the dataset mean: zero after normalization
    images = np.stack([transform_image(base, transform, v, fill) for v in vals])
    # Identical inputs share one forward pass, so the identity's distance is exactly 0.
    unique, inverse = _unique_images(np.concatenate([base[None], images]))
    feats = layer_features(m, unique, layers, pool="none", logits=True)
    probs = _softmax(feats.logits)
    target = int(probs[inverse[0]].argmax()) if target is None else target
    distances, relative = {}, {}
    for name in layers:
        v = feats.values[name].astype(np.float64)
        ref = v[inverse[0]]
        d = np.linalg.norm(v[inverse[1:]] - ref, axis=1)
        distances[name] = d
        relative[name] = d / max(float(np.linalg.norm(ref)), 1e-12)
    return Invariance(transform=transform, values=vals, layers=layers, distances=distances,
                      relative=relative, probability=probs[inverse[1:], target], target=target,
                      images=images)


def _unique_images(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys: dict[bytes, int] = {}
    inverse = np.empty(len(images), dtype=np.int64)
    firsts = []
    for i, im in enumerate(images):
        key = im.tobytes()
        if key not in keys:
            keys[key] = len(firsts)
            firsts.append(i)
        inverse[i] = keys[key]
    return images[firsts], inverse


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def invariance_figure(result: Invariance, class_name: str | None = None, relative: bool = False) -> go.Figure:
    """Zeiler & Fergus Fig. 5 as plotly: one panel per layer's distance, then the probability."""
    from plotly.subplots import make_subplots  # here: a slow import, needed only for this figure

    unit = UNITS[result.transform]
    titles = [f"{name}: {'relative ' if relative else ''}distance" for name in result.layers]
    titles.append(f"p({class_name or result.target})")
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    x = [float(v) for v in result.values]
    curves = result.relative if relative else result.distances
    for i, name in enumerate(result.layers, start=1):
        fig.add_trace(go.Scatter(x=x, y=curves[name].tolist(), mode="lines+markers", name=name), row=1, col=i)
    fig.add_trace(go.Scatter(x=x, y=result.probability.tolist(), mode="lines+markers", name="probability"),
                  row=1, col=len(titles))
    fig.update_yaxes(range=[0, 1.02], row=1, col=len(titles))
    fig.update_xaxes(title_text=f"{result.transform} ({unit})")
    fig.update_layout(showlegend=False, height=340, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def invariance_rows(result: Invariance) -> list[dict[str, float]]:
    """The curves as table rows: value, each layer's distance and relative distance, probability."""
    rows = []
    for i, v in enumerate(result.values):
        row = {result.transform: float(v)}
        for name in result.layers:
            row[f"{name} distance"] = float(result.distances[name][i])
            row[f"{name} relative"] = float(result.relative[name][i])
        row["probability"] = float(result.probability[i])
        rows.append(row)
    return rows


# ---------------------------------------------------------------- command line
