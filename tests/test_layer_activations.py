"""vizkit/methods/layer_activations.py: feature maps and per-channel statistics, by hand and
against plain forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backprop import hand_forward

from support import HAND_IMAGE, random_image, zoo_model
from vizkit.core.hooks import hook_count
from vizkit.methods.layer_activations import activations


def test_activations_by_hand(hand_cnn):
    _, pool, relu, _ = hand_forward(HAND_IMAGE.transpose(2, 0, 1).astype(np.float64))
    a = activations(hand_cnn, HAND_IMAGE, "relu")
    np.testing.assert_allclose(a.maps, relu, atol=1e-4)
    np.testing.assert_allclose(a.mean, relu.mean((1, 2)), atol=1e-4)
    np.testing.assert_allclose(a.max, relu.max((1, 2)), atol=1e-4)
    np.testing.assert_allclose(a.active, (relu > 0).mean((1, 2)))
    assert a.top_channels.tolist() == list(np.argsort(-relu.mean((1, 2)), kind="stable"))
    assert a.layer == "relu" and a.maps.dtype == np.float32
    # pool comes before the in-place ReLU: its map keeps the negative value (not rectified later).
    p = activations(hand_cnn, HAND_IMAGE, "pool")
    np.testing.assert_allclose(p.maps, pool, atol=1e-4)
    assert hook_count(hand_cnn.module) == 0


def test_vector_layer_and_errors(hand_cnn):
    fc = activations(hand_cnn, HAND_IMAGE, "fc")
    assert fc.maps.shape == (2, 1, 1)
    np.testing.assert_allclose(fc.maps[:, 0, 0], [13.0, -0.5], atol=1e-4)
    assert fc.top_channels.tolist() == [0, 1] and fc.active.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="Did you mean 'pool'"):
        activations(hand_cnn, HAND_IMAGE, "pol")


def test_inplace_relu_does_not_rectify_the_layer_before():
    m = zoo_model("fashion-zf")
    img = random_image(64, 64)
    bn = activations(m, img, "features.bn1")   # followed by ReLU(inplace=True)
    with torch.no_grad():
        f = m.module.features
        expected = f.bn1(f.conv1(m.preprocess(img)))[0].numpy()
    np.testing.assert_allclose(bn.maps, expected, rtol=1e-5, atol=1e-5)
    assert (bn.maps < 0).any()
    assert all(sub.inplace for sub in m.module.modules() if hasattr(sub, "inplace"))


@pytest.mark.slow
def test_reused_relu_shows_its_last_call():
    """torchvision ResNet calls one ReLU module twice per block: the last call is the block output."""
    m = zoo_model("resnet18")
    img = random_image(224, 224)
    relu = activations(m, img, "layer1.0.relu")
    block = activations(m, img, "layer1.0")
    np.testing.assert_array_equal(relu.maps, block.maps)
