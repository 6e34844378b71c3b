"""Activations page: the grid, one channel's statistics and its top-9 scenes (from the shipped
mining index, or ranked live when no index fits the weights) match a forward hook of our own."""

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
    assert len(at.main.image) == 3  # channel overlay, deconvnet projection, top-9 patches
    assert len(at.get("download_button")) >= 3

    # Zeiler & Fergus Fig. 2 at once, from the shipped mining index (assets/indexes/): the nine
    # scenes of our own ranking over all 1,000 bundled scenes, in order
    captions = [img.caption for el in at.main.image for img in el.proto.imgs]
    assert "Top patches, strongest first" in captions and "Their deconvnet projections" not in captions
    from pages import _ui

    expected = _rank(m, _ui.scenes().images, top)
    assert _shown(at) == expected.tolist()
    at.button(key="act_index_proj").click().run()  # projections of these nine, on request
    assert_clean(at)
    captions = [img.caption for el in at.main.image for img in el.proto.imgs]
    assert "Their deconvnet projections" in captions
    assert _shown(at) == expected.tolist()


def _rank(m, images, channel: int, layer: str = "features.relu3") -> np.ndarray:
    """Our own ranking: a forward hook, the channel's maximum per scene, the nine highest."""
    peaks = []
    handle = dict(m.module.named_modules())[layer].register_forward_hook(
        lambda mod, inp, out: peaks.append(out[:, channel].amax(dim=(1, 2)).detach().clone()))
    try:
        with torch.no_grad():
            for start in range(0, len(images), 250):
                m.module(torch.cat([m.preprocess(i) for i in images[start:start + 250]]))
    finally:
        handle.remove()
    return np.argsort(-torch.cat(peaks).numpy(), kind="stable")[:9]


def _shown(at) -> list[int]:
    text = next(c.value for c in at.caption if c.value.startswith("Scenes (channel maximum)"))
    return [int(part.split()[0].lstrip("#")) for part in text.split(": ", 1)[1].split(", ")]


@pytest.mark.slow
def test_a_stale_index_falls_back_to_live_ranking(bundled_ready, tmp_path, monkeypatch):
    """An index of other weights (the model was retrained) is never shown: the page ranks live."""
    import json

    import pyarrow.parquet as pq

    from vizkit.mining import index as ix

    m = bundled_ready
    table = pq.read_table(ix.INDEX_DIR / "fashion-zf.parquet")
    meta = json.loads(table.schema.metadata[ix.META_KEY])
    meta["weights_hash"] = "0" * 64  # what an index of the weights before a retraining looks like
    pq.write_table(table.replace_schema_metadata({ix.META_KEY: json.dumps(meta).encode()}),
                   tmp_path / "fashion-zf.parquet")
    monkeypatch.setattr(ix, "INDEX_DIR", tmp_path)
    at = open_page("activations", state=BUNDLED)
    at.selectbox(key="act_layer_fashion-zf").set_value("features.relu3").run()
    at.button(key="act_go").click().run()
    assert_clean(at)
    assert not _has_button(at, "act_index_proj")
    # No caption names the stale index (the page header speaks of mining indexes in general).
    assert not [c for c in at.caption if "mining index fashion-zf.parquet" in c.value]
    top = at.selectbox(key="act_channel_features.relu3").value
    at.select_slider(key="act_scenes").set_value(100).run()
    at.button(key="act_top9").click().run()
    assert_clean(at)
    from pages import _ui

    assert _shown(at) == _rank(m, _ui.scenes().images[:100], top).tolist()


def _has_button(at, key: str) -> bool:
    return any(b.key == key for b in at.button)
