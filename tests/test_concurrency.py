"""One model shared by many threads (Streamlit sessions): serial results, clean model, lock held.

Streamlit runs every session in its own thread and ``st.cache_resource`` shares one model among
them. Each vizkit call must give exactly what a serial call gives, and leave no hook and no
changed flag behind; ``LoadedModel.lock`` is what serializes the hooked forward/backward passes.
Both tables are every registered method (``support.method_cases()``) plus ``predict``, which every
page calls.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from support import fingerprint, method_cases, random_image
from vizkit.core.hooks import hook_count
from vizkit.methods.prediction import predict
from vizkit.models.registry import load_model

CALLS = 25


def module_state(module: nn.Module) -> dict:
    """Every flag a vizkit call could change: training, inplace, requires_grad, .grad."""
    return {
        "modules": [(n, s.training, getattr(s, "inplace", None)) for n, s in module.named_modules()],
        "params": [(n, p.requires_grad, None if p.grad is None else p.grad.clone())
                   for n, p in module.named_parameters()],
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["modules"] == after["modules"]
    for (n, rg, g), (n2, rg2, g2) in zip(before["params"], after["params"], strict=True):
        assert (n, rg) == (n2, rg2)
        assert (g is None) == (g2 is None), n
        if g is not None:
            assert torch.equal(g, g2), n


def assert_no_hooks(module: nn.Module) -> None:
    assert hook_count(module) == 0
    from torch.nn.modules import module as mod

    for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        assert not getattr(mod, name), name


@pytest.fixture(scope="module")
def shared():
    """fashion-zf (seeded, weights=None) with flags a careless method would disturb."""
    torch.manual_seed(0)
    m = load_model("fashion-zf", device="cpu", weights=None)
    # Non-default flags: a frozen bias and a stale .grad must survive every call unchanged.
    m.module.features.conv1.bias.requires_grad_(False)
    m.module.fc.weight.grad = torch.full_like(m.module.fc.weight, 0.25)
    return m


IMAGES = [random_image(64, 64, seed) for seed in (11, 12, 13)]
TARGETS = [None, 2, 7]  # per image; for a unit case the same index picks a channel (None → 0)

METHODS = {case.id: case.call for case in method_cases()}
METHODS["predict"] = lambda m, img, t: predict(m, img, top=3)
# Every round runs every method at once: one thread per method at least.
THREADS = max(8, len(METHODS))


def comparable(result) -> tuple:
    """What must be identical between a threaded and a serial call: the whole result (maps, raw,
    target, occlusion's box, clean probability and probability grid, ...), timings left out."""
    return fingerprint(result)


def job(k: int, i: int) -> tuple[str, int]:
    """The method and image of call ``i`` of thread ``k`` (every thread mixes all methods; each
    method meets every image, one round after another)."""
    names = list(METHODS)
    method = (k + i) % len(names)
    return names[method], (method + i) % len(IMAGES)


@pytest.mark.slow
def test_threads_get_serial_results_and_leave_the_model_clean(shared):
    m = shared
    before = module_state(m.module)
    serial = {(name, j): comparable(fn(m, IMAGES[j], TARGETS[j]))
              for name, fn in METHODS.items() for j in range(len(IMAGES))}
    assert_same_state(before, module_state(m.module))

    barrier = threading.Barrier(THREADS)
    mismatches: list[tuple] = []
    errors: list[BaseException] = []
    done = [0] * THREADS

    def worker(k: int) -> None:
        try:
            barrier.wait()
            for i in range(CALLS):
                name, j = job(k, i)
                got = comparable(METHODS[name](m, IMAGES[j], TARGETS[j]))
                if got != serial[(name, j)]:
                    mismatches.append((k, i, name, j))
                done[k] += 1
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a worker hung (a lock never released?)"
    assert not errors, errors
    assert done == [CALLS] * THREADS
    assert not mismatches, mismatches[:10]
    assert_no_hooks(m.module)
    assert_same_state(before, module_state(m.module))
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_job_mix_interleaves_every_method():
    """Each round of the threaded test runs all methods at once, on every image."""
    for i in range(CALLS):
        assert {job(k, i)[0] for k in range(THREADS)} == set(METHODS)
    assert {job(k, i) for k in range(THREADS) for i in range(CALLS)} == \
        {(name, j) for name in METHODS for j in range(len(IMAGES))}


# Each call must wait for m.lock: with the lock held elsewhere it cannot finish. On the tiny CNN a
# call takes milliseconds, so a call that ignored the lock would be done long before the check.
# Every method that runs the model; filter weights and the summary read the weights or the graph.
LOCKED_CALLS = {case.id: lambda m, img, case=case: case.call(m, img, 1)
                for case in method_cases() if case.spec.forward}
LOCKED_CALLS["predict"] = lambda m, img: predict(m, img)


@pytest.mark.parametrize("name", list(LOCKED_CALLS))
def test_every_call_waits_for_the_model_lock(tiny, name):
    img = random_image(16, 16, 3)
    expected = LOCKED_CALLS[name](tiny, img)
    out: dict = {}
    worker = threading.Thread(target=lambda: out.setdefault("r", LOCKED_CALLS[name](tiny, img)))
    with tiny.lock:
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive(), f"{name} ran while another thread held m.lock"
    worker.join(timeout=60)
    assert not worker.is_alive() and "r" in out
    if isinstance(expected, list):
        assert out["r"] == expected
    elif hasattr(expected, "map"):
        np.testing.assert_array_equal(out["r"].map, expected.map)
    else:
        assert fingerprint(out["r"]) == fingerprint(expected)
    assert hook_count(tiny.module) == 0
