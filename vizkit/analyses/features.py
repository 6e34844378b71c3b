"""Feature vectors of many images at several layers, in batches.

Shared by the Zeiler & Fergus analyses (invariance, correspondence, linear probes, feature
evolution): one forward pass per batch captures every requested layer, reduced on the fly so a
thousand images at a wide first layer stay small.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from vizkit.core.hooks import capture_outputs, find_layer, preserve_state
from vizkit.models.base import LoadedModel

Progress = Callable[[int, int], object]
Reduce = Callable[[torch.Tensor], torch.Tensor]
POOLS = ("none", "avg", "max")


@dataclass(frozen=True)
class Features:
    """Per-layer features of a batch of images.

    Attributes:
        values: layer name → N×D float32 (flattened, or pooled / reduced per image).
        logits: N×K float32 model outputs, ``None`` when not asked for.
        shapes: layer name → the per-image output shape before reduction (C, h, w) or (F,).
    """

    values: dict[str, np.ndarray]
    logits: np.ndarray | None
    shapes: dict[str, tuple[int, ...]]


def default_layers(m: LoadedModel, n: int = 6) -> list[str]:
    """Up to ``n`` layers spread over the depth, the last always included.

    Rectifiers (``nn.ReLU``/``ReLU6`` modules: the features a layer passes on, as in Zeiler &
    Fergus's layer numbering) where the model has them, otherwise its convolutions.
    """
    relus = [name for name, mod in m.module.named_modules() if isinstance(mod, (nn.ReLU, nn.ReLU6))]
    names = relus or m.conv_layers()
    if not names:
        raise ValueError("The model has neither ReLU modules nor convolutions; pass layers explicitly.")
    if len(names) <= n:
        return names
    if n <= 1:
        return names[-1:]
    picks = np.unique(np.round(np.linspace(0, len(names) - 1, n)).astype(int))
    return [names[i] for i in picks]


def batch_tensor(m: LoadedModel, images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """Images (uint8 H×W×3 each, any size) → normalized N×3×S×S on the model's device.

    Same result as stacking ``m.preprocess`` of each image; images already at the model's size
    skip the resize.
    """
    s = m.input_size
    arr = images if isinstance(images, np.ndarray) and images.ndim == 4 else None
    if arr is None or arr.shape[1:3] != (s, s):
        arr = np.stack([img if img.shape[:2] == (s, s) else m.resize(img) for img in images])
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255)
    x = TF.normalize(x, list(m.spec.mean), list(m.spec.std))
    return x.to(m.device)


def _reducer(pool: str | Reduce) -> Reduce:
    if callable(pool):
        return pool
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS} or a callable, got {pool!r}.")

    def reduce(t: torch.Tensor) -> torch.Tensor:
        if t.dim() <= 2 or pool == "none":
            return t.flatten(1)
        return t.flatten(2).mean(2) if pool == "avg" else t.flatten(2).amax(2)

    return reduce


def layer_features(
    m: LoadedModel,
    images: Sequence[np.ndarray] | np.ndarray,
    layers: Sequence[str],
    pool: str | Reduce = "none",
    logits: bool = False,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> Features:
    """The outputs of ``layers`` for every image, batch by batch.

    Args:
        m: the model (its lock is held per batch; no hook outlives the call).
        images: uint8 H×W×3 images, or an N×H×W×3 array.
        layers: dotted ``named_modules()`` names.
        pool: ``"none"`` flattens each output (Zeiler & Fergus's feature vectors), ``"avg"``
            global-average-pools each channel, ``"max"`` takes each channel's maximum, or a
            callable mapping the N×C×h×w output to an N×D tensor.
        logits: also return the model's outputs.
        batch_size: images per forward pass.
        progress: called as ``progress(done, total)`` after each batch.

    Without ``logits`` the forward stops once every layer has run, so a module called several
    times per forward (ResNet's shared ReLU) gives its first call there, its last with ``logits``.
    """
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ValueError("No layers given.")
    for name in layers:
        find_layer(m.module, name)
    reduce = _reducer(pool)
    n = len(images)
    if n == 0:
        raise ValueError("No images given.")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    outs: list[np.ndarray] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for start in range(0, n, batch_size):
        x = batch_tensor(m, images[start:start + batch_size])
        # Without logits the forward can stop once the last requested layer has run.
        with m.lock, preserve_state(m.module), torch.no_grad():
            with capture_outputs(m.module, layers, detach=True, stop=not logits) as acts:
                y = m.module(x)
        for name in layers:
            t = acts[name].float()
            shapes[name] = tuple(t.shape[1:])
            parts[name].append(reduce(t).cpu().numpy().astype(np.float32, copy=False))
        if logits:
            outs.append(y.float().cpu().numpy())
        if progress is not None:
            progress(min(n, start + batch_size), n)
    values = {name: c[0] if len(c) == 1 else np.concatenate(c) for name, c in parts.items()}
    return Features(values=values, logits=np.concatenate(outs) if logits else None, shapes=shapes)


def table_text(rows: list[dict], fmt: str = "csv") -> str:
    """Rows as CSV (``fmt="csv"``) or a Markdown table (``fmt="md"``)."""
    cols = list(rows[0]) if rows else []
    if fmt == "md":
        def cell(v: object) -> str:
            return f"{v:.4g}" if isinstance(v, float) else str(v)

        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    if fmt != "csv":
        raise ValueError(f"fmt must be 'csv' or 'md', got {fmt!r}.")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(rows: list[dict], figure, out: str | Path, stem: str) -> Path:
    """Writes ``stem``.csv, ``stem``.md and ``stem``.html (the plotly figure, usable offline)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, out / f"{stem}.csv")
    write_table(rows, out / f"{stem}.md")
    figure.write_html(out / f"{stem}.html", include_plotlyjs=True)
    return out


def write_table(rows: list[dict], path: str | Path) -> None:
    """Writes rows as a Markdown table to a ``.md`` path, as CSV otherwise."""
    path = Path(path)
    path.write_text(table_text(rows, "md" if path.suffix == ".md" else "csv"))
