"""The live camera and video pages: AppTest for the page logic, Chromium for the stream and the player.

The browser tests use Chromium's synthetic camera (``--use-fake-device-for-media-stream``, in
browser_support.LAUNCH_ARGS) and a clip generated here; waits are on real elements, never sleeps.
"""

from __future__ import annotations

import numpy as np
import pytest
from browser_support import CHROMIUM, finish, open_app, press

from app_support import assert_clean, open_page
from support import clip_frames, random_image, write_clip

LIVE_FRAMES = 15  # processed frames the page's counter must pass


@pytest.mark.slow
def test_live_page_renders_without_a_server(bundled_ready):
    at = open_page("live")
    assert_clean(at)
    assert at.radio(key="live_view").options  # the settings are there; the stream needs a server
    assert any("needs the app's server" in i.value for i in at.info)


@pytest.mark.slow
def test_a_frozen_frame_is_every_page_s_image(bundled_ready):
    from pages import _ui

    img = random_image(48, 64, seed=9)
    frozen = _ui.Picked(img, "camera", _ui.digest(img))
    at = open_page(state={_ui.KEY_FROZEN: frozen, _ui.KEY_SOURCE: _ui.SOURCE_CAMERA})
    assert_clean(at)
    picked = at.session_state["vk_picked"]
    assert picked.digest == frozen.digest and np.array_equal(picked.image, img)


@pytest.mark.slow
def test_video_page_asks_for_a_clip(bundled_ready):
    at = open_page("video")
    assert_clean(at)
    assert any("Upload a clip" in i.value for i in at.info)


@pytest.mark.slow
def test_video_page_analyses_an_upload(bundled_ready, tmp_path):
    clip = tmp_path / "clip.webm"
    write_clip(clip, clip_frames(8, 48, 64), fps=4)
    at = open_page("video")
    at.file_uploader(key="vid_upload").upload("clip.webm", clip.read_bytes(), "video/webm")
    at.run()
    at.button(key="vid_go").click().run()
    assert_clean(at)
    assert next(m.value for m in at.metric if m.label == "Frames analysed") == "8"
    kept = at.session_state["vid_result"]
    assert len(kept["analysis"]) == 8 and kept["video"][:4] == b"\x1a\x45\xdf\xa3"  # WebM
    assert len(at.get("plotly_chart")) == 5  # classes, channels, similarity ×2, top-5
    at.slider(key="vid_frame").set_value(5).run()
    assert_clean(at)
    assert any("Top-5 at frame 5" in c.proto.spec for c in at.get("plotly_chart"))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "data", "words"), [
    ("notes.mp4", b"hello, I am a text file renamed to .mp4\n" * 5, "not a video file"),
    ("empty.webm", b"", "empty"),
    ("cut.webm", b"\x1a\x45\xdf\xa3" + bytes(300), "damaged or truncated"),
])
def test_video_page_bad_clips_are_messages(bundled_ready, name, data, words):
    at = open_page("video")
    at.file_uploader(key="vid_upload").upload(name, data, "video/mp4")
    at.run()
    at.button(key="vid_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(words in e.value for e in at.error), [e.value for e in at.error]
    assert "vid_result" not in at.session_state


def live_counter_above(n: int) -> str:
    return f"""() => Array.from(document.querySelectorAll('[data-testid="stMetric"]')).some(m =>
        m.innerText.startsWith('Processed frames\\n') &&
        parseInt(m.querySelector('[data-testid="stMetricValue"]').innerText) > {n})"""


@pytest.mark.browser
@pytest.mark.slow
def test_live_page_streams_processed_frames_from_the_fake_camera(page, server):
    if not CHROMIUM.is_file():
        pytest.skip("Chromium missing")
    console: list[str] = []  # the component logs its WebRTC states: the diagnosis if no frame comes
    page.on("console", lambda message: console.append(message.text[:200]))
    open_app(page, server, "live")
    page.get_by_text("Processed frames", exact=True).first.wait_for()
    page.get_by_text("one channel of the layer over the frame").click()
    page.get_by_text("Processed frames", exact=True).first.wait_for()
    page.frame_locator('iframe[title*="webrtc"]').first.get_by_role("button", name="START").click()
    try:
        page.wait_for_function(live_counter_above(LIVE_FRAMES), polling=500)
    except Exception as error:
        raise AssertionError("no processed frames; the browser said:\n" + "\n".join(console)) from error
    assert page.locator('[data-testid="stException"]').count() == 0
    press(page, "Freeze")
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("camera", exact=True).wait_for()  # the sidebar's image caption
    assert sidebar.get_by_role("radio", name="Camera frame").is_checked()
    page.locator('iframe[title*="webrtc"]').first.scroll_into_view_if_needed()
    finish(page, "live")


def upload_and_analyse(page, server, path) -> None:
    """Opens the video page, uploads ``path`` through the file chooser and presses Analyse."""
    open_app(page, server, "video")
    main = page.locator('[data-testid="stMain"]')
    with page.expect_file_chooser() as chooser:
        main.locator('[data-testid="stFileUploaderDropzone"]').first.click()
    chooser.value.set_files(str(path))
    main.get_by_text(path.name).wait_for()
    press(page, "Analyse")


@pytest.mark.browser
@pytest.mark.slow
def test_video_page_analyses_an_upload_and_plays_the_overlay(page, server, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip("Chromium missing")
    clip = tmp_path / "my-clip.webm"
    write_clip(clip, clip_frames(12, 72, 96), fps=6)
    upload_and_analyse(page, server, clip)
    main = page.locator('[data-testid="stMain"]')
    page.get_by_text("Frame-to-frame feature similarity").wait_for()
    video = main.locator("video").first
    video.wait_for()
    page.wait_for_function("""() => { const v = document.querySelector('[data-testid="stMain"] video');
        if (v && v.readyState < 2 && v.preload !== 'auto') { v.preload = 'auto'; v.load(); }
        return v && v.readyState >= 2 && v.duration > 0; }""", polling=500)
    assert main.get_by_role("button", name="Download the overlay video (WebM)").count() == 1
    finish(page, "video")


@pytest.mark.browser
@pytest.mark.slow
def test_video_page_bad_clip_is_a_message(page, server, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip("Chromium missing")
    bad = tmp_path / "notes.mp4"
    bad.write_text("hello, this is not a video")
    upload_and_analyse(page, server, bad)
    page.locator('[data-testid="stAlertContentError"]').get_by_text("not a video file").wait_for()
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stSidebar"]').get_by_text("Model", exact=True).count() >= 1
