"""Deletion/insertion curves against a per-step numpy/OpenCV re-implementation and hand-set models."""

from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from support import TINY_SPEC, random_image
from vizkit.metrics.faithfulness import deletion_insertion
from vizkit.models.registry import wrap_module


def reference_curves(m, img, attribution, target, steps):
    """Step by step, one image at a time: numpy masks, OpenCV blur, a plain forward."""
    size = m.input_size
    pixels = m.resize(img).astype(np.float64) / 255
    sigma = max(1.0, 5.0 * size / 224)
    k = int(2 * round(2 * sigma) + 1)
    canvas = cv2.GaussianBlur(pixels, (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)
    order = np.argsort(-attribution.ravel(), kind="stable")
    mean, std = np.array(m.spec.mean), np.array(m.spec.std)

    def prob(x):
        t = torch.from_numpy(((x - mean) / std).transpose(2, 0, 1)).float().unsqueeze(0)
        with torch.no_grad():
            return float(torch.softmax(m.module(t), 1)[0, target])

    deletion, insertion = [], []
    for step in range(steps + 1):
        count = int(round(step * size * size / steps))
        mask = np.zeros(size * size, bool)
        mask[order[:count]] = True
        mask = mask.reshape(size, size, 1)
        deletion.append(prob(np.where(mask, 0.0, pixels)))
        insertion.append(prob(np.where(mask, pixels, canvas)))
    return np.array(deletion), np.array(insertion)


def test_curves_match_a_stepwise_reference(tiny):
    img = random_image(16, 16, seed=3)
    attribution = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    out = deletion_insertion(tiny, img, attribution, target=1, steps=8, batch_size=3)
    ref_del, ref_ins = reference_curves(tiny, img, attribution, 1, 8)
    np.testing.assert_allclose(out.deletion, ref_del, atol=1e-5)
    np.testing.assert_allclose(out.insertion, ref_ins, atol=2e-3)  # blur kernels differ slightly
    np.testing.assert_allclose(out.fractions, np.arange(9) / 8)
    assert out.deletion_auc == pytest.approx(np.trapezoid(out.deletion, out.fractions))
    assert out.insertion_auc == pytest.approx(np.trapezoid(out.insertion, out.fractions))
    assert out.target == 1


def region_model():
    """logit 0 = 50 × mean red of the top-left 4×4 corner, logit 1 = 0: a known important region."""
    net = nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc", nn.Linear(3 * 16 * 16, 2))]))
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.zero_()
        w = torch.zeros(3, 16, 16)
        w[0, :4, :4] = 50.0 / 16
        net.fc.weight[0] = w.flatten()
    return wrap_module(net, TINY_SPEC.__class__(**{**TINY_SPEC.__dict__, "classes": ("on", "off")}), "cpu")


def test_the_true_region_is_more_faithful_than_its_opposite():
    m = region_model()
    img = random_image(16, 16, seed=2)
    good = np.zeros((16, 16), np.float32)
    good[:4, :4] = 1.0
    right = deletion_insertion(m, img, good, target=0, steps=16)
    wrong = deletion_insertion(m, img, -good, target=0, steps=16)
    # p(class 0) never drops below 0.5 here (logit 1 is 0): 0.5 is the floor of both curves
    assert right.deletion_auc < wrong.deletion_auc - 0.3
    assert right.insertion_auc > wrong.insertion_auc
    # deleting the 16 corner pixels (1/16 of the image, first step) zeroes the logit: p = 0.5
    assert right.deletion[1] == pytest.approx(0.5, abs=1e-6)
    red = img[:4, :4, 0].mean() / 255
    assert right.deletion[0] == pytest.approx(1 / (1 + np.exp(-50 * red)), abs=1e-6)


def test_top_prediction_is_the_default_target(tiny):
    img = random_image(16, 16, seed=5)
    with torch.no_grad():
        top = int(tiny.module(tiny.preprocess(img)).argmax())
    assert deletion_insertion(tiny, img, np.ones((16, 16)), steps=2).target == top


def test_bad_inputs_are_rejected_and_the_model_is_untouched(tiny):
    img = random_image(16, 16)
    with pytest.raises(ValueError, match="outside"):
        deletion_insertion(tiny, img, np.zeros((16, 16)), target=7)
    with pytest.raises(ValueError, match="16×16"):
        deletion_insertion(tiny, img, np.zeros((8, 8)), target=0)
    deletion_insertion(tiny, img, np.zeros((16, 16)), target=0, steps=2)
    assert not tiny.module.training
    for module in tiny.module.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    assert all(p.grad is None for p in tiny.module.parameters())
