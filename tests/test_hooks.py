"""hooks.py: capture, state guard, rectifier overrides (hand-computed expectations)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from vizkit.core.hooks import (
    FunctionalReLUError,
    capture_outputs,
    find_layer,
    hook_count,
    no_inplace,
    preserve_state,
    rectifier_override,
)


def test_find_layer_lists_valid_names(tiny):
    assert find_layer(tiny.module, "conv2") is tiny.module.conv2
    with pytest.raises(ValueError, match="Did you mean 'conv2'.*Valid layers: conv1, relu1"):
        find_layer(tiny.module, "conv_2")


def test_capture_outputs_matches_manual_forward(tiny):
    x = torch.randn(1, 3, 16, 16)
    with capture_outputs(tiny.module, ["conv1", "relu2"]) as acts:
        logits = tiny.module(x)
    net = tiny.module
    conv1 = net.conv1(x)
    relu2 = F.relu(net.conv2(net.pool1(F.relu(conv1))))
    torch.testing.assert_close(acts["conv1"], conv1)
    torch.testing.assert_close(acts["relu2"], relu2)
    assert acts.calls == {"conv1": 1, "relu2": 1}
    # The stored activation stays in the graph: d logit / d relu2 = fc.weight / (h*w).
    (grad,) = torch.autograd.grad(logits[0, 1], acts["relu2"])
    expected = (net.fc.weight[1] / relu2[0, 0].numel()).view(1, -1, 1, 1).expand_as(grad)
    torch.testing.assert_close(grad, expected)
    assert hook_count(net) == 0


def test_capture_is_immune_to_later_inplace_ops():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1, bias=False)

        def forward(self, x):
            return F.relu(self.conv(x), inplace=True).sum()

    net = Net()
    nn.init.constant_(net.conv.weight, 1.0)
    x = torch.tensor([[[[-1.0, 2.0]]]])
    with capture_outputs(net, ["conv"]) as acts:
        out = net(x)
    assert acts["conv"].tolist() == [[[[-1.0, 2.0]]]]
    assert out.item() == 2.0
    with capture_outputs(net, ["conv"], detach=True) as snap:
        net(x)
    assert snap["conv"].tolist() == [[[[-1.0, 2.0]]]] and not snap["conv"].requires_grad


def test_capture_stop_ends_forward_early(tiny):
    seen = []
    handle = tiny.module.fc.register_forward_hook(lambda *a: seen.append(1))
    try:
        with capture_outputs(tiny.module, ["pool1"], stop=True) as acts:
            tiny.module(torch.randn(1, 3, 16, 16))
            pytest.fail("the forward should have stopped")
    finally:
        handle.remove()
    assert acts["pool1"].shape == (1, 4, 8, 8) and seen == []
    assert hook_count(tiny.module) == 0


def test_capture_counts_reused_module_and_keeps_last_call():
    relu = nn.ReLU()
    net = nn.Module()
    net.relu = relu
    x = torch.tensor([-1.0, 3.0])
    with capture_outputs(net, ["relu"]) as acts:
        net.relu(net.relu(x) - 2)
    assert acts.calls["relu"] == 2 and acts["relu"].tolist() == [0.0, 1.0]


def test_preserve_state_restores_everything_after_an_error(tiny):
    net = tiny.module
    net.fc.weight.grad = torch.ones_like(net.fc.weight)
    grad_before = net.fc.weight.grad
    net.relu1.inplace = True
    with pytest.raises(RuntimeError, match="boom"), preserve_state(net):
        net.train()
        net.relu1.inplace = False
        for p in net.parameters():
            p.requires_grad_(False)
            p.grad = None
        net.conv1.register_forward_hook(lambda *a: None)
        net.conv2.register_forward_pre_hook(lambda *a: None)
        raise RuntimeError("boom")
    assert not any(mod.training for mod in net.modules())
    assert net.relu1.inplace is True
    assert all(p.requires_grad for p in net.parameters())
    assert net.fc.weight.grad is grad_before
    assert hook_count(net) == 0


def test_no_inplace_restores_flags():
    net = nn.Sequential(nn.ReLU(inplace=True), nn.ReLU(), nn.Dropout(inplace=True))
    with pytest.raises(KeyError), no_inplace(net):
        assert [m.inplace for m in net] == [False, False, False]
        raise KeyError
    assert [m.inplace for m in net] == [True, False, True]


def _two_relu_net():
    """y = sum(w2 * relu(w1 * x)) with hand-set weights on 1×1×1×3 inputs."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(1, 1, 1, bias=False))
    nn.init.constant_(net[0].weight, 2.0)
    nn.init.constant_(net[2].weight, -1.0)
    return net


@pytest.mark.parametrize(("rule", "expected"), [
    (None, [0.0, -2.0, -2.0]),       # plain gradient: w1 * 1[w1 x > 0] * w2
    ("guided", [0.0, 0.0, 0.0]),     # negative signal stopped at the ReLU
    ("deconvnet", [0.0, 0.0, 0.0]),
])
def test_rectifier_rules_by_hand_negative_signal(rule, expected):
    net = _two_relu_net()
    x = torch.tensor([[[[-1.0, 1.0, 3.0]]]], requires_grad=True)
    if rule is None:
        (g,) = torch.autograd.grad(net(x).sum(), x)
    else:
        with rectifier_override(net, rule):
            (g,) = torch.autograd.grad(net(x).sum(), x)
    assert g.flatten().tolist() == expected
    assert hook_count(net) == 0 and net[1].inplace is True


@pytest.mark.parametrize(("rule", "expected"), [
    ("guided", [0.0, 2.0, 2.0]),       # positive signal, gated by the forward ReLU mask
    ("deconvnet", [2.0, 2.0, 2.0]),    # positive signal, no forward mask (Zeiler & Fergus)
])
def test_rectifier_rules_by_hand_positive_signal(rule, expected):
    net = _two_relu_net()
    nn.init.constant_(net[2].weight, 1.0)
    x = torch.tensor([[[[-1.0, 1.0, 3.0]]]], requires_grad=True)
    with rectifier_override(net, rule):
        (g,) = torch.autograd.grad(net(x).sum(), x)
    assert g.flatten().tolist() == expected


def test_rectifier_override_relu6_guided_mask():
    net = nn.Sequential(nn.ReLU6())
    x = torch.tensor([-1.0, 3.0, 7.0], requires_grad=True)
    with rectifier_override(net, "guided"):
        (g,) = torch.autograd.grad(net(x).sum(), x)
    assert g.tolist() == [0.0, 1.0, 0.0]


def test_functional_relu_is_an_error_not_a_wrong_map():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return F.relu(self.conv(x), inplace=True)

    net = Functional()
    with pytest.raises(FunctionalReLUError, match="F.relu"), rectifier_override(net, "guided"):
        net(torch.randn(1, 1, 2, 2))
    assert hook_count(net) == 0
    with pytest.raises(ValueError, match="Unknown rule"), rectifier_override(net, "guess"):
        pass


def test_reused_relu_is_overridden_at_each_call():
    relu = nn.ReLU(inplace=True)
    net = nn.Module()
    net.relu = relu
    x = torch.tensor([-1.0, 0.25, 3.0], requires_grad=True)

    def forward():
        return net.relu(net.relu(x) * 2 - 1).sum()   # second call's input: [-1, -0.5, 5]

    with no_inplace(net):
        (plain,) = torch.autograd.grad(forward(), x)
    with rectifier_override(net, "guided"):
        (guided,) = torch.autograd.grad(forward(), x)
    with rectifier_override(net, "deconvnet"):
        (deconv,) = torch.autograd.grad(forward(), x)
    assert plain.tolist() == [0.0, 0.0, 2.0] and guided.tolist() == [0.0, 0.0, 2.0]
    # Only if both calls are rectified without forward masks: [2, 2, 2] (one call only: [0, 2, 2]).
    assert deconv.tolist() == [2.0, 2.0, 2.0]
    assert relu.inplace is True and hook_count(net) == 0
