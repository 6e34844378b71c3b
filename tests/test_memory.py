"""Memory: 100 calls of each method keep the RSS flat; out-of-memory halves batches exactly.

RSS is measured in a fresh subprocess (other tests' allocations would blur it), from
/proc/self/statm, after ``gc.collect()``: the level after the first 5 calls of a method is the
reference, and after 100 calls the process must stay within 1.1× of it (the bound
pytorch-grad-cam's tests use). Every registered method is probed (``support.method_cases()``); a
deliberately leaking control shows the probe can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from support import TINY_SPEC, make_tiny_cnn, method_cases
from vizkit.core.hooks import hook_count
from vizkit.methods.filters import maximize_activation
from vizkit.models.registry import wrap_module

ROOT = Path(__file__).resolve().parent.parent
RSS_BOUND = 1.1

PROBE = r"""
import gc, json, os, sys
import numpy as np
import torch
sys.path.insert(0, "tests")
from support import method_cases, random_image
from vizkit.models.registry import load_model

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


torch.manual_seed(0)
m = load_model("fashion-zf", device="cpu", weights=None)
images = [random_image(64, 64, s) for s in range(3)]
kept = []
methods = {case.id: lambda img, case=case: case.call(m, img, 3) for case in method_cases()}
# The control leaks on purpose (4 MB kept per call): the probe must see it.
methods["leaky_control"] = lambda img: kept.append(np.ones(2**20, np.float32))
names = sys.argv[1:] or list(methods)
out = {}
for name in names:
    fn = methods[name]
    for i in range(5):
        fn(images[i % 3])
    first = rss()
    for i in range(5, 100):
        fn(images[i % 3])
    out[name] = {"first5_mb": first / 2**20, "after100_mb": rss() / 2**20, "ratio": rss() / first}
print(json.dumps(out))
"""


def run_probe(*names: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, *names], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_hundred_calls_keep_rss_within_bound():
    result = run_probe()  # every registered method, and the leaking control
    print(json.dumps(result, indent=1))  # the figures, with -s
    assert set(result) == {case.id for case in method_cases()} | {"leaky_control"}
    assert result["leaky_control"]["ratio"] > RSS_BOUND  # the probe sees a 4 MB-per-call leak
    over = {k: v["ratio"] for k, v in result.items() if k != "leaky_control" and v["ratio"] > RSS_BOUND}
    assert not over, over


def _oom_above(module: torch.nn.Module, limit: int, counter: dict):
    """Makes ``module``'s forward raise torch.OutOfMemoryError for batches larger than ``limit``."""
    real = module.forward

    def forward(x):
        if x.shape[0] > limit:
            counter["oom"] = counter.get("oom", 0) + 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(x)

    module.forward = forward


def _maximize_with_oom(channels, **kwargs):
    """A run at batch 8 whose forward fails above 2 images, and a plain run at batch 2."""
    reference = maximize_activation(wrap_module(make_tiny_cnn(), TINY_SPEC, "cpu"), "relu2", channels,
                                    batch_size=2, **kwargs)
    m = wrap_module(make_tiny_cnn(), TINY_SPEC, "cpu")
    counter: dict = {}
    _oom_above(m.module, 2, counter)
    got = maximize_activation(m, "relu2", channels, batch_size=8, **kwargs)
    del m.module.forward
    return m, counter, got, reference


OOM_RUN = dict(channels=[0, 1, 2, 3, 4], steps=3, size=16, seed=3)


def test_maximize_activation_halves_its_batch_on_a_forward_out_of_memory():
    m, counter, got, reference = _maximize_with_oom(**OOM_RUN)
    # 5 images fail, 4 fail, then batches of 2 (and 1) run; nothing is lost or left behind.
    assert counter["oom"] == 2 and got.batch_size == 2 and got.channels == tuple(OOM_RUN["channels"])
    assert got.images.shape == reference.images.shape and not got.stopped
    assert hook_count(m.module) == 0 and all(p.requires_grad for p in m.module.parameters())
    assert all(p.grad is None for p in m.module.parameters())


def test_maximize_activation_after_out_of_memory_equals_a_run_at_the_halved_batch():
    _, _, got, reference = _maximize_with_oom(**OOM_RUN)
    np.testing.assert_array_equal(got.images, reference.images)
    np.testing.assert_array_equal(got.scores, reference.scores)


def test_maximize_activation_out_of_memory_at_batch_one_is_reported():
    m = wrap_module(make_tiny_cnn(), TINY_SPEC, "cpu")
    _oom_above(m.module, 0, {})
    with pytest.raises(torch.OutOfMemoryError):
        maximize_activation(m, "relu2", [0, 1], steps=2, size=16, batch_size=4)
    del m.module.forward
    assert hook_count(m.module) == 0 and all(p.requires_grad for p in m.module.parameters())
