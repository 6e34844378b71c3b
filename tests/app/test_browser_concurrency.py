"""Two browser sessions run occlusion at once on one server; each gets its own, correct map.

Streamlit serves both sessions from one process, in two threads sharing the cached model. Each
session picks a different dataset scene, both press Compute before either result is awaited,
and each page's displayed numbers (clean probability, largest drop) and downloaded drop map
are compared with a serial library call on that session's scene.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("playwright")
from browser_support import LAUNCH_ARGS, TIMEOUT_MS, open_app, press, use_dataset_scenes  # noqa: E402, F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCENES = (3, 17)  # one per session


def serial_expectation(index: int) -> dict:
    """What the occlusion page must show for scene ``index`` with its default settings."""
    from vizkit import render
    from vizkit.data.scenes import bundled_subset
    from vizkit.methods.occlusion.sensitivity import occlusion
    from vizkit.models.registry import load_model

    m = load_model("fashion-zf", device="cpu")
    img = bundled_subset().images[index]
    s = m.input_size
    patch = max(2, s // 8)
    result = occlusion(m, img, None, patch=patch, stride=max(1, patch // 2), baseline="mean",
                       layer=m.spec.cam_layer, mode="exact")
    big = render.enlarge(m.resize(img), 320)
    f = big.shape[0] / s
    x0, y0, x1, y1 = result.info["box"]
    heat = render.overlay(big, result.map, 0.6, "jet")
    picture = render.draw_box(heat, (x0 * f, y0 * f, x1 * f, y1 * f), (255, 255, 255), max(2, int(f)))
    return {
        "clean": f"{result.info['clean_probability']:.1%}",
        "drop": f"{float(np.nanmax(result.raw.numpy())):.1%}",
        "picture": picture,
        "class": m.classes[result.target],
    }


def metric(pg, label: str) -> str:
    box = pg.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def choose_scene(pg, index: int) -> None:
    sidebar = use_dataset_scenes(pg)
    field = sidebar.get_by_label(re.compile(r"^Scene"))
    field.fill(str(index))
    field.press("Enter")
    sidebar.get_by_text(f"scene{index}", exact=True).first.wait_for()


def test_two_sessions_run_occlusion_at_once_and_each_gets_its_map(browser, server):
    contexts = [browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
                for _ in SCENES]
    try:
        pages = [ctx.new_page() for ctx in contexts]
        for pg, index in zip(pages, SCENES, strict=True):
            pg.set_default_timeout(TIMEOUT_MS)
            open_app(pg, server, "occlusion")
            choose_scene(pg, index)
            pg.get_by_role("button", name="Compute", exact=True).first.wait_for()
        for pg in pages:  # both computations are started before either is awaited
            press(pg, "Compute")
        expected = [serial_expectation(index) for index in SCENES]
        assert expected[0]["picture"].tobytes() != expected[1]["picture"].tobytes()
        for pg, want in zip(pages, expected, strict=True):
            pg.get_by_text("Probability drop (red").first.wait_for()
            assert pg.locator('[data-testid="stException"]').count() == 0
            assert metric(pg, "Clean probability") == want["clean"]
            assert metric(pg, "Largest drop") == want["drop"]
            pg.get_by_text(f"Class **{want['class']}**".replace("**", "")).first.wait_for()
            with pg.expect_download() as download:
                pg.get_by_role("button", name="Download PNG").first.click()
            data = open(download.value.path(), "rb").read()
            shown = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
            assert shown.shape == want["picture"].shape
            # Same code on the same CPU: at most a colormap step where float sums differ in the
            # last bit; a map of the other session's scene differs almost everywhere.
            far = np.abs(shown - want["picture"]).max(axis=2) > 2
            assert far.mean() < 1e-3, far.mean()
    finally:
        for ctx in contexts:
            ctx.close()
