"""vizkit/methods/backprop.py: saliency, guided backprop and deconvnet against hand computations
and captum."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop, NeuronDeconvolution, Saliency
from torch import nn

from support import HAND_CONV_B, HAND_CONV_W, HAND_FC_W, HAND_IMAGE, random_image, zoo_model
from vizkit.core.hooks import FunctionalReLUError, find_layer, hook_count
from vizkit.core.images import load_image
from vizkit.methods.backprop import deconvnet, guided_backprop, saliency
from vizkit.models.base import LoadedModel
from vizkit.models.registry import load_model, weights_available

ROOT = Path(__file__).resolve().parent.parent

# --- by hand -------------------------------------------------------------------------------


def hand_forward(x: np.ndarray):
    """conv, pool, relu outputs and the max-pool switches of the hand CNN, with numpy loops."""
    conv = np.zeros((2, 3, 3))
    for k in range(2):
        for i in range(3):
            for j in range(3):
                conv[k, i, j] = (HAND_CONV_W[k] * x[:, i:i + 2, j:j + 2]).sum() + HAND_CONV_B[k]
    pool = np.zeros((2, 2, 2))
    switches = {}
    for k in range(2):
        for i in range(2):
            for j in range(2):
                window = conv[k, i:i + 2, j:j + 2]
                assert (window == window.max()).sum() == 1, "the hand image must avoid pooling ties"
                di, dj = np.unravel_index(np.argmax(window), (2, 2))
                pool[k, i, j] = window.max()
                switches[k, i, j] = (i + di, j + dj)
    return conv, pool, np.maximum(pool, 0), switches


def hand_backward(pool, switches, g_relu, rule):
    """From a signal on the ReLU output to the pixels: the ReLU rule, unpooling through the
    switches, transposed filters."""
    if rule == "gradient":
        g_pool = g_relu * (pool > 0)
    elif rule == "guided":
        g_pool = np.maximum(g_relu, 0) * (pool > 0)
    elif rule == "deconvnet":
        g_pool = np.maximum(g_relu, 0)
    else:   # "none": the signal starts below the ReLU
        g_pool = g_relu
    g_conv = np.zeros((2, 3, 3))
    for (k, i, j), (si, sj) in switches.items():
        g_conv[k, si, sj] += g_pool[k, i, j]
    g_x = np.zeros((3, 4, 4))
    for k in range(2):
        for i in range(3):
            for j in range(3):
                g_x[:, i:i + 2, j:j + 2] += g_conv[k, i, j] * HAND_CONV_W[k]
    return g_x


def hand_class_map(c, rule):
    x = HAND_IMAGE.transpose(2, 0, 1).astype(np.float64)
    _, pool, _, switches = hand_forward(x)
    g_relu = np.broadcast_to(HAND_FC_W[c][:, None, None] / 4, (2, 2, 2))   # GAP 2×2, then linear
    return hand_backward(pool, switches, g_relu, rule)


@pytest.mark.parametrize("c", [0, 1])
@pytest.mark.parametrize(("fn", "rule"), [
    (saliency, "gradient"), (guided_backprop, "guided"),
    (lambda m, img, t: deconvnet(m, img, target=t), "deconvnet"),
])
def test_class_maps_by_hand(hand_cnn, fn, rule, c):
    expected = hand_class_map(c, rule)
    e = fn(hand_cnn, HAND_IMAGE, c)
    np.testing.assert_allclose(e.raw[0].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(e.map, np.abs(expected).max(0), atol=1e-4)
    assert e.target == c and e.map.dtype == np.float32 and e.map.shape == (4, 4)


def test_rules_differ_on_the_hand_cnn():
    """The hand CNN separates the three rules (else the by-hand tests would prove little)."""
    maps = [hand_class_map(1, rule) for rule in ("gradient", "guided", "deconvnet")]
    assert not np.allclose(maps[0], maps[1]) and not np.allclose(maps[1], maps[2])


@pytest.mark.parametrize(("layer", "channel"), [("relu", 0), ("relu", 1), ("pool", 1), ("conv", 1)])
def test_deconvnet_unit_by_hand(hand_cnn, layer, channel):
    x = HAND_IMAGE.transpose(2, 0, 1).astype(np.float64)
    conv, pool, relu, switches = hand_forward(x)
    fmap = {"conv": conv, "relu": relu, "pool": pool}[layer][channel]
    y, xx = np.unravel_index(np.argmax(fmap), fmap.shape)
    value = fmap[y, xx]
    if layer == "conv":   # below pooling and ReLU: the filter itself, scaled by the activation
        expected = np.zeros((3, 4, 4))
        expected[:, y:y + 2, xx:xx + 2] = value * HAND_CONV_W[channel]
    else:
        g = np.zeros((2, 2, 2))
        g[channel, y, xx] = value
        expected = hand_backward(pool, switches, g, "deconvnet" if layer == "relu" else "none")
    e = deconvnet(hand_cnn, HAND_IMAGE, layer, channel)
    assert e.info["unit"] == (y, xx) and e.info["activation"] == pytest.approx(value, abs=1e-4)
    np.testing.assert_allclose(e.raw[0].numpy(), expected, atol=1e-4)
    assert np.abs(expected).max() > 0


def test_deconvnet_unit_choice_and_whole_channel(hand_cnn):
    x = HAND_IMAGE.transpose(2, 0, 1).astype(np.float64)
    _, pool, relu, switches = hand_forward(x)
    e = deconvnet(hand_cnn, HAND_IMAGE, "relu", 1, unit=(0, 1))
    g = np.zeros((2, 2, 2))
    g[1, 0, 1] = relu[1, 0, 1]
    np.testing.assert_allclose(e.raw[0].numpy(), hand_backward(pool, switches, g, "deconvnet"), atol=1e-4)
    whole = deconvnet(hand_cnn, HAND_IMAGE, "relu", 1, unit="all")
    g = np.zeros((2, 2, 2))
    g[1] = relu[1]
    np.testing.assert_allclose(whole.raw[0].numpy(), hand_backward(pool, switches, g, "deconvnet"),
                               atol=1e-4)
    assert whole.info["unit"] == "all"


def test_deconvnet_argument_errors(hand_cnn):
    with pytest.raises(ValueError, match="Valid layers: conv, pool, relu"):
        deconvnet(hand_cnn, HAND_IMAGE, "rleu", 0)
    with pytest.raises(ValueError, match="outside layer 'relu'.s 2 channels"):
        deconvnet(hand_cnn, HAND_IMAGE, "relu", 2)
    with pytest.raises(ValueError, match="outside layer 'relu'.s 2×2 map"):
        deconvnet(hand_cnn, HAND_IMAGE, "relu", 0, unit=(2, 0))
    with pytest.raises(ValueError, match="both layer and channel"):
        deconvnet(hand_cnn, HAND_IMAGE, "relu")
    with pytest.raises(ValueError, match="not both"):
        deconvnet(hand_cnn, HAND_IMAGE, "relu", 0, target=1)
    with pytest.raises(ValueError, match="outside this model's 2 classes"):
        saliency(hand_cnn, HAND_IMAGE, 2)
    assert hook_count(hand_cnn.module) == 0


def test_callable_target_matches_index(hand_cnn):
    by_index = guided_backprop(hand_cnn, HAND_IMAGE, 1)
    by_callable = guided_backprop(hand_cnn, HAND_IMAGE, lambda logits: logits[:, 1])
    torch.testing.assert_close(by_callable.raw, by_index.raw)
    assert by_callable.target is None and by_callable.info["target"] == "callable"


# --- against captum ------------------------------------------------------------------------

# (model, layer and channel for the unit form); zoo models at 96 px to keep the suite lean.
CAPTUM_CASES = {
    "fashion-zf": ("features.pool2", 3),
    "resnet18": ("layer2", 5),     # a block output: the block's shared ReLU, second call
    "vgg16": ("features.16", 7),   # a max-pool: unpooling through switches
    "alexnet": ("features.5", 2),
    "googlenet": ("inception3a", 4),
}
ZOO_SIZE = 96


def model_for_captum(name: str) -> LoadedModel:
    """fashion-zf with its trained weights when present; zoo models seeded, at a small input."""
    if name == "fashion-zf":
        return load_model(name, device="cpu") if weights_available(name) else zoo_model(name)
    base = zoo_model(name)
    return LoadedModel(module=base.module, spec=replace(base.spec, input_size=ZOO_SIZE),
                       device=base.device, lock=base.lock)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """max |a - b| <= rel · max |b| (and b is not all zero, or the comparison proves nothing)."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((actual - expected).abs().max()) <= rel * scale


def _input(m, img):
    return m.preprocess(img).requires_grad_(True)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CAPTUM_CASES))
def test_saliency_matches_captum(name):
    m = model_for_captum(name)
    img = random_image(m.input_size, m.input_size, seed=1)
    e = saliency(m, img, 7)
    ref = Saliency(m.module).attribute(_input(m, img), target=7, abs=True).detach()
    assert_close_rel(e.raw.abs(), ref)
    assert_close_rel(e.map, ref[0].amax(0))
    assert hook_count(m.module) == 0


def _googlenet_is_functional(name, fn):
    if name == "googlenet":
        with pytest.raises(FunctionalReLUError, match="F.relu"):
            fn()
        return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CAPTUM_CASES))
def test_guided_backprop_matches_captum(name):
    m = model_for_captum(name)
    img = random_image(m.input_size, m.input_size, seed=2)
    x = _input(m, img)
    ref = GuidedBackprop(m.module).attribute(x, target=3).detach()
    if _googlenet_is_functional(name, lambda: guided_backprop(m, img, 3)):
        # captum only overrides nn.ReLU modules; GoogLeNet has none (BasicConv2d calls F.relu),
        # so captum silently returns the plain gradient: the wrong map vizkit refuses to give.
        plain = Saliency(m.module).attribute(_input(m, img), target=3, abs=False).detach()
        torch.testing.assert_close(ref, plain)
        return
    e = guided_backprop(m, img, 3)
    assert_close_rel(e.raw, ref)
    assert_close_rel(e.map, ref[0].abs().amax(0))
    plain = saliency(m, img, 3).raw
    assert not torch.allclose(e.raw, plain, atol=1e-3 * float(plain.abs().max()))
    assert hook_count(m.module) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CAPTUM_CASES))
def test_deconvnet_matches_captum(name):
    m = model_for_captum(name)
    img = random_image(m.input_size, m.input_size, seed=3)
    layer, channel = CAPTUM_CASES[name]
    if _googlenet_is_functional(name, lambda: deconvnet(m, img, layer, channel)):
        with pytest.raises(FunctionalReLUError):
            deconvnet(m, img, target=1)
        assert hook_count(m.module) == 0
        return
    # Class form: captum Deconvolution.
    e = deconvnet(m, img, target=1)
    ref = Deconvolution(m.module).attribute(_input(m, img), target=1).detach()
    assert_close_rel(e.raw, ref)
    assert_close_rel(e.map, ref[0].abs().amax(0))
    # Unit form: captum NeuronDeconvolution on the same unit, scaled by its activation.
    u = deconvnet(m, img, layer, channel)
    y, x = u.info["unit"]
    assert u.info["activation"] > 0
    neuron = NeuronDeconvolution(m.module, find_layer(m.module, layer))
    ref = neuron.attribute(_input(m, img), neuron_selector=(channel, y, x)).detach()
    assert_close_rel(u.raw, u.info["activation"] * ref)
    assert_close_rel(u.map, (u.info["activation"] * ref)[0].abs().amax(0))
    assert hook_count(m.module) == 0


class _ReLU6Rule(torch.autograd.Function):
    """The oracle, written apart from vizkit's hooks: ReLU6 forward, a rule's backward."""

    @staticmethod
    def forward(ctx, x, gate):
        ctx.save_for_backward(x)
        ctx.gate = gate
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad = grad.clamp(min=0)  # both rules rectify the backward signal
        if ctx.gate == "linear":
            grad = grad * ((x > 0) & (x < 6))
        elif ctx.gate == "positive":
            grad = grad * (x > 0)
        return grad, None


class _RuleModule(nn.Module):
    def __init__(self, gate):
        super().__init__()
        self.gate = gate

    def forward(self, x):
        return _ReLU6Rule.apply(x, self.gate)


def _with_rule(module: nn.Module, gate: str | None) -> nn.Module:
    net = copy.deepcopy(module)
    for name, sub in list(net.named_modules()):
        if isinstance(sub, nn.ReLU6):
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, _RuleModule(gate))
    return net


@pytest.mark.slow
def test_relu6_rules_on_efficientnet_lite0():
    """Deconvnet rectifies the backward signal; guided backprop also gates on 0 < x < 6. The
    trained network on the cat photo saturates some ReLU6 units, so the upper gate matters."""
    name = "efficientnet_lite0"
    m = load_model(name, device="cpu") if weights_available(name) else zoo_model(name)
    img = load_image(ROOT / "assets" / "samples" / "chelsea.png")
    target = 285  # Egyptian cat
    x = m.preprocess(img)

    def oracle(gate):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_with_rule(m.module, gate)(xi)[0, target], xi)
        return g

    guided = guided_backprop(m, img, target)
    assert_close_rel(guided.raw, oracle("linear"))
    relu_only = oracle("positive")  # a gate that forgets ReLU6's upper clip
    assert not torch.allclose(guided.raw, relu_only, atol=1e-3 * float(relu_only.abs().max()))
    assert_close_rel(deconvnet(m, img, target=target).raw, oracle(None))
    assert hook_count(m.module) == 0
