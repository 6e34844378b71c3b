"""One model shared by many threads (Streamlit sessions): serial results, clean model, lock held.

Streamlit runs every session in its own thread and ``st.cache_resource`` shares one model among
them. Each vizkit call must give exactly what a serial call gives, and leave no hook and no
changed flag behind; ``LoadedModel.lock`` is what serializes the hooked forward/backward passes.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from support import random_image
from vizkit.core.hooks import hook_count
from vizkit.methods.backprop import deconvnet, guided_backprop, saliency
from vizkit.methods.class_maps import cam, grad_cam, grad_cam_pp
from vizkit.methods.filters import maximize_activation
from vizkit.methods.layer_activations import activations
from vizkit.methods.occlusion.sensitivity import occlusion
from vizkit.methods.prediction import predict
from vizkit.models.registry import load_model

THREADS, CALLS = 8, 25


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
TARGETS = [None, 2, 7]  # per image; for deconvnet the same index picks a channel (None → 5)

METHODS = {
    "grad_cam": lambda m, img, t: grad_cam(m, img, t),
    "deconvnet": lambda m, img, t: deconvnet(m, img, "features.conv4", 5 if t is None else t),
    "guided_backprop": lambda m, img, t: guided_backprop(m, img, t),
    "occlusion": lambda m, img, t: occlusion(m, img, t, patch=32, stride=16),
    "predict": lambda m, img, t: predict(m, img, top=3),
}


def comparable(result) -> tuple:
    """What must be identical between a threaded and a serial call."""
    if isinstance(result, list):  # predict
        return tuple(result), None, None
    extra = None
    if result.method == "occlusion":
        extra = (result.info["box"], result.info["clean_probability"],
                 result.info["probability_grid"].tobytes())
    return result.map.tobytes() + result.raw.numpy().tobytes(), result.target, extra


def job(k: int, i: int) -> tuple[str, int]:
    """The method and image of call ``i`` of thread ``k`` (every thread mixes all methods)."""
    names = list(METHODS)
    return names[(k + i) % len(names)], (k * CALLS + i) % len(IMAGES)


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
    """Each round of the threaded test runs all five methods at once, on every image."""
    for i in range(CALLS):
        assert {job(k, i)[0] for k in range(THREADS)} == set(METHODS)
    assert {job(k, i) for k in range(THREADS) for i in range(CALLS)} == \
        {(name, j) for name in METHODS for j in range(len(IMAGES))}


# Each call must wait for m.lock: with the lock held elsewhere it cannot finish. On the tiny CNN a
# call takes milliseconds, so a call that ignored the lock would be done long before the check.
LOCKED_CALLS = {
    "predict": lambda m, img: predict(m, img),
    "activations": lambda m, img: activations(m, img, "relu2"),
    "saliency": lambda m, img: saliency(m, img),
    "guided_backprop": lambda m, img: guided_backprop(m, img, 1),
    "deconvnet": lambda m, img: deconvnet(m, img, "conv2", 3),
    "deconvnet_class": lambda m, img: deconvnet(m, img, target=0),
    "cam": lambda m, img: cam(m, img),
    "grad_cam": lambda m, img: grad_cam(m, img, 2),
    "grad_cam_pp": lambda m, img: grad_cam_pp(m, img),
    "occlusion": lambda m, img: occlusion(m, img, patch=8, stride=8),
    "maximize_activation": lambda m, img: maximize_activation(m, "conv2", [0], steps=2, size=16),
}


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
    assert hook_count(tiny.module) == 0
