"""Activations page: the grid and one channel's statistics match a forward hook of our own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app_support import BUNDLED, assert_clean, open_page


@pytest.mark.slow
def test_activations_page_shows_a_channel_and_its_projection(bundled_ready):
    m = bundled_ready
    at = open_page("activations", state=BUNDLED)
    assert_clean(at)
    assert not at.get("plotly_chart")  # nothing is computed before the button
    at.selectbox(key="act_layer_fashion-zf").set_value("features.relu3").run()
    at.button(key="act_go").click().run()
    assert_clean(at)

    picked = at.session_state["vk_picked"]
    seen = {}
    handle = dict(m.module.named_modules())["features.relu3"].register_forward_hook(
        lambda mod, inp, out: seen.setdefault("out", out.detach().clone()))
    try:
        with torch.no_grad():
            m.module(m.preprocess(picked.image))
    finally:
        handle.remove()
    maps = seen["out"][0].numpy()
    means = maps.reshape(len(maps), -1).mean(1)
    top = int(np.argmax(means))

    assert len(at.get("plotly_chart")) == 1  # the channel grid
    assert at.selectbox(key="act_channel_features.relu3").value == top
    values = {x.label: x.value for x in at.metric}
    assert float(values["Mean"]) == pytest.approx(means[top], rel=1e-3, abs=1e-4)
    assert float(values["Max"]) == pytest.approx(maps[top].max(), rel=1e-3, abs=1e-4)
    assert len(at.main.image) == 2  # channel overlay, deconvnet projection
    assert len(at.get("download_button")) >= 3

    # Zeiler & Fergus Fig. 2, live: the 9 scenes where this channel fires most, by our own ranking
    at.select_slider(key="act_scenes").set_value(100).run()
    at.button(key="act_top9").click().run()
    assert_clean(at)
    captions = [img.caption for el in at.main.image for img in el.proto.imgs]
    assert "Top patches, strongest first" in captions and "Their deconvnet projections" in captions
    from pages import _ui

    images = _ui.scenes().images[:100]
    peaks = []
    handle = dict(m.module.named_modules())["features.relu3"].register_forward_hook(
        lambda mod, inp, out: peaks.append(out[:, top].amax(dim=(1, 2)).detach().clone()))
    try:
        with torch.no_grad():
            m.module(torch.cat([m.preprocess(i) for i in images]))
    finally:
        handle.remove()
    expected = np.argsort(-peaks[0].numpy(), kind="stable")[:9]
    text = next(c.value for c in at.caption if c.value.startswith("Scenes (channel maximum)"))
    shown = [int(part.split()[0].lstrip("#")) for part in text.split(": ", 1)[1].split(", ")]
    assert set(shown) == set(expected.tolist())
