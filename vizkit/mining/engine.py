"""``mine``: every channel's top-k over a dataset in one pass, resumable (Zeiler & Fergus Fig. 2).

The dataset is split into chunks of ``batch_size`` consecutive items; a chunk is decoded in a
worker (a torch ``DataLoader`` locally, a Ray task with ``engine="ray"``), forwarded once on the
model's device, and reduced to its per-channel top-k, which is merged into the running top-k.
Memory holds layers × channels × k entries, whatever the dataset's size. Checkpoints (the
running top-ks and which chunks are done) are written atomically every ``checkpoint_every``
seconds, when the job is stopped, and when it fails; a rerun with the same arguments resumes
from there and ends with the same index as an uninterrupted run (the top-k order is total and
the chunks are the same forward batches).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vizkit.core.hooks import find_layer
from vizkit.mining import index as ix
from vizkit.mining.sources import ChunkDataset, Source, chunk_count, keep_as_is, make_source
from vizkit.mining.topk import EMPTY, ChunkResult, LayerTopK, chunk_result, layer_shapes
from vizkit.models.base import LoadedModel
from vizkit.models.weights import weights_hash

Progress = Callable[[int, int], bool | None]
ENGINES = ("local", "ray")
# Decode workers by default: the cores beside the one that runs the model, at most 8 (decoding
# and resizing a 64×64 scene takes about 0.1 ms, an ImageNet JPEG about 5 ms).
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    return max(0, min(MAX_DEFAULT_WORKERS, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class JobState:
    """What a job has mined so far; replaced whole after each chunk, so an interrupt (Ctrl-C
    arrives between two bytecodes) never leaves a chunk half-merged in a checkpoint."""

    tops: dict[str, LayerTopK]
    done: np.ndarray  # per chunk
    images: dict[int, tuple[str, str]]  # the winners' names and hashes: O(channels × k)
    skipped: tuple[tuple[int, str, str], ...]
    readable: int
    items: int  # items of the done chunks, readable or not


class MiningJob:
    """One mining job: what it mines (source, layers, k, chunking), and its ``JobState``."""

    def __init__(self, source: Source, layers: list[str], shapes: dict, k: int, batch_size: int, meta: dict):
        self.source, self.layers, self.shapes, self.k = source, layers, shapes, k
        self.batch_size = batch_size
        self.meta = meta  # what must match for a checkpoint to be resumed
        self.state = JobState({name: LayerTopK.empty(shapes[name][0], k) for name in layers},
                              np.zeros(chunk_count(len(source), batch_size), bool), {}, (), 0, 0)

    def add(self, result: ChunkResult) -> None:
        """Merges one chunk's result into a new state."""
        old = self.state
        if old.done[result.chunk]:
            return
        tops = {name: old.tops[name].merged_with(result.layers[name]) if name in result.layers
                else old.tops[name] for name in self.layers}
        images = {**old.images, **result.images}
        held = {int(i) for t in tops.values() for i in np.unique(t.index) if i != EMPTY}
        done = old.done.copy()
        done[result.chunk] = True
        skipped = tuple(sorted(old.skipped + tuple(tuple(s) for s in result.skipped)))
        self.state = JobState(tops, done, {i: images[i] for i in held}, skipped,
                              old.readable + result.readable,
                              old.items + result.readable + len(result.skipped))

    def todo(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(~self.state.done)]

    def save(self, path: Path) -> None:
        state = self.state
        ix.save_checkpoint(path, state.tops, state.done, {
            **self.meta, "images": [[i, *v] for i, v in sorted(state.images.items())],
            "skipped": state.skipped, "readable": state.readable})

    def restore(self, path: Path) -> None:
        tops, done, saved = ix.load_checkpoint(path)
        mismatch = [key for key in self.meta if saved.get(key) != self.meta[key]]
        if mismatch or list(tops) != self.layers or len(done) != len(self.state.done):
            raise ValueError(
                f"The checkpoint {path} belongs to another job (it differs in: "
                f"{', '.join(mismatch) or 'layers'}). Rerun with the same arguments, or start "
                "over with resume=False (--restart), which deletes it.")
        n, b = len(self.source), self.batch_size
        sizes = np.minimum(b, n - np.arange(len(done)) * b)
        self.state = JobState(tops, done, {int(i): (name, digest) for i, name, digest in saved["images"]},
                              tuple(tuple(s) for s in saved["skipped"]), int(saved["readable"]),
                              int(sizes[done].sum()))

    def index(self, complete: bool, description: str | None, settings: dict) -> ix.MiningIndex:
        state = self.state
        table = ix.build_table(self.meta["model"], self.meta["weights_hash"], state.tops, self.shapes,
                               state.images)
        meta = {
            "format": ix.FORMAT, "model": self.meta["model"], "weights_hash": self.meta["weights_hash"],
            "layers": {name: list(self.shapes[name]) for name in self.layers}, "k": self.k,
            "score": ix.SCORE_DEFINITION, "complete": complete,
            "dataset": {**self.source.describe(), "readable": state.readable,
                        "skipped": len(state.skipped), "description": description or ""},
            "skipped": [{"image_index": i, "image": name, "reason": reason}
                        for i, name, reason in state.skipped],
            "settings": settings,
        }
        return ix.MiningIndex(table, meta)


def _local_results(m: LoadedModel, job: MiningJob, workers: int) -> Iterable[ChunkResult]:
    """Chunks decoded by ``workers`` DataLoader processes (0: in this process), forwarded here."""
    data = ChunkDataset(job.source, job.todo(), job.batch_size, m.input_size)
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, shuffle=False, num_workers=workers, collate_fn=keep_as_is,
        pin_memory=m.device.type == "cuda", prefetch_factor=2 if workers else None)
    for decoded in loader:
        yield chunk_result(m, decoded, job.layers, job.k)


def mine(
    m: LoadedModel,
    layers: str | Sequence[str],
    dataset,
    k: int = 9,
    out: str | Path | None = None,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    engine: str = "local",
    resume: bool = True,
    checkpoint_every: float = 60.0,
    progress: Progress | None = None,
    description: str | None = None,
    ray_address: str | None = None,
    actors: int | None = None,
) -> ix.MiningIndex:
    """Every channel's ``k`` strongest images over ``dataset``, each image forwarded once.

    "Strongest" is ``top_patches``'s ranking: an image's response is the channel's maximum over
    positions (at the first position reaching it), one entry per image, ranked by response,
    ties by dataset order; the index equals ``top_patches`` channel by channel.

    Args:
        m: the model (its lock is held per batch; no hook outlives the call).
        layers: dotted layer names (a list, or one string with commas).
        dataset: a folder of images (recursively; unreadable files are skipped and listed),
            a ``Scenes`` or a list / N×H×W×3 array of uint8 RGB images.
        k: images kept per channel.
        out: the index file (Parquet) to write atomically; its checkpoint is ``out`` +
            ``.checkpoint.npz``. Without ``out`` nothing is written and nothing resumes.
        batch_size: items per chunk = per forward batch (part of what a resume must match).
        workers: decode processes of the local engine (default: the other cores, at most 8).
        engine: ``"local"`` or ``"ray"`` (a Ray Data pipeline, see ``vizkit.mining.ray_engine``).
        resume: continue from ``out``'s checkpoint if there is one; ``False`` deletes it.
        checkpoint_every: seconds between checkpoints (0: after every chunk).
        progress: ``progress(items_done, items_total)`` after each chunk; returning False stops
            the job (a checkpoint is written; the returned index has ``complete`` False).
        description: a note on the dataset kept in the index.
        ray_address: a Ray cluster (``ray.init(address=...)``; default ``$RAY_ADDRESS`` or a
            local one).
        actors: Ray model actors (default: one per GPU; without GPUs, one per 8 CPUs).

    Raises:
        ValueError: unknown layer (lists valid ones), a layer without C×h×w maps, an empty
            folder, nothing readable, a checkpoint of another job.
    """
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}; use one of {', '.join(ENGINES)}.")
    names = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers)
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise ValueError("No layers given.")
    for name in names:
        find_layer(m.module, name)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    out = Path(out) if out is not None else None
    ckpt = ix.checkpoint_path(out) if out is not None else None
    source = make_source(dataset, exclude=[p for p in (out, ckpt) if p is not None])
    shapes = layer_shapes(m, names)
    with m.lock:
        digest = weights_hash(m.module)
    key = {"model": m.spec.name, "weights_hash": digest, "layers": names, "k": k,
           "batch_size": batch_size, "input_size": m.input_size, "dataset": source.fingerprint(),
           "items": len(source)}
    job = MiningJob(source, names, shapes, k, batch_size, key)
    if ckpt is not None and ckpt.is_file():
        if resume:
            job.restore(ckpt)
        else:
            ckpt.unlink()
    workers = default_workers() if workers is None else int(workers)
    total = len(source)
    last = time.monotonic()
    results = None
    try:
        if engine == "ray":
            from vizkit.mining.ray_engine import ray_results

            results = ray_results(m, job, actors=actors, address=ray_address)
        else:
            results = _local_results(m, job, workers)
        for result in results:
            job.add(result)
            if progress is not None and progress(job.state.items, total) is False:
                break
            if ckpt is not None and time.monotonic() - last >= checkpoint_every and job.todo():
                job.save(ckpt)
                last = time.monotonic()
    finally:
        if ckpt is not None and job.todo():
            job.save(ckpt)  # stopped, interrupted or failed: resume from here
        if hasattr(results, "close"):
            results.close()  # a generator: stops the DataLoader workers or the Ray pipeline
    complete = not job.todo()  # a stop after the last chunk still completes
    if job.state.readable == 0 and complete:
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        reasons = "; ".join(f"{name or i}: {reason}" for i, name, reason in job.state.skipped[:3])
        raise ValueError(f"None of the {total} items could be read as an image ({reasons}).")
    settings = {"batch_size": batch_size, "input_size": m.input_size, "k": k}
    index = job.index(complete=complete, description=description, settings=settings)
    if not complete or out is None:
        return index
    ix.write_index(index, out)
    ckpt.unlink(missing_ok=True)
    index.path = out
    return index
