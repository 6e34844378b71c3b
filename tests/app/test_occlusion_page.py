"""Occlusion page: maps, the worst patch, timings, exact and approximate modes (uploads: browser suite)."""

from __future__ import annotations

import pytest
import torch

import vizkit as vk
from app_support import BUNDLED, ROOT, assert_clean, open_page


@pytest.mark.slow
def test_occlusion_on_a_sample_photo(bundled_ready):
    m = bundled_ready
    at = open_page("occlusion", state={**BUNDLED, "vk_source": "Sample image", "vk_sample": "chelsea"})
    assert_clean(at)
    # Defaults in powers of two (sensitivity.default_patch): patch 8, stride 4 at 64 px.
    assert at.slider(key="occ_patch_64").value == 8 and at.slider(key="occ_stride_64_8").value == 4
    at.slider(key="occ_patch_64").set_value(16).run()
    at.slider(key="occ_stride_64_16").set_value(16).run()
    at.button(key="occ_go").click().run()
    assert_clean(at)

    img = vk.load_image(ROOT / "assets" / "samples" / "chelsea.png")
    with torch.no_grad():
        probs = torch.softmax(m.module(m.preprocess(img)), 1)[0]
    values = {x.label: x.value for x in at.metric}
    assert values["Clean probability"] == f"{float(probs.max()):.1%}"
    n = ((64 - 16) // 16 + 1) ** 2  # 4×4 positions
    assert values["Positions evaluated"] == f"{n}/{n}"
    assert values["Time"].endswith(" s")
    assert float(values["Speed-up vs full"].rstrip("×")) > 0
    assert len(at.main.image) == 3  # drop map, probability map, feature-map drop
    assert len(at.get("download_button")) >= 3
    assert any("mode **exact**" in x.value for x in at.markdown)

    at.radio(key="occ_mode").set_value("approximate").run()
    at.button(key="occ_go").click().run()
    assert_clean(at)
    from vizkit.methods.occlusion.int8 import choose_arithmetic

    chosen = choose_arithmetic(torch.device("cpu"))  # probed once per process: the page's too
    said = f"{chosen.name} arithmetic on the changes ({chosen.reason})"
    assert any("**approximate**" in x.value and said in x.value for x in at.markdown)
