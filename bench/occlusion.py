"""Occlusion speed, side by side with captum, in one process on one image.

    python bench/occlusion.py --model vgg16 --patch 16 --stride 8

Runs captum's ``Occlusion`` (forward = softmax probability of the top class) at its best
``perturbations_per_eval`` of {1, 16, 64}, then ``vk.occlusion`` in exact and approximate
mode. The best ``perturbations_per_eval`` is chosen by timing the first ``--calibrate``
perturbed examples of each (``--calibrate 0`` times complete runs of each instead); the chosen
one then runs complete. Last line:

    speedup_exact: A max_rel_diff: B speedup_approx: C ssim: D

    mac_limit: E (forced incremental F)

A, C: captum time / vizkit time; B: max |exact - captum| / max |captum|; D: SSIM of the
approximate map against the exact one (scikit-image). E: the MAC-count limit of the exact
engine, the multiply-accumulates of one full forward pass over those the engine computes per
patch position (boxes padded to one geometry per batch, a layer run in full once its box covers
most of its map); F: the same with every layer kept incremental however large its box (below 1
where halos and batch geometry outgrow the maps). Both are counted by PyTorch's FlopCounterMode
over a complete exact run (``--no-macs`` skips it). They are not the ideal per-position limit
(each layer's own changed box, no batching), which is lower in MACs.

Times are CPU seconds of this process (``time.process_time``), not wall clock: on a shared
CPU the wall clock mostly measures the other jobs. With one thread both are the same work.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from captum.attr import Occlusion
from skimage.metrics import structural_similarity

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vizkit.core.images import load_image  # noqa: E402
from vizkit.methods.occlusion.sensitivity import OcclusionRun, baseline_value, occlusion  # noqa: E402
from vizkit.models.registry import load_model, weights_available  # noqa: E402


def macs_per_position(m, img, target, patch, stride, baseline, boxes_only):
    """Multiply-accumulates of one full pass, and of one position of an exact occlusion run.

    ``boxes_only`` keeps every layer incremental however large its box (no full recompute).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from vizkit.methods.occlusion import incremental

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        m.module(m.preprocess(img))
    full = counter.get_total_flops() // 2
    saved = incremental.FULL_FRACTION
    counter = FlopCounterMode(display=False)
    try:
        if boxes_only:
            incremental.FULL_FRACTION = math.inf
        with counter:
            result = occlusion(m, img, target=target, patch=patch, stride=stride, baseline=baseline,
                               mode="exact")
    finally:
        incremental.FULL_FRACTION = saved
    positions = result.info.total_positions
    return full, (counter.get_total_flops() // 2 - full) / positions  # less the clean pass


class _Enough(Exception):
    """Stops a calibration run of captum once enough examples were timed."""


def captum_map(m, x, base, target, patch, stride, ppe, limit=None):
    """Captum's occlusion map (S×S) and seconds per perturbed example (or total seconds)."""
    seen = {"calls": 0, "examples": 0, "start": None}

    def forward(batch):
        seen["calls"] += 1
        if seen["calls"] == 2:  # captum evaluates the clean input first, then the patches
            seen["start"] = time.process_time()
        out = torch.softmax(m.module(batch), dim=1)[:, target]
        if seen["calls"] >= 2:
            seen["examples"] += batch.shape[0]
            if limit is not None and seen["examples"] >= limit:
                raise _Enough
        return out

    started = time.process_time()
    try:
        with torch.inference_mode():
            attr = Occlusion(forward).attribute(
                x, sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride),
                baselines=base.expand_as(x), perturbations_per_eval=ppe)
    except _Enough:
        return None, (time.process_time() - seen["start"]) / seen["examples"]
    return attr[0, 0].cpu().numpy(), time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-zf")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="input side (default: model's)")
    parser.add_argument("--image", default=str(ROOT / "assets" / "samples" / "chelsea.png"))
    parser.add_argument("--baseline", default="mean")
    parser.add_argument("--ppe", default="1,16,64", help="captum perturbations_per_eval to try")
    parser.add_argument("--no-macs", dest="macs", action="store_false",
                        help="skip counting the MAC-count limit (two more exact runs)")
    parser.add_argument("--calibrate", type=int, default=64,
                        help="perturbed examples timed per ppe to pick the best (0: full runs)")
    args = parser.parse_args(argv)

    weights = "default" if weights_available(args.model) else None
    torch.manual_seed(0)
    m = load_model(args.model, device="cpu", weights=weights)
    if args.size:
        m.spec = dataclasses.replace(m.spec, input_size=args.size)
    img = load_image(args.image)
    x = m.preprocess(img)
    base = baseline_value(m, args.baseline)
    with torch.inference_mode():
        target = int(m.module(x).argmax())
    print(f"model {args.model} ({'trained' if weights else 'random seeded'} weights), "
          f"input {m.input_size}, patch {args.patch}, stride {args.stride}, "
          f"torch threads {torch.get_num_threads()}, target {target}")

    ppes = [int(v) for v in args.ppe.split(",")]
    runs = {}
    if args.calibrate and len(ppes) > 1:
        per_example = {}
        positions = (math.ceil((m.input_size - args.patch) / args.stride) + 1) ** 2
        for ppe in ppes:
            limit = max(ppe, args.calibrate)
            reference, seconds = captum_map(m, x, base, target, args.patch, args.stride, ppe,
                                            limit=limit if limit < positions else None)
            if reference is not None:  # ran complete: keep it
                runs[ppe] = (reference, seconds)
                seconds /= positions
            per_example[ppe] = seconds
            print(f"captum ppe={ppe}: {seconds * 1e3:.1f} ms CPU per perturbed example "
                  f"({'complete run' if reference is not None else 'calibration'})")
        best = min(per_example, key=per_example.get)
    else:
        for ppe in ppes:
            runs[ppe] = captum_map(m, x, base, target, args.patch, args.stride, ppe)
            print(f"captum ppe={ppe}: {runs[ppe][1]:.2f} s CPU")
        best = min(runs, key=lambda k: runs[k][1])
    if best not in runs:
        runs[best] = captum_map(m, x, base, target, args.patch, args.stride, best)
    reference, captum_s = runs[best]
    print(f"captum best ppe={best}: {captum_s:.2f} s CPU")

    exact = occlusion(m, img, target=target, patch=args.patch, stride=args.stride,
                      baseline=args.baseline, mode="exact")
    exact_run: OcclusionRun = exact.info
    exact_s = exact_run.timings.cpu_s
    print(f"vizkit exact: {exact_s:.2f} s CPU, {exact_run.timings.total_s:.2f} s wall "
          f"(nodes {exact_run.nodes}, batch {exact_run.batch_size})")
    approx = occlusion(m, img, target=target, patch=args.patch, stride=args.stride,
                       baseline=args.baseline, mode="approximate")
    approx_run: OcclusionRun = approx.info
    approx_s = approx_run.timings.cpu_s
    print(f"vizkit approximate: {approx_s:.2f} s CPU ({approx_run.evaluated} of "
          f"{approx_run.total_positions} positions evaluated; {approx_run.arithmetic} arithmetic: "
          f"{approx_run.arithmetic_reason})")

    max_rel_diff = float(np.abs(exact.map - reference).max() / np.abs(reference).max())
    span = float(exact.map.max() - exact.map.min()) or 1.0
    ssim = float(structural_similarity(approx.map, exact.map, data_range=span))
    limits = ""
    if args.macs:
        full, ideal = macs_per_position(m, img, target, args.patch, args.stride, args.baseline, True)
        _, engine = macs_per_position(m, img, target, args.patch, args.stride, args.baseline, False)
        print(f"MACs: full pass {full / 1e6:.1f} M; per position as the engine computes "
              f"{engine / 1e6:.1f} M, forced incremental {ideal / 1e6:.1f} M")
        limits = f" mac_limit: {full / engine:.2f} (forced incremental {full / ideal:.2f})"
    print(f"speedup_exact: {captum_s / exact_s:.2f} max_rel_diff: {max_rel_diff:.2e} "
          f"speedup_approx: {captum_s / approx_s:.2f} ssim: {ssim:.3f}{limits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
