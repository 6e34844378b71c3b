"""cam.py: CAM, Grad-CAM, Grad-CAM++ by hand, against captum, and CAM ∝ Grad-CAM on GAP heads."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from test_deconvnet import CAPTUM_CASES, assert_close_rel, hand_forward, model_for_captum

from support import HAND_FC_W, HAND_IMAGE, random_image, zoo_model
from vizkit.core.hooks import find_layer, hook_count
from vizkit.methods.class_maps import cam, grad_cam, grad_cam_pp


def hand_relu_maps():
    return hand_forward(HAND_IMAGE.transpose(2, 0, 1).astype(np.float64))[2]   # 2×2×2, after ReLU


def upsample_like_cv2(raw: np.ndarray, size: int) -> np.ndarray:
    """Bilinear with half-pixel centres (align_corners=False), computed by OpenCV."""
    return cv2.resize(raw.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("c", [0, 1])
def test_cam_and_grad_cam_by_hand(hand_cnn, c):
    acts = hand_relu_maps()
    class_map = np.einsum("k,kij->ij", HAND_FC_W[c], acts)        # Zhou et al.: Σ_k w_k^c A_k
    e = cam(hand_cnn, HAND_IMAGE, c)
    np.testing.assert_allclose(e.raw.numpy(), np.maximum(class_map, 0), atol=1e-4)
    np.testing.assert_allclose(e.map, upsample_like_cv2(np.maximum(class_map, 0), 4), atol=1e-4)
    assert e.layer == "relu" and e.info["head"] == "fc" and e.map.shape == (4, 4)
    # Grad-CAM: α_k = mean_ij ∂S/∂A_k^ij = w_k^c / 4 here.
    g = grad_cam(hand_cnn, HAND_IMAGE, c)
    np.testing.assert_allclose(g.raw.numpy(), np.maximum(class_map / 4, 0), atol=1e-4)
    np.testing.assert_allclose(g.map, upsample_like_cv2(np.maximum(class_map / 4, 0), 4), atol=1e-4)


@pytest.mark.parametrize("c", [0, 1])
def test_grad_cam_pp_by_hand(hand_cnn, c):
    acts = hand_relu_maps()
    weights = []
    for k in range(2):
        g = HAND_FC_W[c, k] / 4   # the same gradient at every position
        if g <= 0:                # ReLU(g) = 0; for c=0, k=1 the denominator is 0 too (2/16 - 8/64)
            weights.append(0.0)
            continue
        alpha = g**2 / (2 * g**2 + acts[k].sum() * g**3)
        weights.append(4 * alpha * g)
    expected = np.maximum(np.einsum("k,kij->ij", weights, acts), 0)
    e = grad_cam_pp(hand_cnn, HAND_IMAGE, c)
    np.testing.assert_allclose(e.raw.numpy(), expected, rtol=1e-5, atol=1e-6)
    if c == 0:
        assert expected.max() > 0


def _resnet_layer4(net, x):
    """ResNet-18 up to layer4, by calling its submodules (no hooks)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fashion-zf", "resnet18"])
def test_grad_cam_pp_against_a_hookless_forward(name):
    m = model_for_captum(name)
    img = random_image(m.input_size, m.input_size, seed=5)
    x = m.preprocess(img)
    net = m.module
    with torch.enable_grad():
        acts = net.features(x) if name == "fashion-zf" else _resnet_layer4(net, x)
        logits = net.fc(torch.flatten(net.avgpool(acts), 1))
        (grad,) = torch.autograd.grad(logits[0, 2], acts)
    a, g = acts.detach().double()[0], grad.double()[0]
    # Chattopadhyay et al. 2018, eq. 19 (as in pytorch-grad-cam).
    alpha = g**2 / (2 * g**2 + a.sum((1, 2), keepdim=True) * g**3)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    w = (alpha * g.clamp(min=0)).sum((1, 2))
    expected = torch.einsum("k,kij->ij", w, a).clamp(min=0)
    e = grad_cam_pp(m, img, 2)
    assert_close_rel(e.raw, expected)
    assert e.layer == m.spec.cam_layer


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CAPTUM_CASES))
def test_grad_cam_matches_captum(name):
    m = model_for_captum(name)
    img = random_image(m.input_size, m.input_size, seed=4)
    layer = m.spec.cam_layer
    x = m.preprocess(img)
    gc = LayerGradCam(m.module, find_layer(m.module, layer))
    # A seeded random net may give an all-negative map for a class (Grad-CAM = 0 everywhere):
    # those must match too, but the scaled comparison needs a class with a non-zero map.
    for target in (5, 0, 1, 2, 3):
        ref = gc.attribute(x, target=target, relu_attributions=True).detach()
        e = grad_cam(m, img, target)
        assert e.layer == layer and e.target == target
        if ref.abs().max() > 0:
            break
        assert float(e.raw.abs().max()) == 0.0
    assert_close_rel(e.raw, ref[0, 0])
    up = LayerAttribution.interpolate(ref, (m.input_size, m.input_size), interpolate_mode="bilinear")
    assert_close_rel(e.map, up[0, 0])
    assert e.map.shape == (m.input_size, m.input_size)
    assert hook_count(m.module) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fashion-zf", "resnet18"])
def test_cam_is_grad_cam_up_to_a_positive_scale(name):
    m = model_for_captum(name)
    img = random_image(m.input_size, m.input_size, seed=6)
    for target in (None, 4):
        c, g = cam(m, img, target), grad_cam(m, img, target)
        assert c.target == g.target
        h, w = c.raw.shape
        # Grad-CAM's α_k = w_k^c / (h·w) on a GAP + linear head: CAM = h·w · Grad-CAM.
        assert_close_rel(c.raw, g.raw * (h * w))
        assert_close_rel(c.map, g.map * (h * w))


@pytest.mark.slow
def test_cam_refuses_models_without_a_gap_linear_head(hand_cnn):
    m = zoo_model("alexnet")
    with pytest.raises(ValueError, match="global-average-pooling.*Use grad_cam"):
        cam(m, random_image(64, 64), 1)
    with pytest.raises(ValueError, match="global-average-pooling"):
        cam(hand_cnn, HAND_IMAGE, 0, layer="conv")    # 2 channels, but pooling + ReLU follow it
    with pytest.raises(ValueError, match="callable"):
        cam(hand_cnn, HAND_IMAGE, lambda logits: logits[:, 0])
    assert hook_count(m.module) == 0 and hook_count(hand_cnn.module) == 0


def test_layer_and_target_errors(hand_cnn):
    with pytest.raises(ValueError, match="Did you mean 'relu'"):
        grad_cam(hand_cnn, HAND_IMAGE, 0, layer="rel")
    with pytest.raises(ValueError, match="N×C×H×W"):
        grad_cam(hand_cnn, HAND_IMAGE, 0, layer="fc")
    for fn in (cam, grad_cam, grad_cam_pp):
        with pytest.raises(ValueError, match="outside this model's 2 classes"):
            fn(hand_cnn, HAND_IMAGE, 5)
    assert hook_count(hand_cnn.module) == 0


def test_grad_cam_top_prediction_and_other_layer(hand_cnn):
    top = grad_cam(hand_cnn, HAND_IMAGE)
    assert top.target == 0   # logits (13, -0.5)
    pooled = grad_cam(hand_cnn, HAND_IMAGE, 1, layer="pool")
    assert pooled.layer == "pool" and pooled.raw.shape == (2, 2)


def test_public_name_is_the_function_after_the_submodule_import():
    import vizkit
    import vizkit.methods.class_maps  # noqa: F401

    assert vizkit.cam is cam
