"""Filters page: the first layer's kernels at once; activation maximization on a button press."""

from __future__ import annotations

import pytest

from app_support import BUNDLED, assert_clean, open_page


@pytest.mark.slow
def test_kernels_and_maximization(bundled_ready):
    m = bundled_ready
    at = open_page("filters", state=BUNDLED)
    assert_clean(at)
    assert "features.conv1: 48 kernels of 5×5" in at.image[-1].proto.imgs[0].caption or any(
        "48 kernels of 5×5" in img.caption for el in at.image for img in el.proto.imgs)
    at.multiselect(key="filt_channels_fashion-zf_features.relu5").set_value([3, 11]).run()
    at.select_slider(key="filt_steps").set_value(16).run()
    at.select_slider(key="filt_size").set_value(32).run()
    at.button(key="filt_go").click().run()
    assert_clean(at)
    captions = [img.caption for el in at.image for img in el.proto.imgs]
    assert sum(c.startswith("channel 3 ") for c in captions) == 1
    assert sum(c.startswith("channel 11 ") for c in captions) == 1
    assert any("16 steps, 32×32 px" in x.value for x in at.markdown)
    assert len(m.conv_layers()) == 5
