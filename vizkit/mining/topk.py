"""One chunk's forward pass and the running top-k of every channel (both engines use this).

An image's response for a channel is the channel's maximum over positions, at the first
row-major position reaching it (``torch.max`` over a dimension returns the first), taken at the
layer's first call in the forward: ``top_patches``'s ranking. The top-k keeps images by
(response descending, dataset index ascending): a total order, so merging partial top-ks in any
grouping or order gives the same result, which is what makes resuming and Ray's per-block
merging exact.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vizkit.analyses.features import batch_tensor
from vizkit.core.hooks import capture_outputs, preserve_state
from vizkit.mining.sources import DecodedChunk
from vizkit.models.base import LoadedModel

EMPTY = np.iinfo(np.int64).max  # index of an unfilled slot: sorts after every real image


@dataclass
class LayerTopK:
    """The k best images of each of C channels: C×k scores, dataset indices, flat unit positions."""

    scores: np.ndarray
    index: np.ndarray
    unit: np.ndarray

    @classmethod
    def empty(cls, channels: int, k: int) -> LayerTopK:
        return cls(np.full((channels, k), -np.inf, np.float32), np.full((channels, k), EMPTY, np.int64),
                   np.zeros((channels, k), np.int64))

    @property
    def k(self) -> int:
        return self.scores.shape[1]

    def merged(self, scores: np.ndarray, index: np.ndarray, unit: np.ndarray) -> LayerTopK:
        """A new top-k of these and C×m more candidates (scores, dataset indices, units)."""
        s = np.concatenate([self.scores, scores.astype(np.float32, copy=False)], 1)
        i = np.concatenate([self.index, index], 1)
        u = np.concatenate([self.unit, unit], 1)
        order = np.lexsort((i, -s), axis=-1)[:, :self.k]
        return LayerTopK(np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1),
                         np.take_along_axis(u, order, 1))

    def merged_with(self, other: LayerTopK) -> LayerTopK:
        return self.merged(other.scores, other.index, other.unit)


@dataclass
class ChunkResult:
    """What one chunk contributes: per layer its top-k, the winners' names and hashes, the skipped.

    Attributes:
        chunk: chunk number.
        layers: layer name → ``LayerTopK`` of this chunk's images.
        images: dataset index → (name, content hash), for the indices the top-ks hold.
        readable: images of the chunk that were decoded.
        skipped: (index, name, reason) of the items that were not.
    """

    chunk: int
    layers: dict[str, LayerTopK]
    images: dict[int, tuple[str, str]]
    readable: int
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """A pickle-free encoding (npz) for shipping between Ray processes."""
        arrays = {}
        for j, t in enumerate(self.layers.values()):
            arrays[f"s{j}"], arrays[f"i{j}"], arrays[f"u{j}"] = t.scores, t.index, t.unit
        meta = {"chunk": self.chunk, "layers": list(self.layers), "readable": self.readable,
                "images": [[i, *v] for i, v in self.images.items()], "skipped": self.skipped}
        arrays["meta"] = np.array(json.dumps(meta))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ChunkResult:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            layers = {name: LayerTopK(z[f"s{j}"], z[f"i{j}"], z[f"u{j}"])
                      for j, name in enumerate(meta["layers"])}
        return cls(chunk=meta["chunk"], layers=layers, readable=meta["readable"],
                   images={int(i): (name, digest) for i, name, digest in meta["images"]},
                   skipped=[tuple(s) for s in meta["skipped"]])


def _channel_peaks(t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    values, units = t.float().flatten(2).max(2)
    return values.cpu().numpy(), units.cpu().numpy()


def _forward(m: LoadedModel, images: np.ndarray, layers: Sequence[str], reduce) -> dict:
    """One forward on the model's device that stops after the last layer, each layer reduced
    in its hook (so no activation map outlives its layer)."""
    x = batch_tensor(m, images)
    with m.lock, preserve_state(m.module), torch.no_grad():
        with capture_outputs(m.module, layers, stop=True, first=True, reduce=reduce) as got:
            m.module(x)
    missing = [name for name in layers if name not in got]
    if missing:
        raise ValueError(f"Layer(s) {', '.join(map(repr, missing))} did not run in the model's forward pass.")
    return dict(got)


def layer_shapes(m: LoadedModel, layers: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Each layer's (C, h, w), from a forward of one blank image; non-spatial layers are refused."""
    blank = np.zeros((1, m.input_size, m.input_size, 3), np.uint8)
    shapes = _forward(m, blank, layers, lambda t: tuple(t.shape[1:]))
    for name, shape in shapes.items():
        if len(shape) != 3:
            raise ValueError(f"Layer {name!r} outputs shape {shape}; mining needs C×h×w maps "
                             "(a convolution, rectifier or pooling layer).")
    return shapes


def channel_peaks(m: LoadedModel, images: np.ndarray, layers: Sequence[str]) -> dict[str, tuple]:
    """Each layer's per-channel maxima over positions for a batch: (N×C values, N×C flat positions)."""
    return _forward(m, images, layers, _channel_peaks)


def chunk_result(m: LoadedModel, decoded: DecodedChunk, layers: Sequence[str], k: int) -> ChunkResult:
    """The top-k of one decoded chunk, for every channel of every layer."""
    result = ChunkResult(decoded.chunk, {}, {}, len(decoded.indices), list(decoded.skipped))
    if len(decoded.indices) == 0:
        return result
    peaks = channel_peaks(m, decoded.images, layers)
    for name in layers:
        values, units = peaks[name]
        c = values.shape[1]
        index = np.broadcast_to(decoded.indices, (c, len(decoded.indices)))
        result.layers[name] = LayerTopK.empty(c, k).merged(values.T, index, units.T)
    held = np.unique(np.concatenate([t.index.ravel() for t in result.layers.values()]))
    where = {int(i): j for j, i in enumerate(decoded.indices)}
    result.images = {int(i): (decoded.names[where[int(i)]], decoded.hashes[where[int(i)]])
                     for i in held if i != EMPTY}
    return result
