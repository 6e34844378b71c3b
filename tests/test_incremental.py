"""vizkit/methods/occlusion/incremental.py: exact incremental inference (Krypton) equals full
inference on odd geometries, on every op it handles and on every registry model; unknown ops run
in full, untraceable models fall back to full inference; the projective-field cap."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_occlusion import all_ops_model, assert_close_map, captum_occlusion, resized, smooth_case
from torch import nn

import vizkit.methods.occlusion.incremental as incremental
from support import TINY_SPEC, make_tiny_cnn, random_image
from vizkit.methods.occlusion.sensitivity import occlusion
from vizkit.models.registry import wrap_module


@pytest.mark.parametrize(
    ("size", "patch", "stride"),
    [(32, 5, 3), (37, 8, 5), (29, 29, 29), (24, 3, 1), (33, 10, 10), (40, 7, 2)],
)
def test_exact_equals_full_on_odd_geometry(size, patch, stride):
    """Patch larger than stride, stride not dividing the size, patch at the border, patch = image."""
    m = all_ops_model(size)
    img = random_image(size, size, seed=size)
    logit = lambda logits: logits[:, 0]  # probabilities of a tiny random net barely move
    full = occlusion(m, img, logit, patch=patch, stride=stride, mode="full", layer="avg")
    exact = occlusion(m, img, logit, patch=patch, stride=stride, mode="exact", layer="avg")
    assert_close_map(exact.map, full.map, clean=full.info["clean_probability"])
    assert_close_map(exact.info["feature_map"], full.info["feature_map"],
                     clean=full.info["feature_clean"])
    assert exact.info["nodes"]["incremental"] > 0


def test_all_ops_matches_captum():
    m = all_ops_model(30)
    img = random_image(30, 30, seed=9)
    ours = occlusion(m, img, target=lambda logits: logits[:, 2], patch=7, stride=4, baseline="zero")
    assert_close_map(ours.map, captum_occlusion(m, img, 2, 7, 4, "zero", "logit"))


@pytest.mark.slow
def test_exact_equals_full_on_registry_model(registry_model):
    """Every registry model (weights=None) at 96 px: probability grid and a deep feature's drop."""
    m = resized(registry_model, 96)
    img = random_image(96, 96, seed=2)
    kwargs = dict(target=lambda logits: logits[:, :10].sum(1), patch=20, stride=12,
                  layer=m.spec.cam_layer)
    full = occlusion(m, img, mode="full", **kwargs)
    exact = occlusion(m, img, mode="exact", **kwargs)
    assert exact.info["mode"] == "exact" and exact.info["nodes"]["incremental"] > 0
    assert_close_map(exact.info["feature_map"], full.info["feature_map"])
    scale = max(np.abs(full.map).max(), 1e-6)
    assert np.abs(exact.map - full.map).max() <= 1e-4 * scale


def test_unknown_op_runs_in_full_and_stays_exact():
    class WithNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.norm = nn.LocalResponseNorm(3)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.norm(F.relu(self.conv(x) * 2.0)).amax((2, 3)))

    torch.manual_seed(0)
    m = wrap_module(WithNorm(), dataclasses.replace(TINY_SPEC, input_size=20), device="cpu")
    img = random_image(20, 20, seed=1)
    logit = lambda logits: logits[:, 1]
    exact = occlusion(m, img, logit, patch=6, stride=4)
    full = occlusion(m, img, logit, patch=6, stride=4, mode="full")
    assert exact.info["nodes"]["full"] > 0
    assert_close_map(exact.map, full.map)


def test_untraceable_model_falls_back_to_full():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_tiny_cnn()

        def forward(self, x):
            return self.net(x) if x.sum() > -1e9 else -self.net(x)

    m = wrap_module(DataDependent(), TINY_SPEC, device="cpu")
    img = random_image(16, 16)
    ours = occlusion(m, img, target=0, patch=4, stride=4)
    assert ours.info["mode"] == "full" and "fallback" in ours.info
    assert_close_map(ours.map, captum_occlusion(m, img, 0, 4, 4, "mean"))


@pytest.mark.parametrize(("size", "patch", "stride"), [(32, 5, 3), (37, 8, 5), (40, 7, 2)])
def test_never_going_full_stays_exact(monkeypatch, size, patch, stride):
    """With no node ever recomputed in full (approximate mode's schedule), float32 changes
    through global pooling, flatten and linear layers still give full inference's map."""
    monkeypatch.setattr(incremental, "FULL_FRACTION", float("inf"))
    m, img, logit = smooth_case(size)
    full = occlusion(m, img, logit, patch=patch, stride=stride, mode="full")
    exact = occlusion(m, img, logit, patch=patch, stride=stride)
    assert exact.info["nodes"]["full"] == 0
    assert_close_map(exact.map, full.map, clean=full.info["clean_probability"])
    m = all_ops_model(size)
    img = random_image(size, size, seed=size)
    full = occlusion(m, img, logit, patch=patch, stride=stride, mode="full")
    exact = occlusion(m, img, logit, patch=patch, stride=stride)
    assert_close_map(exact.map, full.map, clean=full.info["clean_probability"])


def test_projective_field_cap_keeps_a_centred_box():
    """Krypton's thresholding (off by default, see CAP_FRACTION): a change is cut to a centred
    box of at most the given share of its map, and the positions' corners move with it."""
    m = all_ops_model(32)
    inc = incremental.IncrementalOcclusion(m.module, m.preprocess(random_image(32, 32)),
                                           cap_fraction=0.5)
    delta = torch.arange(2 * 10 * 9, dtype=torch.float32).view(2, 1, 10, 9)
    crop = incremental.Crop(delta, np.array([-1, 3]), np.array([0, 4]), 12, 12)
    capped = inc._cap(crop)
    assert (capped.h, capped.w) == (6, 6)
    assert capped.ys.tolist() == [1, 5] and capped.xs.tolist() == [1, 5]
    assert torch.equal(capped.delta, delta[:, :, 2:8, 1:7])


class ConvBnAct(nn.Module):
    """Convolution → BatchNorm → ReLU6 / ReLU / nothing, each the only reader of the one before,
    on maps small enough that a patch's box covers most of them (run in full, folded)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=True)
        self.bn2 = nn.BatchNorm2d(8)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 6, 1)
        self.bn3 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        return self.fc(self.bn3(self.conv3(x)).mean((2, 3)))


@pytest.mark.parametrize(("layer", "kept"),
                         [(None, None), ("conv2", "conv2"), ("bn2", "conv2"), ("bn3", None)])
def test_convolution_batchnorm_activation_fold_exactly_in_full(monkeypatch, layer, kept):
    """Run in full, a convolution with the BatchNorm (and ReLU6/ReLU) after it is one
    convolution with folded weights: the map and a watched feature's drop equal full
    inference's (a watched convolution, or BatchNorm before an activation, is not folded away)."""
    torch.manual_seed(3)
    net = ConvBnAct()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2, net.bn3):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.3, 3.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    m = wrap_module(net, dataclasses.replace(TINY_SPEC, input_size=12), device="cpu")
    folded = []
    fused_full = incremental.IncrementalOcclusion._fused_full

    def spy(self, node, x, absorbed):
        out = fused_full(self, node, x, absorbed)
        folded.append((node.name, out is not None))
        return out

    monkeypatch.setattr(incremental.IncrementalOcclusion, "_fused_full", spy)
    img = random_image(12, 12, seed=4)
    logit = lambda logits: logits[:, 1]
    kwargs = dict(patch=8, stride=2, layer=layer)
    full = occlusion(m, img, logit, mode="full", **kwargs)
    exact = occlusion(m, img, logit, **kwargs)
    assert any(done for _, done in folded)
    if kept is not None:  # a watched node inside a fold keeps its value: not folded
        assert (kept, True) not in folded and (kept, False) in folded
    if layer is not None:  # (a watched last node of a fold is the fold's value)
        assert_close_map(exact.info["feature_map"], full.info["feature_map"],
                         clean=full.info["feature_clean"])
    assert_close_map(exact.map, full.map, clean=full.info["clean_probability"])
