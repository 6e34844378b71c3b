"""Model explorer: the layer table and a unit's receptive field, checked by hand."""

from __future__ import annotations

import pytest

from app_support import BUNDLED, assert_clean, open_page


@pytest.mark.slow
def test_table_and_a_hand_checked_receptive_field(bundled_ready):
    m = bundled_ready
    at = open_page("explorer", state=BUNDLED)
    assert_clean(at)
    values = {x.label: x.value for x in at.metric}
    assert values["Parameters"] == f"{sum(p.numel() for p in m.module.parameters()):,}"
    assert len(at.dataframe) == 1
    at.selectbox[-1].set_value("features.conv1").run()
    # conv1 is 5×5 with padding 2 and stride 1: unit (y, x) sees rows y-2..y+2, columns x-2..x+2
    at.slider(key="rf_y_features.conv1").set_value(10).run()
    at.slider(key="rf_x_features.conv1").set_value(20).run()
    assert_clean(at)
    text = at.markdown[-1].value
    assert "Receptive field 5×5 px" in text
    assert "sees x 18–22, y 8–12" in text
    # pool1 (2×2, stride 2) after conv1: 6×6 field, stride 2; unit (3, 4) starts at (2·3-2, 2·4-2)
    at.selectbox[-1].set_value("features.pool1").run()
    at.slider(key="rf_y_features.pool1").set_value(3).run()
    at.slider(key="rf_x_features.pool1").set_value(4).run()
    text = at.markdown[-1].value
    assert "Receptive field 6×6 px, stride 2×2" in text and "sees x 6–11, y 4–9" in text
