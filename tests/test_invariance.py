"""Invariance curves: zero at the identity, hand-computed distances, rotational symmetry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support import random_image
from vizkit.analyses.invariance import TRANSFORMS, invariance, invariance_figure, transform_image
from vizkit.core.hooks import hook_count


def _relu_features(tiny, img):
    x = tiny.preprocess(img)
    with torch.no_grad():
        low, high = tiny.module[:2](x), tiny.module[:5](x)
        p = torch.softmax(tiny.module(x), 1)[0]
    return low.flatten().double().numpy(), high.flatten().double().numpy(), p.double().numpy()


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_identity_gives_zero_distance_and_hand_checked_curves(tiny, transform):
    img = random_image(16, 16, seed=3)
    values = {"translate_x": [-3, 0, 2], "translate_y": [0, 4, -1], "scale": [0.7, 1.0, 1.3],
              "rotate": [0, 30, 90]}[transform]
    r = invariance(tiny, img, transform, values, layers=["relu1", "relu2"], target=1)
    identity = values.index(1.0 if transform == "scale" else 0)
    assert r.distances["relu1"][identity] == 0.0 and r.distances["relu2"][identity] == 0.0
    low0, high0, p0 = _relu_features(tiny, img)
    fill = [255 * c for c in tiny.spec.mean]
    for i, v in enumerate(values):
        low, high, p = _relu_features(tiny, transform_image(img, transform, v, fill))
        d_low, d_high = np.linalg.norm(low - low0), np.linalg.norm(high - high0)
        np.testing.assert_allclose(r.distances["relu1"][i], d_low, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r.distances["relu2"][i], d_high, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r.probability[i], p[1], rtol=1e-5)
    assert (r.distances["relu1"] > 0).sum() == 2
    assert hook_count(tiny.module) == 0


def test_translation_is_a_shift_with_the_mean_fill():
    img = random_image(16, 16, seed=4)
    out = transform_image(img, "translate_x", 3, [10, 20, 30])
    np.testing.assert_array_equal(out[:, 3:], img[:, :-3])
    assert (out[:, :3] == [10, 20, 30]).all()
    down = transform_image(img, "translate_y", -2, [0, 0, 0])
    np.testing.assert_array_equal(down[:-2], img[2:])


def _symmetric(size: int, fold: int) -> np.ndarray:
    """A synthetic image invariant to rotation by 360/fold degrees (fold 2 or 4), not by less."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (size, size, 3)).astype(np.float64)
    if fold == 2:
        sym = (a + np.rot90(a, 2)) / 2
    else:
        sym = sum(np.rot90(a, k) for k in range(4)) / 4
    return np.round(sym).astype(np.uint8)


def test_rotation_curves_follow_the_image_symmetry(tiny):
    values = [0, 45, 90, 135, 180, 225, 270, 315, 360]
    four = invariance(tiny, _symmetric(16, 4), "rotate", values, layers=["relu1", "relu2"])
    for name in ("relu1", "relu2"):
        d = four.distances[name]
        assert d[0] == d[2] == d[4] == d[6] == d[8] == 0.0  # every quarter turn is the identity
        assert d[1] > 0
        np.testing.assert_allclose(d[[1, 3, 5, 7]], d[1], rtol=1e-3)  # period 90°
    np.testing.assert_allclose(four.probability[[0, 2, 4, 6, 8]], four.probability[0], rtol=1e-6)

    two = invariance(tiny, _symmetric(16, 2), "rotate", values, layers=["relu1", "relu2"])
    for name in ("relu1", "relu2"):
        d = two.distances[name]
        assert d[0] == d[4] == d[8] == 0.0 and d[2] > 0  # a half turn is the identity, a quarter not
        assert d[2] == d[6]  # 270° = 90° after the half turn: the same image
        np.testing.assert_allclose(d[[5, 7]], d[[1, 3]], rtol=1e-3)  # period 180°
    np.testing.assert_allclose(two.probability[[4, 8]], two.probability[0], rtol=1e-6)


def test_figure_and_errors(tiny):
    r = invariance(tiny, random_image(16, 16), "scale", [0.5, 1.0, 2.0])
    fig = invariance_figure(r, "b")
    assert len(fig.data) == 3 and list(fig.data[0].x) == [0.5, 1.0, 2.0]
    assert r.layers == ("relu1", "relu2")  # first rectifier, the CAM layer
    with pytest.raises(ValueError, match="Unknown transform"):
        invariance(tiny, random_image(16, 16), "shear", [1.0])
    with pytest.raises(ValueError, match="outside"):
        invariance(tiny, random_image(16, 16), "rotate", [0], target=7)
    with pytest.raises(ValueError, match="Invalid"):
        invariance(tiny, random_image(16, 16), "scale", [0.0])
    assert hook_count(tiny.module) == 0
