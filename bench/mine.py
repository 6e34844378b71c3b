"""One ``mine`` pass over every channel of a layer against one ``top_patches`` call per channel.

    nice -n 10 .venv/bin/python bench/mine.py [--model fashion-zf] [--layer features.relu3]
        [--images 512] [--size 256] [--sample 3]

A folder of generated JPEGs (``--size`` px, structured noise, seeded) is mined once for all C
channels of the layer (``vizkit.mine``, 1 decode worker), and, side by side in the same run,
ranked one channel at a time for ``--sample`` channels: ``top_patches`` on the folder (what
``python -m vizkit top-patches`` and the app did per channel: decode, rank, crop, 9 deconvnet
projections) and its ranking alone (already decoded images, one forward pass per channel, no
projections: the most favourable peer). Their per-channel cost is constant per channel, so the
sample stands for all C. Printed: images/s, seconds per channel, and the speed-up per channel
(goal: at least 0.8 × C), also with the decoding left out of both (in-memory images). Then the
same ``mine`` pass with 1 and 2 decode workers (scaling).
Wall time; on a shared CPU compare the ratios of one run, not absolute figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vizkit.analyses.features import layer_features  # noqa: E402
from vizkit.data.scenes import image_folder  # noqa: E402
from vizkit.methods.patches import top_patches  # noqa: E402
from vizkit.mining.engine import mine  # noqa: E402
from vizkit.models.registry import load_model, weights_available  # noqa: E402


def write_images(folder: Path, n: int, size: int) -> None:
    """n seeded JPEGs: smooth colour blobs plus noise (decoding costs what a photo's does)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        low = rng.random((8, 8, 3))
        img = np.kron(low, np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size]
        img = 0.8 * img + 0.2 * rng.random((size, size, 3))
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img{i:05d}.jpg", quality=90)


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-zf")
    parser.add_argument("--layer", default="features.relu3")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--sample", type=int, default=3, help="channels ranked one call at a time")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="mine passes per worker count")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    weights = "default" if weights_available(args.model) else None
    m = load_model(args.model, device="cpu", weights=weights)
    print(f"{args.model} ({'trained' if weights else 'random'} weights) {args.layer}, {args.images} "
          f"JPEGs of {args.size}², batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}")
    n, b, layer = args.images, args.batch_size, args.layer
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_images(folder, n, args.size)
        images = image_folder(folder, limit=n)
        # warm-up: worker start-up, first-forward allocations
        mine(m, [layer], images[:b], batch_size=b, workers=1)
        layer_features(m, images[:b], [layer], pool="max", batch_size=b)
        t_one, t_two = [], []
        for _ in range(args.runs):  # interleaved, so load changes hit both alike
            index, t = timed(lambda: mine(m, [layer], folder, batch_size=b, workers=1))
            t_one.append(t)
            _, t = timed(lambda: mine(m, [layer], folder, batch_size=b, workers=2))
            t_two.append(t)
        _, t_decoded = timed(lambda: mine(m, [layer], images, batch_size=b, workers=0))
        channels = index.meta["layers"][layer][0]
        sample = np.linspace(0, channels - 1, args.sample).round().astype(int).tolist()
        t_calls, t_rank = [], []
        for c in sample:
            _, t = timed(lambda c=c: top_patches(m, layer, c, folder, batch_size=b))
            t_calls.append(t)
            pool = lambda t, c=c: t[:, c].flatten(1)  # noqa: E731 - top_patches's own ranking
            _, t = timed(lambda pool=pool: layer_features(m, images, [layer], pool=pool, batch_size=b))
            t_rank.append(t)

    one, two = float(np.median(t_one)), float(np.median(t_two))
    per_mine, per_decoded = one / channels, t_decoded / channels
    per_call, per_rank = float(np.median(t_calls)), float(np.median(t_rank))
    print(f"mine, all {channels} channels, folder, 1 worker (median of {args.runs}): {one:.1f} s, "
          f"{n / one:.1f} images/s, {1000 * per_mine:.1f} ms per channel")
    print(f"top_patches on the folder, per channel (median of {len(sample)}): {per_call:.2f} s "
          f"-> mine is {per_call / per_mine:.0f}x cheaper per channel "
          f"(goal >= 0.8 x {channels} = {0.8 * channels:.0f})")
    print(f"same input, decoded images: mine {t_decoded:.1f} s for {channels} channels; ranking alone "
          f"(one forward pass per channel, no projections) {per_rank:.2f} s per channel -> mine is "
          f"{per_rank / per_decoded:.0f}x cheaper per channel")
    print(f"mine with 2 decode workers (median of {args.runs}): {two:.1f} s, {n / two:.1f} images/s; "
          f"scaling 1 -> 2 workers: {one / two:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
