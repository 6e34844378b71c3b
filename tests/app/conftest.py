"""Fixtures for the app tests; helpers live in app_support.py."""

from __future__ import annotations

import pytest
from browser_support import browser, page, server  # noqa: F401 - session fixtures, one instance

from app_support import APP, ROOT, assert_clean, open_page  # noqa: F401 - path setup, re-export


@pytest.fixture(scope="session")
def bundled_ready():
    """The app's bundled model must have its weights (they ship in assets/)."""
    from pages import _ui

    assert _ui.weights_available("fashion-zf"), "bundled weights missing: assets/fashion-zf.safetensors"
    return _ui.cached_model("fashion-zf")
