"""Top patches against an independent ranking; deconvnet projections vanish outside the
receptive field (checks both); the CLI writes metadata-free PNGs."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from support import random_image, zoo_model
from vizkit.cli import main
from vizkit.core.hooks import hook_count
from vizkit.data.scenes import Scenes
from vizkit.methods.backprop import deconvnet
from vizkit.methods.patches import patch_grid, top_patches
from vizkit.methods.receptive_fields import receptive_field
from vizkit.models.registry import get_spec, wrap_module


def _images(n: int, size: int) -> list[np.ndarray]:
    return [random_image(size, size, seed=s) for s in range(n)]


def test_ranking_boxes_and_crops_match_an_independent_pass(tiny):
    images = _images(20, 16)
    r = top_patches(tiny, "relu2", 1, images, k=4, batch_size=6)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # mean 0, std 1
    with torch.no_grad():
        fmap = tiny.module[:5](x)[:, 1]
    peak = fmap.flatten(1).max(1)
    order = torch.argsort(peak.values, descending=True, stable=True)[:4].numpy()
    assert r.indices.tolist() == order.tolist()
    assert np.allclose(r.scores, peak.values[order].numpy(), atol=1e-6)
    rf = receptive_field(tiny, "relu2")
    for rank, i in enumerate(order):
        y, x_ = divmod(int(peak.indices[i]), fmap.shape[-1])
        assert tuple(r.units[rank]) == (y, x_)
        x0, y0, x1, y1 = rf.box(y, x_)
        assert tuple(r.boxes[rank]) == (x0, y0, x1, y1)
        assert np.array_equal(r.patches[rank], images[i][y0:y1, x0:x1])
        assert r.projections[rank].shape == r.patches[rank].shape
    assert hook_count(tiny.module) == 0


def test_scenes_folder_and_list_agree(tiny, tmp_path):
    images = _images(12, 16)
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    scenes = Scenes(images=np.stack(images), labels=np.zeros(12, np.int64),
                    boxes=np.zeros((12, 4), np.float32))
    a = top_patches(tiny, "conv2", 3, images, k=3)
    b = top_patches(tiny, "conv2", 3, tmp_path, k=3)
    c = top_patches(tiny, "conv2", 3, scenes, k=3)
    for other in (b, c):
        assert other.indices.tolist() == a.indices.tolist()
        assert np.array_equal(other.boxes, a.boxes)
    grid = patch_grid(a)
    assert grid.dtype == np.uint8 and grid.shape[0] > 0


def test_images_of_other_sizes_are_seen_at_model_size(tiny):
    big = [random_image(40, 56, seed=s) for s in range(5)]
    r = top_patches(tiny, "relu2", 0, big, k=2)
    i = int(r.indices[0])
    x0, y0, x1, y1 = r.boxes[0]
    assert np.array_equal(r.patches[0], tiny.resize(big[i])[y0:y1, x0:x1])


def test_bad_inputs(tiny, tmp_path):
    with pytest.raises(ValueError, match="outside"):
        top_patches(tiny, "relu2", 6, _images(2, 16))
    with pytest.raises(ValueError, match="Valid layers"):
        top_patches(tiny, "relu9", 0, _images(2, 16))
    with pytest.raises(ValueError, match="No readable images"):
        top_patches(tiny, "relu2", 0, tmp_path)
    with pytest.raises(ValueError, match="C×h×w"):
        top_patches(tiny, "fc", 0, _images(2, 16))
    assert hook_count(tiny.module) == 0


def _check_projection_inside_field(m, layer: str, images: list[np.ndarray], channels: list[int]) -> int:
    """Each unit's deconvnet projection is zero outside ``receptive_field(m, layer).box(y, x)``."""
    rf = receptive_field(m, layer)
    checked = 0
    for img in images:
        for channel in channels:
            for unit in [None, (0, 0), (rf.output_shape[0] - 1, rf.output_shape[1] // 2)]:
                e = deconvnet(m, img, layer, channel, unit=unit)
                if e.info["activation"] <= 0:
                    continue
                y, x = e.info["unit"]
                x0, y0, x1, y1 = rf.box(y, x)
                energy = e.raw[0].abs().sum(0).numpy()
                assert energy[y0:y1, x0:x1].sum() > 0, (layer, channel, unit)
                energy[y0:y1, x0:x1] = 0
                assert energy.max() == 0, (layer, channel, (y, x), np.argwhere(energy > 0)[:3])
                checked += 1
    return checked


def test_projection_vanishes_outside_the_field_tiny(tiny):
    assert _check_projection_inside_field(tiny, "relu2", _images(3, 16), [0, 4, 5]) >= 6
    assert _check_projection_inside_field(tiny, "pool1", _images(2, 16), [0, 1]) >= 3


@pytest.mark.slow
def test_projection_vanishes_outside_the_field_fashion_and_alexnet():
    fz = zoo_model("fashion-zf")
    images = _images(2, 64)
    assert _check_projection_inside_field(fz, "features.relu2", images, [0, 5]) >= 3
    assert _check_projection_inside_field(fz, "features.relu4", images, [1, 7]) >= 3
    alex = zoo_model("alexnet")
    small = wrap_module(alex.module, dataclasses.replace(get_spec("alexnet"), input_size=112), "cpu")
    assert _check_projection_inside_field(small, "features.4", _images(1, 112), [0, 3]) >= 2
    assert hook_count(alex.module) == 0


@pytest.mark.slow
def test_projection_vanishes_outside_the_field_trained_fashion(fashion):
    from vizkit.data.scenes import bundled_subset

    scenes = bundled_subset()
    images = [scenes.images[i] for i in (0, 1)]
    assert _check_projection_inside_field(fashion, "features.relu3", images, [0, 9]) >= 3


def test_cli_writes_metadata_free_pngs(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for i in range(6):
        Image.fromarray(random_image(64, 64, seed=i)).save(images / f"img{i}.png")
    out = tmp_path / "out"
    code = main(["top-patches", "--model", "fashion-zf", "--weights", "none", "--layer",
                 "features.relu2", "--channel", "3", "--images", str(images), "--out", str(out),
                 "--k", "4", "--device", "cpu"])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", *[f"patch_{i:02d}.png" for i in range(1, 5)],
                     *[f"projection_{i:02d}.png" for i in range(1, 5)]]
    for path in out.iterdir():
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and not im.info.get("exif") and not getattr(im, "text", {})
        assert b"tEXt" not in data and b"eXIf" not in data and b"iTXt" not in data


def test_cli_reports_a_wrong_layer(tmp_path, capsys):
    code = main(["top-patches", "--weights", "none", "--layer", "features.nope", "--channel", "0",
                 "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 2 and "features.relu1" in capsys.readouterr().err
