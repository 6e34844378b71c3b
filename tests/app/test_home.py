"""Home page: the picked image and its top-5 predictions, checked against a plain forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app_support import BUNDLED, assert_clean, open_page


@pytest.mark.slow
def test_home_shows_the_top5_of_a_plain_forward(bundled_ready):
    m = bundled_ready
    at = open_page(state=BUNDLED)
    assert_clean(at)
    from pages import _ui

    picked = at.session_state["vk_picked"]
    with torch.no_grad():
        probs = torch.softmax(m.module(m.preprocess(picked.image)), 1)[0].numpy()
    order = np.argsort(-probs)[:5]
    metric = at.metric[0]
    assert metric.label == "Top prediction" and metric.value == m.classes[order[0]]
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    import json

    bar = json.loads(charts[0].proto.spec)["data"][0]
    assert bar["y"][::-1] == [m.classes[i] for i in order]
    np.testing.assert_allclose(bar["x"][::-1], probs[order], rtol=1e-5)
    assert len(at.main.image) == 1 and at.get("download_button")
    assert picked.digest == _ui.digest(picked.image)
