"""Class activation maps page: three maps and their deletion/insertion curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app_support import BUNDLED, assert_clean, open_page


@pytest.mark.slow
def test_three_maps_with_curves_and_areas(bundled_ready):
    m = bundled_ready
    at = open_page("cam", state=BUNDLED)
    assert_clean(at)
    at.select_slider(key="cam_steps").set_value(8).run()
    at.button(key="cam_go").click().run()
    assert_clean(at)
    assert [h.value for h in at.subheader] == ["CAM", "Grad-CAM", "Grad-CAM++"]
    assert len(at.main.image) == 3
    areas = [float(x.value) for x in at.metric if "area" in x.label]
    assert len(areas) == 6 and all(0.0 <= a <= 1.0 for a in areas)

    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 2
    deletion = charts[0]["data"]
    assert [t["name"].split(" (")[0] for t in deletion] == ["CAM", "Grad-CAM", "Grad-CAM++"]
    # every deletion curve starts at the clean probability of the explained (top) class
    picked = at.session_state["vk_picked"]
    with torch.no_grad():
        probs = torch.softmax(m.module(m.preprocess(picked.image)), 1)[0]
    for trace in deletion:
        assert trace["y"][0] == pytest.approx(float(probs.max()), abs=1e-5)
        assert len(trace["x"]) == 9 and np.isclose(trace["x"][-1], 1.0)
