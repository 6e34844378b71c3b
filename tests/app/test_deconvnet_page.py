"""Deconvnet & guided backprop page: three methods side by side, sanity scores on request."""

from __future__ import annotations

import pytest

from app_support import BUNDLED, assert_clean, open_page


@pytest.mark.slow
def test_three_methods_and_their_sanity_scores(bundled_ready):
    at = open_page("deconvnet", state=BUNDLED)
    assert_clean(at)
    at.checkbox(key="dc_sanity").check().run()
    at.button(key="dc_go").click().run()
    assert_clean(at)
    assert [h.value for h in at.subheader] == ["Deconvnet", "Guided backprop", "Saliency"]
    assert len(at.main.image) == 6  # signal and map per method
    scores = [x for x in at.metric if x.label.startswith("Sanity check")]
    assert len(scores) == 3 and all(-1.0 <= float(s.value) <= 1.0 for s in scores)


@pytest.mark.slow
def test_unit_target_and_out_of_range_channel(bundled_ready):
    at = open_page("deconvnet", state=BUNDLED)
    at.radio(key="dc_kind").set_value("A layer's channel").run()
    at.selectbox(key="dc_layer_fashion-zf").set_value("features.relu2").run()
    number = at.number_input(key="dc_channel_features.relu2")
    assert number.max == 95  # the layer's 96 channels
    number.set_value(7).run()
    at.button(key="dc_go").click().run()
    assert_clean(at)
    assert "channel **7** of **features.relu2**" in at.markdown[-1].value or any(
        "channel **7** of **features.relu2**" in x.value for x in at.markdown)
    assert len(at.main.image) == 2  # deconvnet signal and map
    assert sum("class scores only" in x.value for x in at.info) == 2
