"""Every registered method on every registry model leaves no hooks and no changed flags behind,
after a normal run, a bad target, and an exception inside the forward (captum's test_hook_removal).
Also: concurrent calls on one shared model equal serial ones (docs/reliability.md, "Shared models").

The methods come from the method registry (``support.method_cases()``); what a method needs from a
model (a GAP head, ``nn.ReLU`` modules) comes from its spec and decides the right error below."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from support import MethodCase, method_cases, random_image, zoo_model
from vizkit.core.hooks import _HOOK_DICTS, FunctionalReLUError, find_layer, hook_count
from vizkit.core.results import Explanation
from vizkit.models.base import LoadedModel
from vizkit.models.registry import list_models

SIZE = 64   # every registry model accepts 64×64; the methods must work at any accepted size


def small(name: str) -> LoadedModel:
    base = zoo_model(name)
    return LoadedModel(module=base.module, spec=replace(base.spec, input_size=SIZE),
                       device=base.device, lock=base.lock)


def _first_conv(m):
    return m.conv_layers()[0]


CASES = {case.id: case for case in method_cases()}
# Every case with a class target; every case that runs the model (filter weights and the summary
# read the weights or the graph only).
CLASS_CASES = [name for name, case in CASES.items() if case.kind == "class"]
FORWARD_CASES = [name for name, case in CASES.items() if case.spec.forward]

# What the registry models lack, for the methods whose spec needs it.
NO_GAP_HEAD = {"alexnet", "vgg16", "vgg19", "squeezenet1_1"}
FUNCTIONAL_RELU = {"googlenet"}  # BasicConv2d calls F.relu


def expected_error(case: MethodCase, model: str) -> type[Exception] | None:
    """The errors that are the right answer (a clear message instead of a wrong map)."""
    if case.spec.needs_rectifiers and model in FUNCTIONAL_RELU:
        return FunctionalReLUError
    if case.spec.needs_gap_head and model in NO_GAP_HEAD:
        return ValueError
    return None


def snapshot(module: torch.nn.Module) -> dict:
    """Everything a method must leave as it found it."""
    return {
        "hooks": [(n, d, len(getattr(sub, d, {}))) for n, sub in module.named_modules() for d in _HOOK_DICTS],
        "training": [(n, sub.training) for n, sub in module.named_modules()],
        "inplace": [(n, sub.inplace) for n, sub in module.named_modules() if hasattr(sub, "inplace")],
        "requires_grad": [(n, p.requires_grad) for n, p in module.named_parameters()],
        "grad": [(n, None if p.grad is None else id(p.grad)) for n, p in module.named_parameters()],
    }


class _Unusual:
    """Puts the model in a non-default state (so a method that resets flags is caught), then back."""

    def __init__(self, module):
        self.module = module
        self.params = list(module.parameters())

    def __enter__(self):
        self.params[0].requires_grad_(False)
        self.params[-1].grad = torch.full_like(self.params[-1], 0.5)
        return self

    def __exit__(self, *exc):
        self.params[0].requires_grad_(True)
        self.params[-1].grad = None


def _check_result(result, method):
    if isinstance(result, Explanation):
        assert result.map.shape == (SIZE, SIZE) and result.map.dtype == np.float32
        assert np.isfinite(result.map).all()


@pytest.mark.slow
@pytest.mark.parametrize("method", list(CASES))
@pytest.mark.parametrize("model", list_models())
def test_no_trace_after_a_normal_run(model, method):
    m = small(model)
    case = CASES[method]
    img = random_image(SIZE, SIZE, seed=7)
    with _Unusual(m.module):
        before = snapshot(m.module)
        error = expected_error(case, model)
        if error is None:
            _check_result(case.call(m, img, None), method)
        else:
            with pytest.raises(error):
                case.call(m, img, None)
        assert snapshot(m.module) == before
    assert hook_count(m.module) == 0


@pytest.mark.slow
@pytest.mark.parametrize("method", CLASS_CASES)
@pytest.mark.parametrize("model", list_models())
def test_no_trace_after_a_bad_target(model, method, monkeypatch):
    m = small(model)
    case = CASES[method]
    forwards = []
    handle = m.module.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        before = snapshot(m.module)
        with pytest.raises(ValueError, match="outside this model's"):
            case.call(m, random_image(SIZE, SIZE), len(m.classes))
        assert forwards == [], "a bad target must be rejected before any forward"
        assert snapshot(m.module) == before
    finally:
        handle.remove()
    assert hook_count(m.module) == 0


@pytest.mark.slow
@pytest.mark.parametrize("method", FORWARD_CASES)
@pytest.mark.parametrize("model", list_models())
@pytest.mark.parametrize("how", ["pre_hook", "patched_module"])
def test_no_trace_after_an_exception_in_the_forward(model, method, how, monkeypatch):
    if how == "pre_hook" and method == "occlusion":
        pytest.skip("occlusion interprets the model's fx graph, calling module.forward directly: "
                    "module hooks do not fire there (the patched_module case covers it)")
    m = small(model)
    case = CASES[method]

    def explode(*_):
        raise RuntimeError("boom inside the forward")

    layer = find_layer(m.module, m.spec.cam_layer)
    if how == "pre_hook":
        handle = layer.register_forward_pre_hook(explode)
    else:   # the first convolution's forward raises (also reached by traced copies of the model)
        conv = find_layer(m.module, _first_conv(m))
        monkeypatch.setattr(conv, "forward", explode)
        handle = None
    try:
        with _Unusual(m.module):
            before = snapshot(m.module)
            # GoogLeNet's first F.relu comes before the CAM layer's pre-hook: that error first.
            early = how == "pre_hook" and expected_error(case, model) is FunctionalReLUError
            with pytest.raises(FunctionalReLUError if early else RuntimeError,
                               match="F.relu" if early else "boom inside the forward"):
                case.call(m, random_image(SIZE, SIZE), 1)
            assert snapshot(m.module) == before
    finally:
        if handle is not None:
            handle.remove()
    assert hook_count(m.module) == 0


def test_concurrent_calls_equal_serial_ones():
    """8 threads × 3 calls mixing grad_cam, deconvnet and guided_backprop on one shared model."""
    from vizkit.methods.backprop import deconvnet, guided_backprop
    from vizkit.methods.class_maps import grad_cam

    m = zoo_model("fashion-zf")
    images = [random_image(64, 64, seed=s) for s in range(4)]
    jobs = []
    for i in range(24):
        img = images[i % 4]
        kind = i % 3
        if kind == 0:
            jobs.append(lambda img=img, t=i % 10: grad_cam(m, img, t).raw)
        elif kind == 1:
            jobs.append(lambda img=img, c=i: deconvnet(m, img, "features.relu3", c).raw)
        else:
            jobs.append(lambda img=img, t=i % 10: guided_backprop(m, img, t).raw)
    serial = [job() for job in jobs]
    results: list = [None] * len(jobs)
    errors: list = []
    barrier = threading.Barrier(8)

    def worker(w):
        try:
            barrier.wait()
            for j in range(w, len(jobs), 8):
                results[j] = jobs[j]()
        except Exception as err:  # reported below, with the thread's index
            errors.append((w, err))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for got, want in zip(results, serial, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert hook_count(m.module) == 0
    assert all(sub.inplace for sub in m.module.modules() if hasattr(sub, "inplace"))
