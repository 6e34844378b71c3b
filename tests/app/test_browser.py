"""The real app in a real browser: `streamlit run app.py` driven by Playwright with Debian's Chromium.

Every page is visited; Home must show predictions, Occlusion gets a file through the file chooser
and its heatmap is waited for; no page may show a Streamlit exception. A screenshot of each page
goes to docs/screenshots/ (the README shows them). Waits are on real elements, never sleeps.
"""

from __future__ import annotations

import numpy as np
import pytest
from browser_support import CHROMIUM, finish, open_app, press, upload_in_sidebar, use_dataset_scenes

from app_support import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not CHROMIUM.is_file():
    pytest.skip(f"BROWSER SUITE SKIPPED: {CHROMIUM} is missing (apt-get install chromium); "
                "Playwright must never download its own browser.", allow_module_level=True)


def test_home_shows_predictions(page, server):
    open_app(page, server)
    page.get_by_text("Top prediction").first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.locator(".js-plotly-plot .bars path").count() == 5
    finish(page, "home")


def test_occlusion_with_an_uploaded_file(page, server, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = tmp_path / "my-photo.png"
    Image.fromarray((rng.random((80, 96, 3)) * 255).astype(np.uint8)).save(photo)
    scene = ROOT / "assets" / "samples" / "chelsea.png"
    upload = scene if scene.is_file() else photo

    open_app(page, server, "occlusion")
    sidebar = upload_in_sidebar(page, upload)
    sidebar.locator('[data-testid="stImage"]').first.wait_for()
    press(page, "Compute")
    page.get_by_text("Probability drop (red").wait_for()
    page.get_by_text("Clean probability").first.wait_for()
    finish(page, "occlusion")


@pytest.mark.parametrize(("path", "button", "wait_text"), [
    ("activations", "Show activations", "from the mining index"),
    ("deconvnet", "Compute", "Explaining class"),
    ("cam", "Compute maps", "Most faithful here"),
    ("filters", None, "kernels of"),
    ("explorer", None, "Receptive field of"),
    ("style_transfer", "Run", "Done at step"),
    ("zf_evolution", None, None),
    ("zf_invariance", None, None),
    ("zf_correspondence", None, None),
    ("zf_probes", None, None),
])
def test_every_page_without_an_exception(page, server, path, button, wait_text):
    open_app(page, server, path)
    if path == "activations":  # the shipped mining index is the bundled model's
        use_dataset_scenes(page)
    if button:
        press(page, button)
    if wait_text:
        page.get_by_text(wait_text).first.wait_for()
    finish(page, path)


def test_a_bad_upload_is_a_message_and_the_sidebar_survives_reruns(page, server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"hello, this is not an image")
    open_app(page, server, "cam")
    sidebar = upload_in_sidebar(page, bad)
    sidebar.locator('[data-testid="stAlertContentError"]').first.wait_for()
    assert page.locator('[data-testid="stException"]').count() == 0
    page.get_by_text("Pick or upload an image in the sidebar.").wait_for()
    # after these reruns the entry script's sidebar is still there (AppTest loses it; browsers must not)
    assert sidebar.get_by_text("Model", exact=True).count() >= 1
