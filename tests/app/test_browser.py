"""The real app in a real browser: `streamlit run app.py` driven by Playwright with Debian's Chromium.

Every page is visited; Home must show predictions, Occlusion gets a file through the file chooser
and its heatmap is waited for; no page may show a Streamlit exception. A screenshot of each page
goes to docs/screenshots/ (the README shows them). Waits are on real elements, never sleeps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from app_support import ROOT

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "docs" / "screenshots"
ARTIFACTS = ROOT / "tests" / "app" / "artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 240_000  # the CPU is shared; a page's first model call can take a while

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not CHROMIUM.is_file():
    pytest.skip(f"BROWSER SUITE SKIPPED: {CHROMIUM} is missing (apt-get install chromium); "
                "Playwright must never download its own browser.", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server():
    """`streamlit run app.py` on a free port, ready when /_stcore/health answers ok."""
    port = free_port()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "streamlit.log", "w")  # noqa: SIM115 - closed at teardown
    env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
                    if response.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not become healthy in 180 s; see {log.name}")
            time.sleep(0.5)  # polling the health endpoint, not waiting on the UI
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server, request):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    yield pg
    try:  # the last state of every test, for diagnosing a failure (git-ignored)
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True, timeout=30_000)
    except Exception:  # noqa: BLE001 - a diagnostic must not hide the test's own result
        pass
    context.close()


def open_app(pg, server: str, path: str = "") -> None:
    pg.goto(f"{server}/{path}")
    pg.locator('[data-testid="stSidebar"]').get_by_text("Model", exact=True).first.wait_for()
    pg.locator("h1").first.wait_for()


SETTLED = """() => !document.querySelector('[data-testid="stStatusWidgetRunningIcon"]')
    && !document.querySelector('[data-testid="stStatusWidgetRunningManIcon"]')
    && !document.querySelector('[data-testid="stSkeleton"]')
    && Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"""


def finish(pg, name: str) -> None:
    """Once the run is over and every picture has loaded: no exception element; the screenshot."""
    pg.wait_for_function(SETTLED, polling=250)
    assert pg.locator('[data-testid="stException"]').count() == 0, pg.locator(
        '[data-testid="stException"]').first.inner_text()
    assert pg.locator('[data-testid="stAlertContentError"]').count() == 0, pg.locator(
        '[data-testid="stAlertContentError"]').first.inner_text()
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def press(pg, label: str) -> None:
    pg.get_by_role("button", name=label, exact=True).first.click()


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
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Upload", exact=True).click()
    with page.expect_file_chooser() as chooser:
        sidebar.locator('[data-testid="stFileUploaderDropzone"]').click()
    chooser.value.set_files(str(upload))
    sidebar.locator('[data-testid="stImage"]').first.wait_for()
    press(page, "Compute")
    page.get_by_text("Probability drop (red").wait_for()
    page.get_by_text("Clean probability").first.wait_for()
    finish(page, "occlusion")


@pytest.mark.parametrize(("path", "button", "wait_text"), [
    ("activations", "Show activations", "Top-9 dataset patches"),
    ("deconvnet", "Compute", "Explaining class"),
    ("cam", "Compute maps", "Most faithful here"),
    ("filters", None, "kernels of"),
    ("explorer", None, "Receptive field of"),
    ("style_transfer", None, None),
])
def test_every_page_without_an_exception(page, server, path, button, wait_text):
    if not (ROOT / "pages" / f"{path}.py").is_file():
        pytest.skip(f"pages/{path}.py does not exist yet")
    open_app(page, server, path)
    if button:
        press(page, button)
    if wait_text:
        page.get_by_text(wait_text).first.wait_for()
    finish(page, path)


def test_a_bad_upload_is_a_message_and_the_sidebar_survives_reruns(page, server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"hello, this is not an image")
    open_app(page, server, "cam")
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Upload", exact=True).click()
    with page.expect_file_chooser() as chooser:
        sidebar.locator('[data-testid="stFileUploaderDropzone"]').click()
    chooser.value.set_files(str(bad))
    sidebar.locator('[data-testid="stAlertContentError"]').first.wait_for()
    assert page.locator('[data-testid="stException"]').count() == 0
    page.get_by_text("Pick or upload an image in the sidebar.").wait_for()
    # after these reruns the entry script's sidebar is still there (AppTest loses it; browsers must not)
    assert sidebar.get_by_text("Model", exact=True).count() >= 1
