"""The method registry: lookup, filters, calls by target kind, and that every table of methods
(pages, sanity check, pointing game, bench, generic tests) is built from it."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import test_concurrency
import test_hook_hygiene
import test_interrupts
import torch

import vizkit as vk
from support import method_cases, random_image, toy_method_spec
from vizkit.cli import localization as localization_cli
from vizkit.core.results import Explanation
from vizkit.methods.registry import (
    TARGET_KINDS,
    MethodSpec,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)
from vizkit.metrics.localization import pointing_methods
from vizkit.metrics.sanity import sanity_check, sanity_methods

ROOT = Path(__file__).resolve().parent.parent
EXPLANATION_METHODS = ["deconvnet", "guided_backprop", "saliency", "cam", "grad_cam", "grad_cam_pp",
                       "occlusion"]


@pytest.fixture
def toy():
    spec = register_method(toy_method_spec())
    yield spec
    unregister_method(spec.name)


def test_every_public_method_is_registered_once_under_its_own_name():
    names = [spec.name for spec in list_methods()]
    assert len(names) == len(set(names))
    for spec in list_methods():
        assert getattr(vk, spec.name) is spec.fn, spec.name  # the public function of that name
        assert spec.fn.__module__ == f"vizkit.methods.{spec.family}" or \
            spec.fn.__module__.startswith(f"vizkit.methods.{spec.family}."), spec.name
    assert set(EXPLANATION_METHODS) <= set(names)
    assert {"activations", "filter_weights", "maximize_activation", "summarize"} <= set(names)


def test_get_method_names_the_valid_ones():
    assert get_method("grad_cam").fn is vk.grad_cam
    with pytest.raises(ValueError, match="Unknown method 'gradcam'. Available: .*grad_cam"):
        get_method("gradcam")
    with pytest.raises(ValueError, match="already registered"):
        register_method(get_method("cam"))


def test_filters():
    assert [s.name for s in list_methods(family="class_maps")] == ["cam", "grad_cam", "grad_cam_pp"]
    assert [s.name for s in list_methods(family="backprop")] == ["deconvnet", "guided_backprop", "saliency"]
    assert [s.name for s in list_methods(target="unit")] == ["deconvnet", "maximize_activation"]
    assert [s.name for s in list_methods(target="class", result=Explanation)] == [
        "deconvnet", "guided_backprop", "saliency", "cam", "grad_cam", "grad_cam_pp", "occlusion"]
    assert [s.name for s in list_methods(long_running=True)] == ["occlusion", "maximize_activation"]
    assert "cam" not in [s.name for s in list_methods(target="callable")]
    with pytest.raises(ValueError, match="Unknown target kind 'pixel'"):
        list_methods(target="pixel")
    with pytest.raises(ValueError, match="unknown target kind"):
        MethodSpec(name="x", title="X", citation="", summary="", family="x", fn=print, targets=("pixel",))
    assert all(set(s.targets) <= set(TARGET_KINDS) for s in list_methods())


def test_run_passes_each_target_kind_as_the_function_takes_it(tiny):
    img = random_image(16, 16)
    np.testing.assert_array_equal(get_method("deconvnet").run(tiny, img, unit=("conv2", 3)).map,
                                  vk.deconvnet(tiny, img, "conv2", 3).map)
    np.testing.assert_array_equal(get_method("deconvnet").run(tiny, img, target=2).map,
                                  vk.deconvnet(tiny, img, target=2).map)
    by_callable = get_method("saliency").run(tiny, img, target=lambda logits: logits[:, 1])
    torch.testing.assert_close(by_callable.raw, vk.saliency(tiny, img, 1).raw)
    grown = get_method("maximize_activation").run(tiny, img, unit=("conv2", 4), steps=2, size=16)
    assert grown.channels == (4,)
    assert get_method("summarize").run(tiny, img) == vk.summarize(tiny)  # takes no image: ignored
    with pytest.raises(ValueError, match="Layer activations does not explain a class; it takes: layer"):
        get_method("activations").run(tiny, img, target=1)
    with pytest.raises(ValueError, match="CAM does not explain a callable"):
        get_method("cam").run(tiny, img, target=lambda logits: logits[:, 0])
    with pytest.raises(ValueError, match="Saliency does not explain a unit"):
        get_method("saliency").run(tiny, img, unit=("conv2", 0))
    with pytest.raises(ValueError, match="needs an image"):
        get_method("saliency").run(tiny)


def test_the_generic_test_tables_are_the_registry():
    ids = [case.id for case in method_cases()]
    assert {case.spec.name for case in method_cases()} == {spec.name for spec in list_methods()}
    assert list(test_hook_hygiene.CASES) == ids
    assert list(test_concurrency.METHODS) == [*ids, "predict"]
    forward = {c.id for c in method_cases() if c.spec.forward}
    assert set(test_concurrency.LOCKED_CALLS) == forward | {"predict"}
    assert list(test_interrupts.JOBS) == [c.id for c in method_cases() if c.spec.long_running]
    # tests/test_memory.py probes method_cases() in its subprocess and checks it saw every id.


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_methods", ROOT / "bench" / "methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_registered_method_reaches_every_table(toy, tiny, capsys):
    assert toy.name in [case.spec.name for case in method_cases()]      # hooks, threads, memory
    assert toy.name in [s.name for s in list_methods(family="class_maps")]  # the CAM page
    assert toy.name in sanity_methods() and toy.name in pointing_methods()
    assert toy.name in localization_cli.choices()
    assert toy.name in [s.name for s in _bench_module().benched_methods()]
    # And it works there: a map that ignores the model fails the sanity check completely.
    result = sanity_check(tiny, random_image(16, 16), toy.name, target=1)
    assert result.method == toy.name and result.final == pytest.approx(1.0)
    parser = argparse.ArgumentParser()
    localization_cli.add_arguments(parser)
    args = parser.parse_args(["--scenes", "2", "--methods", toy.name])
    assert localization_cli.run(args) == 0
    assert f"{toy.name}" in capsys.readouterr().out
