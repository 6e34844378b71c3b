"""A method registered in a family appears on that family's page, computed like the others."""

from __future__ import annotations

import pytest

from app_support import assert_clean, open_page
from support import toy_method_spec
from vizkit.methods.registry import register_method, unregister_method


@pytest.mark.slow
@pytest.mark.parametrize("family,page,go,titles", [
    ("class_maps", "cam", "cam_go", ["CAM", "Grad-CAM", "Grad-CAM++", "Toy centre"]),
    ("backprop", "deconvnet", "dc_go", ["Deconvnet", "Guided backprop", "Saliency", "Toy centre"]),
])
def test_a_registered_method_gets_its_column(bundled_ready, family, page, go, titles):
    spec = register_method(toy_method_spec(family=family))
    try:
        at = open_page(page)
        at.button(key=go).click().run()
        assert_clean(at)
        assert [h.value for h in at.subheader] == titles
        assert spec.caption in [c.value for c in at.caption]
    finally:
        unregister_method(spec.name)
