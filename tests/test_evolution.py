"""Feature evolution over snapshots: strongest units against a brute-force search, patches, filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from support import random_image
from vizkit.analyses.evolution import evolution_picture, evolution_rows, feature_evolution, snapshot_paths
from vizkit.methods.filters import filter_grid, filter_weights
from vizkit.models.fashion_zf import FashionZF
from vizkit.models.registry import load_model


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("snaps")
    for epoch, seed in ((0, 1), (3, 2)):
        torch.manual_seed(seed)
        net = FashionZF()
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(folder / f"fashion-zf-epoch{epoch}.safetensors"))
    return folder


def test_snapshot_paths_sort_by_epoch_number(tmp_path):
    names = ("fashion-zf-epoch10.safetensors", "fashion-zf-epoch2.safetensors", "other-epoch1.safetensors",
             "fashion-zf-final.safetensors")
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [e for e, _ in snapshot_paths(tmp_path)] == [2, 10]


def _brute_force(path, images, channels):
    m = load_model("fashion-zf", device="cpu", weights=path)
    with torch.no_grad():
        out = m.module.features(torch.cat([m.preprocess(img) for img in images])).numpy()  # relu5
    if channels is None:
        _, c, _, _ = np.unravel_index(np.argmax(out), out.shape)
        channels = [c]
    found = []
    for c in channels:
        i, y, x = np.unravel_index(np.argmax(out[:, c]), out[:, c].shape)
        found.append((int(c), int(i), (int(y), int(x)), float(out[i, c, y, x])))
    return m, found


@pytest.mark.slow
@pytest.mark.parametrize("channels", [None, [3, 7]])
def test_strongest_units_patches_and_filters(snapshots, channels):
    images = np.stack([random_image(64, 64, seed=i) for i in range(5)])
    snaps = snapshot_paths(snapshots)
    result = feature_evolution("features.relu5", channels, snaps, images, device="cpu")
    assert result.epochs == [0, 3] and result.first_conv == "features.conv1" and result.n_images == 5
    per_epoch = 1 if channels is None else 2
    assert len(result.steps) == 2 * per_epoch
    for k, (_, path) in enumerate(snaps):
        m, found = _brute_force(path, images, channels)
        steps = result.steps[k * per_epoch:(k + 1) * per_epoch]
        for step, (c, i, unit, value) in zip(steps, found, strict=True):
            assert (step.channel, step.image_index, step.unit) == (c, i, unit)
            assert step.activation == pytest.approx(value, rel=1e-5)
            x0, y0, x1, y1 = step.box
            assert (x1 - x0, y1 - y0) == (48, 48)  # relu5's receptive field, counted by hand
            assert (x0, y0) == (unit[1] * 8 - 20, unit[0] * 8 - 20)
            img = images[i]
            sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, 64), min(y1, 64)
            inside = step.patch[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
            np.testing.assert_array_equal(inside, img[sy0:sy1, sx0:sx1])
            assert step.projection.shape == (48, 48, 3) and step.projection.std() > 0
            np.testing.assert_array_equal(step.filters, filter_grid(filter_weights(m, "features.conv1")))
    assert not np.array_equal(result.steps[0].filters, result.steps[-1].filters)
    pic = evolution_picture(result, zoom=1)
    assert pic.shape[1] == 2 * 48 + 2  # two epochs side by side
    assert len(evolution_rows(result)) == len(result.steps)


def test_errors(snapshots, tmp_path):
    images = np.stack([random_image(64, 64)])
    with pytest.raises(ValueError, match="No training snapshots"):
        feature_evolution(snapshots=[], images=images)
    with pytest.raises(ValueError, match="outside"):
        feature_evolution("features.relu5", [999], snapshot_paths(snapshots), images, device="cpu")
    with pytest.raises(ValueError, match="Unknown layer"):
        feature_evolution("features.relu9", None, snapshot_paths(snapshots), images, device="cpu")
