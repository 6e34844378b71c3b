"""Browser-suite plumbing shared by every browser test: one server and one Chromium per session.

The fixtures are registered through tests/app/conftest.py, so that every browser test module
shares the same session-scoped instances (two sync_playwright instances cannot coexist).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from app_support import ROOT

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "docs" / "screenshots"
ARTIFACTS = ROOT / "tests" / "app" / "artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               # the live page: Chromium's synthetic camera, allowed without a prompt
               "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
TIMEOUT_MS = 240_000  # the CPU is shared; a page's first model call can take a while

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server():
    """`streamlit run app.py` on a free port, ready when /_stcore/health answers ok."""
    require_chromium()
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
    require_chromium()
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


TOOLTIP_GONE = """() => !Array.from(
    document.querySelectorAll('[role="tooltip"], [data-testid="stTooltipContent"]'))
    .some(t => t.getBoundingClientRect().width > 0)"""


def finish(pg, name: str) -> None:
    """Once the run is over and every picture has loaded: no exception element; the screenshot."""
    pg.wait_for_function(SETTLED, polling=250)
    assert pg.locator('[data-testid="stException"]').count() == 0, pg.locator(
        '[data-testid="stException"]').first.inner_text()
    assert pg.locator('[data-testid="stAlertContentError"]').count() == 0, pg.locator(
        '[data-testid="stAlertContentError"]').first.inner_text()
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.mouse.move(0, 0)  # no tooltip of the last button pressed over the picture
    # A tooltip also follows keyboard focus (the live page's Freeze button kept one over Stop).
    pg.evaluate("() => document.activeElement && document.activeElement.blur()")
    try:  # only the picture depends on it: a tooltip that stays is not a failure of the page
        pg.wait_for_function(TOOLTIP_GONE, polling=100, timeout=2_000)
    except PlaywrightTimeout:
        pass
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def use_dataset_scenes(pg) -> object:
    """Picks *Dataset scene* in the sidebar (which selects the bundled fashion-zf, the model the
    app's mining index and scenes are for; the app opens on a photo and EfficientNet-Lite0) and
    waits for the scene field; returns the sidebar."""
    sidebar = pg.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Dataset scene", exact=True).click()
    sidebar.get_by_label(re.compile(r"^Scene")).first.wait_for()
    return sidebar


def upload_in_sidebar(pg, path) -> object:
    """Picks *Upload* in the sidebar and gives ``path`` to the file chooser; returns the sidebar."""
    sidebar = pg.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Upload", exact=True).click()
    with pg.expect_file_chooser() as chooser:
        sidebar.locator('[data-testid="stFileUploaderDropzone"]').click()
    chooser.value.set_files(str(path))
    return sidebar


def press(pg, label: str) -> None:
    pg.get_by_role("button", name=label, exact=True).first.click()


def require_chromium() -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"BROWSER SUITE SKIPPED: {CHROMIUM} is missing (apt-get install chromium); "
                    "Playwright must never download its own browser.")
