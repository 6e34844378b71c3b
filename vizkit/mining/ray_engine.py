"""Mining on Ray Data, for datasets and layers one machine cannot mine in time.

The pipeline is the local engine's, spread over a Ray cluster: a dataset of chunk numbers, a
``map`` that decodes each chunk in a Ray task (``load_image``'s checks, hashes, resizing), a
``map_batches`` whose model-holding actors (one per GPU, or CPU actors) forward each
chunk once and reduce it to its per-channel top-k, and the driver merging those top-ks as they
stream in (memory: channels × k). A chunk is the same forward batch as locally, and the top-k
order is total, so the index equals the local engine's. Checkpoints and resuming are the
driver's (``vizkit.mining.engine``).

Resources: actors and decode tasks never ask for every CPU. With all CPUs held by actors,
Ray Data's decode tasks cannot be scheduled and the pipeline waits forever (seen with Ray 2.60
on 2 cores and 2 actors of 1 CPU); here the actors together take at most half of the cluster's
CPUs, fractional where needed, and decode tasks half a CPU each.

Ray is optional (``pip install 'ray[data]==2.60.0'``, see requirements-test.txt). Without an
address it starts a local Ray on this machine and stops it afterwards; with ``address`` or
``$RAY_ADDRESS`` it joins that cluster, whose nodes must have vizkit importable and the
dataset at the same path (a shared file system).
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vizkit.mining.sources import DecodedChunk, decode_chunk
from vizkit.mining.topk import ChunkResult, chunk_result
from vizkit.models.base import LoadedModel

RAY_REQUIREMENT = "ray[data]==2.60.0"
DECODE_CPUS = 0.5
ACTOR_CPU_SHARE = 0.5  # of the cluster's CPUs, for all model actors together


@dataclass(frozen=True)
class ActorPlan:
    """How many model actors, and what each asks Ray for."""

    actors: int
    cpus: float
    gpus: float


def actor_plan(cluster_cpus: float, cluster_gpus: float, actors: int | None) -> ActorPlan:
    """Model actors and their resources: one per GPU where there are GPUs; otherwise ``actors``
    CPU actors (default one per 8 CPUs) that together hold at most half the CPUs, so decode
    tasks always have room. Ray takes fractions of one CPU, or whole CPUs."""
    if cluster_gpus >= 1:
        n = max(1, min(int(actors or cluster_gpus), int(cluster_gpus)))
        return ActorPlan(n, min(1.0, ACTOR_CPU_SHARE * cluster_cpus / n), 1.0)
    n = max(1, int(actors or cluster_cpus // 8))
    share = ACTOR_CPU_SHARE * cluster_cpus / n
    return ActorPlan(n, float(math.floor(share)) if share >= 1 else share, 0.0)


def _chunk_to_bytes(d: DecodedChunk) -> bytes:
    buffer = io.BytesIO()
    meta = {"chunk": d.chunk, "names": d.names, "hashes": d.hashes, "skipped": d.skipped}
    np.savez(buffer, indices=d.indices, images=d.images, meta=np.array(json.dumps(meta)))
    return buffer.getvalue()


def _chunk_from_bytes(data: bytes) -> DecodedChunk:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return DecodedChunk(meta["chunk"], z["indices"], z["images"], meta["names"], meta["hashes"],
                            [tuple(s) for s in meta["skipped"]])


_SOURCES: dict[str, object] = {}  # per worker process: the source, fetched once


def _decode_row(row: dict, source_ref: list, chunk_size: int, input_size: int) -> dict:
    """Ray task: one chunk decoded (the source comes from the object store once per process)."""
    import ray

    key = source_ref[0].hex()
    if key not in _SOURCES:
        _SOURCES.clear()
        _SOURCES[key] = ray.get(source_ref[0])
    chunk = int(row["chunk"])
    decoded = decode_chunk(_SOURCES[key], chunk, chunk_size, input_size)
    return {"chunk": chunk, "data": _chunk_to_bytes(decoded)}


class ChunkMiner:
    """Ray actor: holds the model on its device and turns decoded chunks into their top-ks."""

    def __init__(self, model_ref: list, layers: list[str], k: int, threads: int):
        import ray
        import torch

        from vizkit.models.registry import wrap_module

        torch.set_num_threads(max(1, threads))
        module, spec = ray.get(model_ref[0])
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.m = wrap_module(module, spec, device)
        self.layers, self.k = layers, k

    def __call__(self, batch: dict) -> dict:
        results = [chunk_result(self.m, _chunk_from_bytes(data), self.layers, self.k).to_bytes()
                   for data in batch["data"]]
        return {"chunk": np.asarray(batch["chunk"]), "result": np.array(results, dtype=object)}


def _init_ray(address: str | None) -> bool:
    """Joins ``address`` / ``$RAY_ADDRESS``, or starts a local Ray; True when it started one."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    # A local Ray's workers import what this process imports: vizkit from this checkout, and
    # whatever module defined the model (a user's script, a test's helpers).
    root = str(Path(__file__).resolve().parents[2])
    entries = [root, *(p for p in sys.path if p and os.path.isdir(p))]
    path = os.pathsep.join(dict.fromkeys(entries))
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    return True


def ray_results(m: LoadedModel, job, actors: int | None = None,
                address: str | None = None) -> Iterator[ChunkResult]:
    """The chunk results of ``job``'s remaining chunks, mined by a Ray Data pipeline."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError(f"engine='ray' needs Ray Data: pip install '{RAY_REQUIREMENT}'") from None
    todo = job.todo()
    if not todo:
        return
    started = _init_ray(address)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        resources = ray.cluster_resources()
        plan = actor_plan(resources.get("CPU", 1.0), resources.get("GPU", 0.0), actors)
        with m.lock:
            module = m.module if m.device.type == "cpu" else copy.deepcopy(m.module).cpu()
            model_ref = ray.put((module, m.spec))
        source_ref = ray.put(job.source)
        ds = ray.data.from_items([{"chunk": c} for c in todo],
                                 override_num_blocks=min(len(todo), max(2, 4 * plan.actors)))
        ds = ds.map(_decode_row, num_cpus=DECODE_CPUS,
                    fn_kwargs={"source_ref": [source_ref], "chunk_size": job.batch_size,
                               "input_size": m.input_size})
        ds = ds.map_batches(
            ChunkMiner, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.cpus, num_gpus=plan.gpus,
            fn_constructor_kwargs={"model_ref": [model_ref], "layers": job.layers, "k": job.k,
                                   "threads": max(1, int(plan.cpus))})
        for batch in ds.iter_batches(batch_size=1, batch_format="numpy"):
            for data in batch["result"]:
                yield ChunkResult.from_bytes(data)
    finally:
        if started:
            ray.shutdown()
