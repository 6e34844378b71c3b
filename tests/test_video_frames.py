"""One-pass frame analysis (vizkit/video/frames.py) against the single-image functions, and
``LoadedModel.private_copy`` (vizkit/models/base.py): own hooks, flags and lock, shared weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support import random_image
from vizkit.core.hooks import capture_outputs, hook_count
from vizkit.methods.class_maps import cam, grad_cam
from vizkit.methods.layer_activations import activations
from vizkit.methods.prediction import predict
from vizkit.video.frames import INPUT, analyze_frame, cosine_similarity


@pytest.mark.slow
def test_every_part_equals_the_single_image_function(registry_model):
    m = registry_model
    img = random_image(40, 56, seed=3)  # not square, not the input size: preprocessing included
    layer = m.spec.cam_layer
    convs = m.conv_layers()
    r = analyze_frame(m, img, layer=layer, class_map="grad_cam", feature_layers=[INPUT, convs[0], convs[-1]])
    # top-5: predict's classes and probabilities
    want = predict(m, img, top=5)
    assert [m.classes[c] for c, _ in r.top] == [name for name, _ in want]
    assert [p for _, p in r.top] == pytest.approx([p for _, p in want], rel=1e-5, abs=1e-7)
    # channels: activations' maps and means
    acts = activations(m, img, layer)
    np.testing.assert_allclose(r.maps, acts.maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.channel_means, acts.mean, rtol=1e-4, atol=1e-6)
    # Grad-CAM of the top class: grad_cam's raw map
    g = grad_cam(m, img)
    assert g.target == r.class_map_target
    scale = float(np.abs(g.raw.numpy()).max()) or 1.0
    np.testing.assert_allclose(r.class_map, g.raw.numpy(), rtol=1e-4, atol=1e-5 * scale)
    # features: the layer outputs flattened, the input as preprocessed
    assert torch.equal(r.features[INPUT], m.preprocess(img)[0].flatten().cpu())
    assert r.features[convs[-1]].numel() > 0
    assert hook_count(m.module) == 0


@pytest.mark.slow
def test_cam_equals_cam_or_fails_the_same_way(registry_model):
    m = registry_model
    img = random_image(32, 32, seed=4)
    try:
        want = cam(m, img)
    except ValueError:
        with pytest.raises(ValueError, match="Use grad_cam instead"):
            analyze_frame(m, img, class_map="cam")
        return
    r = analyze_frame(m, img, class_map="cam")
    scale = float(np.abs(want.raw.numpy()).max()) or 1.0
    np.testing.assert_allclose(r.class_map, want.raw.numpy(), rtol=1e-4, atol=1e-5 * scale)


def test_bad_arguments_name_the_fix(tiny):
    img = random_image(16, 16)
    with pytest.raises(ValueError, match="Unknown layer 'nope'"):
        analyze_frame(tiny, img, layer="nope")
    with pytest.raises(ValueError, match="Unknown class map"):
        analyze_frame(tiny, img, class_map="occlusion")
    assert hook_count(tiny.module) == 0


def test_cosine_similarity():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 0.0, -1.0])
    want = float(np.dot(a.numpy(), b.numpy()) / (np.linalg.norm(a.numpy()) * np.linalg.norm(b.numpy())))
    assert cosine_similarity(a, b) == pytest.approx(want)
    assert cosine_similarity(a, 3 * a) == pytest.approx(1.0)
    assert cosine_similarity(torch.zeros(3), torch.zeros(3)) == 1.0
    assert cosine_similarity(torch.zeros(3), a) == 0.0


# ---------------------------------------------------------------- private copies


@pytest.mark.slow
def test_private_copy_shares_weights_but_not_hooks_flags_or_lock(registry_model):
    m = registry_model
    c = m.private_copy()
    assert c.lock is not m.lock and c.spec is m.spec
    for (n1, p1), (n2, p2) in zip(m.module.named_parameters(), c.module.named_parameters(), strict=True):
        assert n1 == n2 and p1 is not p2 and p1.data_ptr() == p2.data_ptr()
    for (_, b1), (_, b2) in zip(m.module.named_buffers(), c.module.named_buffers(), strict=True):
        assert b1.data_ptr() == b2.data_ptr()
    layer = m.spec.cam_layer
    img = random_image(32, 32, seed=5)
    first = next(iter(m.module.parameters()))
    flag = first.requires_grad
    try:
        # what a method does to the shared model while it holds the lock: hooks, flags
        with capture_outputs(m.module, [layer]):
            first.requires_grad_(False)
            assert hook_count(m.module) == 1 and hook_count(c.module) == 0
            assert all(p.requires_grad for p in c.module.parameters())
            r = analyze_frame(c, img, layer=layer, class_map="grad_cam")
    finally:
        first.requires_grad_(flag)
    want = grad_cam(m, img)
    scale = float(np.abs(want.raw.numpy()).max()) or 1.0
    np.testing.assert_allclose(r.class_map, want.raw.numpy(), rtol=1e-4, atol=1e-5 * scale)
    assert not c.module.training


def test_private_copy_on_the_tiny_model(tiny):
    img = random_image(16, 16)
    c = tiny.private_copy()
    with capture_outputs(tiny.module, ["conv2"]):
        r = analyze_frame(c, img, layer="conv2", class_map="cam")
    want = cam(tiny, img)
    np.testing.assert_allclose(r.class_map, want.raw.numpy(), rtol=1e-5, atol=1e-7)
    assert hook_count(c.module) == 0 and hook_count(tiny.module) == 0


def test_private_copy_sees_weights_loaded_later(tiny):
    c = tiny.private_copy()
    with torch.no_grad():
        tiny.module.fc.bias.add_(1.0)
    assert torch.equal(c.module.fc.bias, tiny.module.fc.bias)
