"""Correspondence analysis: Hamming distances against brute force, rectangles, real pairs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from support import random_image, zoo_model
from vizkit.analyses.correspondence import (
    PARTS,
    change_signs,
    correspondence,
    correspondence_rows,
    occlude,
    pairwise_hamming,
    part_rects,
    random_rects,
)
from vizkit.core.hooks import hook_count


def test_pairwise_hamming_matches_brute_force():
    rng = np.random.default_rng(0)
    signs = rng.choice([-1, 0, 0, 0, 1], size=(6, 40)).astype(np.int8)
    signs[:, :5] = 0  # columns zero everywhere are skipped, yet count as agreements
    dist = pairwise_hamming(signs)
    for i, j in itertools.product(range(6), repeat=2):
        assert dist[i, j] == pytest.approx(np.mean(signs[i] != signs[j]))


def test_change_signs():
    x = np.array([[1.0, 2.0, 0.0, 5.0]])
    y = np.array([[0.5, 3.0, 0.0, 5.0 + 1e-9]])
    np.testing.assert_array_equal(change_signs(x, y), [[1, -1, 0, 0]])


def test_part_and_random_rects():
    boxes = np.array([[10, 20, 30, 40], [0, 0, 64, 32]], dtype=np.float32)
    top_left, bottom = part_rects(boxes, PARTS["top-left"], 64), part_rects(boxes, PARTS["bottom"], 64)
    np.testing.assert_array_equal(top_left, [[10, 20, 20, 30], [0, 0, 32, 16]])
    np.testing.assert_array_equal(bottom, [[10, 30, 30, 40], [0, 16, 64, 32]])
    rects = part_rects(boxes, PARTS["centre"], 64)
    rand = random_rects(rects, boxes, 64, np.random.default_rng(1))
    np.testing.assert_array_equal(rand[:, 2:] - rand[:, :2], rects[:, 2:] - rects[:, :2])
    assert (rand[:, :2] >= boxes[:, :2]).all() and (rand[:, 2:] <= boxes[:, 2:]).all()
    with pytest.raises(ValueError, match="part"):
        part_rects(boxes, (0.5, 0.0, 0.5, 1.0), 64)


def test_correspondence_matches_a_brute_force_oracle(tiny):
    n = 6
    images = np.stack([random_image(16, 16, seed=i) for i in range(n)])
    boxes = np.array([[2, 2, 14, 14], [0, 4, 12, 16], [4, 0, 16, 10]] * 2, dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2])
    r = correspondence(tiny, images, boxes, "top-right", labels, ["relu1", "relu2"], seed=3, batch_size=4)
    assert r.n_pairs == 3 + 1 and r.n_images == n
    fill = [255 * c for c in tiny.spec.mean]

    def feats(batch, k):
        x = torch.cat([tiny.preprocess(img) for img in batch])
        with torch.no_grad():
            return tiny.module[:2 if k == "relu1" else 5](x).flatten(1).numpy()

    for name in ("relu1", "relu2"):
        base = feats(images, name)
        for rects, got in ((r.rects, r.part_distance), (r.random_rects, r.random_distance)):
            signs = np.sign(base - feats(occlude(images, rects, fill), name))
            pairs = [np.mean(signs[i] != signs[j]) for i, j in itertools.combinations(range(n), 2)
                     if labels[i] == labels[j]]
            assert got[name] == pytest.approx(np.mean(pairs), abs=1e-6)
        assert r.units[name] == base.shape[1]
    assert hook_count(tiny.module) == 0


@pytest.mark.slow
def test_correspondence_on_bundled_scenes_uses_real_pairs():
    from vizkit.data.scenes import bundled_subset

    scenes = bundled_subset()
    m = zoo_model("fashion-zf")
    n = 24
    r = correspondence(m, scenes.images[:n], scenes.boxes[:n], "top-left", scenes.labels[:n])
    expected = sum(c * (c - 1) // 2 for c in np.bincount(scenes.labels[:n]))
    assert r.n_pairs == expected > 0
    assert r.layers == tuple(f"features.relu{i}" for i in range(1, 6))
    assert r.units["features.relu1"] == 48 * 64 * 64 and r.units["features.relu5"] == 256 * 8 * 8
    for d in (r.part_distance, r.random_distance):
        assert all(0.0 < v < 1.0 for v in d.values())
    # Every part occlusion lies in its object's box and really hides pixels.
    box = np.round(scenes.boxes[:n])
    assert (r.rects[:, :2] >= box[:, :2] - 1).all() and (r.rects[:, 2:] <= box[:, 2:] + 1).all()
    assert ((r.rects[:, 2:] - r.rects[:, :2]) >= 1).all()
    rows = correspondence_rows(r)
    assert [row["layer"] for row in rows] == list(r.layers) and rows[0]["pairs"] == expected
    assert hook_count(m.module) == 0


def test_correspondence_rejects_bad_inputs(tiny):
    images = np.stack([random_image(16, 16, seed=i) for i in range(3)])
    boxes = np.array([[0, 0, 16, 16]] * 3, dtype=np.float32)
    with pytest.raises(ValueError, match="Unknown part"):
        correspondence(tiny, images, boxes, "nose")
    with pytest.raises(ValueError, match="no pairs"):
        correspondence(tiny, images, boxes, labels=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="input size"):
        correspondence(tiny, images[:, :8], boxes)
