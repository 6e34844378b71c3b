"""vizkit's one-pass methods against captum, side by side in one run.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/methods.py [--model resnet18] [--runs 7]

Every registered method that maps a class target in one pass (``vizkit.methods.registry``) is
timed: the median wall time (and process CPU time) of vizkit's call (image in, Explanation out,
preprocessing included) and, where captum has the same method, captum's (preprocessing +
attribute + map reduction), and the ratio captum/vizkit (> 1: vizkit is faster). The model has
seeded random weights (timing does not depend on them; no network needed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from captum.attr import Deconvolution, GuidedBackprop, LayerAttribution, LayerGradCam, Saliency  # noqa: E402

from vizkit.core.hooks import find_layer  # noqa: E402
from vizkit.core.results import Explanation  # noqa: E402
from vizkit.methods.registry import list_methods  # noqa: E402
from vizkit.models.registry import load_model  # noqa: E402


def benched_methods() -> list:
    """The registered methods this bench times: one-pass maps of a class target."""
    return list_methods(target="class", result=Explanation, long_running=False)


def median_seconds(fn, runs: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (the latter less sensitive to a shared CPU)."""
    fn()   # warm-up
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--target", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="captum")
    torch.manual_seed(0)
    m = load_model(args.model, device="cpu", weights=None)
    size = m.input_size
    img = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    t = args.target
    net = m.module
    layer = find_layer(net, m.spec.cam_layer)

    def captum_map(attr):
        return attr.detach()[0].abs().amax(0).numpy()

    def x():
        return m.preprocess(img).requires_grad_(True)

    # captum's implementation of the same method, where it has one.
    peers = {
        "saliency": lambda: captum_map(Saliency(net).attribute(x(), target=t, abs=True)),
        "guided_backprop": lambda: captum_map(GuidedBackprop(net).attribute(x(), target=t)),
        "deconvnet": lambda: captum_map(Deconvolution(net).attribute(x(), target=t)),
        "grad_cam": lambda: LayerAttribution.interpolate(
            LayerGradCam(net, layer).attribute(x(), target=t, relu_attributions=True),
            (size, size), "bilinear").detach()[0, 0].numpy(),
    }
    print(f"{args.model} at {size}×{size}, device cpu, torch threads {torch.get_num_threads()}, "
          f"median of {args.runs} runs")
    print(f"{'method':<16} {'vizkit ms':>10} {'captum ms':>10} {'vizkit cpu':>11} {'captum cpu':>11} "
          f"{'captum/vizkit (wall, cpu)':>26}")
    for spec in benched_methods():
        try:
            a, a_cpu = median_seconds(lambda spec=spec: spec.run(m, img, target=t), args.runs)
        except ValueError as error:  # e.g. CAM on a model without a GAP head
            print(f"{spec.name:<16} not applicable: {error}")
            continue
        if spec.name not in peers:
            print(f"{spec.name:<16} {a * 1e3:>10.1f} {'—':>10} {a_cpu * 1e3:>11.1f} {'—':>11} "
                  f"{'no captum peer':>26}")
            continue
        b, b_cpu = median_seconds(peers[spec.name], args.runs)
        print(f"{spec.name:<16} {a * 1e3:>10.1f} {b * 1e3:>10.1f} {a_cpu * 1e3:>11.1f} {b_cpu * 1e3:>11.1f} "
              f"{b / a:>17.2f} {b_cpu / a_cpu:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
