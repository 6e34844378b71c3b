"""8-bit changes (vizkit/methods/occlusion/int8.py) against float32: per-row scaling, zero rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vizkit.methods.occlusion.int8 import Int8Kernels, available, quantize_rows

pytestmark = pytest.mark.skipif(not available(torch.device("cpu")),
                                reason="oneDNN's quantized kernels are not in this build")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per row (batch element): ||ours - reference|| / ||reference||."""
    return (ours - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)


def test_quantize_rows_round_trips_within_half_a_level():
    x = torch.randn(3, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    x[1] *= 1e-6  # a weak row keeps its own scale
    x[2] = 0
    q, scale = quantize_rows(x)
    assert q.dtype == torch.uint8 and q.is_contiguous(memory_format=torch.channels_last)
    back = (q.float() - 128) * scale
    assert torch.all((back - x).abs() <= 0.5 * scale + 1e-12)
    assert torch.equal(back[2], torch.zeros_like(back[2]))
    peak = x.flatten(1).abs().amax(1)
    assert torch.allclose(scale.flatten()[:2], peak[:2] / 127)


@pytest.mark.parametrize(("cin", "cout", "groups", "stride", "padding"),
                         [(64, 96, 1, 1, (1, 1)), (64, 64, 2, 1, (1, 1)), (16, 24, 1, 2, (0, 0))])
def test_conv_of_a_change_is_within_two_percent(cin, cout, groups, stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=padding, groups=groups)
    delta = torch.randn(4, cin, 11, 11)
    delta[1] *= 1e-5
    delta[3] = 0
    kernels = Int8Kernels()
    with torch.inference_mode():
        ours = kernels.conv2d(delta, conv, padding)
        reference = F.conv2d(delta, conv.weight, None, stride, padding, 1, groups)
    assert ours is not None and ours.shape == reference.shape
    assert torch.all(relative_error(ours[:3], reference[:3]) < 0.02)
    assert torch.equal(ours[3], torch.zeros_like(ours[3]))


def test_linear_of_a_change_is_within_two_percent():
    torch.manual_seed(1)
    fc = nn.Linear(300, 40)
    delta = torch.randn(5, 300)
    delta[2] *= 1e-4
    with torch.inference_mode():
        ours = Int8Kernels().linear(delta, fc)
    assert torch.all(relative_error(ours, delta @ fc.weight.T) < 0.02)


def test_packed_weights_follow_in_place_changes():
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    delta = torch.randn(2, 8, 6, 6)
    kernels = Int8Kernels()
    with torch.inference_mode():
        before = kernels.conv2d(delta, conv, (1, 1))
    with torch.no_grad():
        conv.weight.mul_(-2.0)
    with torch.inference_mode():
        after = kernels.conv2d(delta, conv, (1, 1))
        reference = F.conv2d(delta, conv.weight, None, 1, 1)
    assert torch.all(relative_error(after, reference) < 0.02)
    assert torch.allclose(after, -2 * before, rtol=0.05, atol=1e-3 * before.abs().max().item())


def test_tiny_reductions_are_left_to_float():
    """A depthwise 3×3 or a 3-channel first layer sums too few products for 8 bits to pay."""
    kernels = Int8Kernels()
    with torch.inference_mode():
        assert kernels.conv2d(torch.randn(2, 8, 5, 5), nn.Conv2d(8, 8, 3, groups=8), (0, 0)) is None
        assert kernels.conv2d(torch.randn(2, 3, 5, 5), nn.Conv2d(3, 16, 3), (0, 0)) is None
