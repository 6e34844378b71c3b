"""AppTest helpers (import as ``from app_support import ...``; see tests/support.py for why not conftest)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app.py"
if str(ROOT) not in sys.path:  # `from pages import _ui` inside the app, as streamlit run does
    sys.path.insert(0, str(ROOT))


# Tests of page behaviour on the bundled model seed it: photos open on efficientnet_lite0.
BUNDLED = {"vk_model": "fashion-zf"}


def open_page(page: str | None = None, timeout: float = 180, state: dict | None = None) -> object:
    """An AppTest of app.py after its first run, switched to ``pages/<page>.py`` and rerun.

    ``state`` seeds session state before the first run: the way to set the sidebar's widgets
    (model, image source). AppTest in Streamlit 1.67 drops the entry script's sidebar elements
    from its element tree on every run after the first when ``st.navigation`` is used (the real
    app keeps them; the browser suite checks that), so they cannot be clicked later.
    """
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    if page is not None:
        at.switch_page(f"pages/{page}.py").run()
    return at


def assert_clean(at) -> None:
    """No exception element and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
