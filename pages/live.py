"""Live camera: every frame through the model, drawn with a layer's channels, a class map or the top-5.

The browser sends the camera over WebRTC (streamlit-webrtc's own front end; no STUN/TURN server:
browser and server reach each other directly). The server processes only the newest frame on a
private copy of the model, so another tab's long computation holding the shared model's lock does
not stall the stream (vizkit/video/live.py).
"""

from __future__ import annotations

import math

import streamlit as st
from streamlit_webrtc import WebRtcMode, webrtc_streamer

from pages import _ui as ui
from vizkit.video.live import VIEWS, LiveProcessor, LiveSettings, NewestFrameRelay


def serving() -> bool:
    """Whether a real Streamlit server runs this script (AppTest's stand-in has no sessions)."""
    from streamlit.runtime import Runtime

    return Runtime.exists() and hasattr(Runtime.instance(), "_session_mgr")


def use_newest_frame_relay() -> None:
    """Makes streamlit-webrtc relay tracks without buffers (``NewestFrameRelay``, see its module).

    streamlit-webrtc keeps one ``MediaRelay`` per server on the runtime object, created on first
    use; putting ours there first (or instead, for subscriptions made from now on) is the only
    way to choose it in streamlit-webrtc 0.79.
    """
    from streamlit.runtime.runtime import Runtime
    from streamlit_webrtc import relay

    runtime = Runtime.instance()
    name = relay._SERVER_GLOBAL_RELAY_ATTR_NAME_
    if not isinstance(getattr(runtime, name, None), NewestFrameRelay):
        setattr(runtime, name, NewestFrameRelay())


ui.page_header(
    "Live camera",
    "Point the camera at something: each frame goes through the model and comes back drawn with "
    "the chosen view (Yosinski et al. 2015's Deep Visualization Toolbox, in the browser). Frames "
    "that arrive while one is being processed are dropped, never queued, so the picture stays "
    "current. *Freeze* keeps the current frame as the image every other page uses.",
)
m = ui.require_model()

c1, c2, c3 = st.columns([2, 2, 1])
with c1:
    view = st.radio("View", list(VIEWS), key="live_view", format_func=lambda v: VIEWS[v])
with c2:
    layer = ui.layer_picker(m, key="live_layer", label="Layer (channel and grid views)")
    channels = ui.channel_count(m, layer) or 1
    channel = int(st.number_input(f"Channel (0–{channels - 1})", 0, channels - 1, 0,
                                  key=f"live_channel_{m.spec.name}_{layer}"))
with c3:
    opacity = st.slider("Map opacity", 0.0, 1.0, 0.5, 0.05, key="live_opacity")
settings = LiveSettings(view=view, layer=layer, channel=channel, opacity=opacity)

if not serving():
    st.info("The camera stream needs the app's server (`make run`); this run has none.")
    st.stop()
use_newest_frame_relay()
ctx = webrtc_streamer(
    key="live",
    mode=WebRtcMode.SENDRECV,
    rtc_configuration={"iceServers": []},
    media_stream_constraints={
        "video": {"width": {"ideal": 640}, "height": {"ideal": 480}, "frameRate": {"ideal": 30}},
        "audio": False,
    },
    # A private copy: its own hooks, flags and lock over the cached model's weights.
    video_processor_factory=lambda: LiveProcessor(m.private_copy(), settings),
    async_processing=True,
)
processor = ctx.video_processor
if processor is not None:
    if processor.model is None or processor.model.spec.name != m.spec.name:
        processor.model = m.private_copy()
    processor.settings = settings

st.button("Freeze", key="live_freeze", icon=":material/photo_camera:", disabled=processor is None,
          on_click=lambda: ui.freeze_frame(processor.frozen_image() if processor else None),
          help="Keeps the current camera frame as the sidebar's image (Image: Camera frame).")
frozen = st.session_state.get(ui.KEY_FROZEN)
if frozen is not None:
    st.image(frozen.image, width=200,
             caption="Frozen camera frame: the image of every other page while the sidebar's "
                     "Image is set to Camera frame.")


@st.fragment(run_every=1.0)
def live_stats() -> None:
    """Processed frames/s and latency, refreshed every second while the page is open."""
    stats = processor.stats() if processor is not None else None
    cols = st.columns(5)
    cols[0].metric("Processed frames", stats.processed if stats else 0)
    cols[1].metric("Processed frames/s", f"{stats.fps:.1f}" if stats else "–")
    latency = stats.latency_ms if stats else math.nan
    cols[2].metric("Latency", "–" if math.isnan(latency) else f"{latency:.0f} ms",
                   help="From a frame's arrival at the server to its processed picture, averaged "
                        "over 2 s: the wait for the worker plus the model and drawing. The picture "
                        "then goes back with the next camera frame (at most 33 ms later at 30 "
                        "frames/s), is encoded and crosses the network; bench/live.py measures "
                        "all of the server's part.")
    compute = stats.compute_ms if stats else math.nan
    cols[3].metric("Model + drawing", "–" if math.isnan(compute) else f"{compute:.0f} ms")
    cols[4].metric("Dropped frames", stats.dropped if stats else 0,
                   help="Frames that arrived while another was processed; only the newest is drawn.")
    if stats is not None and stats.error:
        st.warning(f"The last frame could not be drawn: {stats.error}")


live_stats()
