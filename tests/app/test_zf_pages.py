"""Zeiler & Fergus pages: each renders, computes on a button press with small settings, and shows
numbers that agree with the library (and, for invariance, with a plain forward pass)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app_support import BUNDLED, assert_clean, open_page


def _chart_data(at, index: int = 0) -> list[dict]:
    return json.loads(at.get("plotly_chart")[index].proto.spec)["data"]


@pytest.mark.slow
def test_invariance_page_curves_start_at_zero_and_match_a_forward(bundled_ready):
    m = bundled_ready
    at = open_page("zf_invariance", state=BUNDLED)
    assert_clean(at)
    at.radio(key="inv_transform").set_value("rotate")
    at.slider(key="inv_steps").set_value(5)
    at.button(key="inv_go").click().run()
    assert_clean(at)
    data = _chart_data(at)
    assert len(data) == 3  # low layer, high layer, probability
    assert data[0]["x"] == [0.0, 90.0, 180.0, 270.0, 360.0]
    assert data[0]["y"][0] == 0.0 and data[1]["y"][0] == 0.0 and data[0]["y"][-1] == 0.0
    picked = at.session_state["vk_picked"]
    with torch.no_grad():
        probs = torch.softmax(m.module(m.preprocess(picked.image)), 1)[0].numpy()
    np.testing.assert_allclose(data[2]["y"][0], probs.max(), rtol=1e-4)
    assert at.get("download_button")


@pytest.mark.slow
def test_correspondence_page_computes_on_real_pairs(bundled_ready):
    at = open_page("zf_correspondence", state=BUNDLED)
    assert_clean(at)
    assert any("the occluded part" in c for img in at.image for c in img.captions)  # the preview
    at.slider(key="cor_n").set_value(20)
    at.button(key="cor_go").click().run()
    assert_clean(at)
    data = _chart_data(at)
    assert [d["name"].split()[-1] for d in data][:1] == ["occluded"]
    for trace in data:
        assert all(0.0 < v < 1.0 for v in trace["y"])
    from pages import _ui

    labels = _ui.scenes().labels[:20]
    expected_pairs = sum(c * (c - 1) // 2 for c in np.bincount(labels))
    assert str(expected_pairs) in at.caption[-1].value


@pytest.mark.slow
def test_probes_page_shows_accuracy_per_layer(bundled_ready):
    at = open_page("zf_probes", state=BUNDLED)
    assert_clean(at)
    at.select_slider(key="probe_n").set_value(200)
    at.select_slider(key="probe_test").set_value(200)
    at.button(key="probe_go").click().run(timeout=600)
    assert_clean(at)
    bars = _chart_data(at)[0]
    assert bars["x"] == ["features.relu1", "features.relu2", "features.relu3", "features.relu4",
                         "features.relu5"]
    assert all(0.0 <= v <= 1.0 for v in bars["y"])


@pytest.mark.slow
def test_probes_page_falls_back_to_the_bundled_scenes_without_fashion_mnist(bundled_ready,
                                                                           no_fashion_mnist):
    at = open_page("zf_probes", state=BUNDLED)
    assert_clean(at)
    assert any("dataset-fashion-mnist" in box.value for box in at.info), [b.value for b in at.info]
    at.select_slider(key="probe_n").set_value(200)
    at.select_slider(key="probe_test").set_value(200)
    at.button(key="probe_go").click().run(timeout=600)
    assert_clean(at)
    assert len(_chart_data(at)[0]["y"]) == 5
    assert "200 train and 200 test images" in at.caption[-1].value


@pytest.mark.slow
def test_evolution_page_shows_every_snapshot(bundled_ready):
    from vizkit.analyses.evolution import snapshot_paths

    at = open_page("zf_evolution", state=BUNDLED)
    assert_clean(at)
    if not snapshot_paths():
        assert at.info
        return
    at.slider(key="evo_limit").set_value(50)
    at.button(key="evo_go").click().run(timeout=600)
    assert_clean(at)
    epochs = [e for e, _ in snapshot_paths()]
    captions = [c for img in at.image for c in img.captions]
    assert sum(c.startswith("epoch ") for c in captions) == len(epochs)
