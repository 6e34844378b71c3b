"""Batched layer features against a plain forward through the tiny CNN's slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support import random_image
from vizkit.analyses.features import batch_tensor, default_layers, layer_features, table_text, write_table
from vizkit.core.hooks import hook_count


def _images(n: int, size: int = 16) -> np.ndarray:
    return np.stack([random_image(size, size, seed=i) for i in range(n)])


def _slices(tiny, x):
    net = tiny.module
    with torch.no_grad():
        return {"relu1": net[:2](x), "pool1": net[:3](x), "relu2": net[:5](x), "logits": net(x)}


def test_batch_tensor_equals_stacked_preprocess(tiny):
    imgs = [random_image(16, 16, seed=1), random_image(40, 24, seed=2)]
    x = batch_tensor(tiny, imgs)
    expected = torch.cat([tiny.preprocess(img) for img in imgs])
    torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("pool", ["none", "avg", "max"])
def test_layer_features_match_a_plain_forward_across_batches(tiny, pool):
    imgs = _images(7)
    feats = layer_features(tiny, imgs, ["relu1", "relu2"], pool=pool, logits=True, batch_size=3)
    ref = _slices(tiny, batch_tensor(tiny, imgs))
    for name in ("relu1", "relu2"):
        t = ref[name]
        want = {"none": t.flatten(1), "avg": t.mean((2, 3)), "max": t.amax((2, 3))}[pool]
        np.testing.assert_allclose(feats.values[name], want.numpy(), rtol=1e-5, atol=1e-6)
        assert feats.shapes[name] == tuple(t.shape[1:])
    np.testing.assert_allclose(feats.logits, ref["logits"].numpy(), rtol=1e-5, atol=1e-6)
    assert hook_count(tiny.module) == 0


def test_layer_features_without_logits_stops_early_and_reports_progress(tiny):
    calls = []
    feats = layer_features(tiny, _images(5), ["pool1"], batch_size=2,
                           progress=lambda d, t: calls.append((d, t)))
    assert feats.logits is None and feats.values["pool1"].shape == (5, 4 * 8 * 8)
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert hook_count(tiny.module) == 0


def test_wrong_layer_lists_valid_ones_and_leaves_no_hooks(tiny):
    with pytest.raises(ValueError, match="relu2"):
        layer_features(tiny, _images(2), ["relu9"])
    assert hook_count(tiny.module) == 0


def test_default_layers_prefers_rectifiers(tiny):
    assert default_layers(tiny) == ["relu1", "relu2"]
    assert default_layers(tiny, n=1) == ["relu2"]


def test_tables(tmp_path):
    rows = [{"layer": "a", "acc": 0.5}, {"layer": "b", "acc": 0.25}]
    assert table_text(rows) == "layer,acc\na,0.5\nb,0.25\n"
    write_table(rows, tmp_path / "t.md")
    assert (tmp_path / "t.md").read_text().splitlines() == ["| layer | acc |", "|---|---|", "| a | 0.5 |",
                                                             "| b | 0.25 |"]
