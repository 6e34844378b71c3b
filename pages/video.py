"""Video: a clip frame by frame through the model: classes, channels, feature similarity, overlay video."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from pages import _ui as ui
from vizkit import render
from vizkit.video.analysis import ClipAnalysis, analyze_clip
from vizkit.video.clips import VIDEO_TYPES, ClipLimits

PAGE = "video"
KEY = "vid_result"  # {"key": settings, "analysis": ClipAnalysis, "video": bytes | None}
RUNNING = "vid_running"
MAX_FRAMES = 300
SIMILARITY_LINES = 5  # layers drawn over time (evenly spread over depth); all are in the depth chart

ui.page_header(
    "Video",
    "Upload a clip (MP4, WebM, MOV, AVI or animated GIF, at most "
    f"{ui.MAX_UPLOAD_MB} MB): each frame goes through the model. You see the top class over time, "
    "the strongest channels of a layer over time, how similar each layer's features are from one "
    "frame to the next (deeper layers change more slowly: what recurrent convolutional video "
    "models build on, Ballas et al. 2016), any frame with its map, and an overlay video.",
)
m = ui.require_model()
upload = st.file_uploader("Clip", type=VIDEO_TYPES, key="vid_upload",
                          help=f"Frames are scaled to at most 480 px a side; at most {MAX_FRAMES} "
                               "frames are analysed (choose every n-th frame to cover a longer clip).")
c1, c2, c3 = st.columns(3)
with c1:
    layer = ui.layer_picker(m, key="vid_layer", label="Layer (channels over time)")
with c2:
    overlay = st.radio("Overlay video", ["grad_cam", "channel"], key="vid_overlay", horizontal=True,
                       format_func={"grad_cam": "Grad-CAM of the top class",
                                    "channel": "a channel of the layer"}.get)
    channels = ui.channel_count(m, layer) or 1
    pick = st.number_input(f"Channel (0–{channels - 1}; −1: the strongest on the first frame)",
                           -1, channels - 1, -1, key=f"vid_channel_{m.spec.name}_{layer}",
                           disabled=overlay != "channel")
    channel = None if overlay != "channel" or pick < 0 else int(pick)
with c3:
    every = int(st.number_input("Analyse every n-th frame", 1, 100, 1, key="vid_every"))
    max_frames = int(st.slider("Frames at most", 10, MAX_FRAMES, 150, 10, key="vid_max"))

b1, b2, _ = st.columns([1, 1, 4])
go = b1.button("Analyse", type="primary", key="vid_go", disabled=upload is None)
b2.button("Stop", key="vid_stop", help="Stops a running analysis; the frames done so far are kept.")
settings = (upload.file_id if upload else None, m.spec.name, layer, overlay, channel, every, max_frames)

if st.session_state.pop(RUNNING, False) and not go:
    kept = st.session_state.get(KEY)
    done = len(kept["analysis"]) if kept else 0
    st.warning(f"The analysis was stopped after {done} frames: they are shown below; the overlay "
               "video was not written. Press **Analyse** to run it again.")

if go and upload is not None:
    bar = st.progress(0.0, text="Decoding…")

    def progress(done: int, planned: int) -> bool:
        # Each update is also where Streamlit interrupts the run when Stop is pressed.
        frac = done / planned if planned else 0.0
        bar.progress(min(1.0, frac), text=f"Analysing… {done}/{planned or '?'} frames")
        return True

    def keep(partial: ClipAnalysis) -> None:
        st.session_state[KEY] = {"key": settings, "analysis": partial, "video": None}

    st.session_state[RUNNING] = True
    st.session_state.pop(KEY, None)
    with tempfile.TemporaryDirectory(prefix="vizkit-video-") as tmp:
        out = Path(tmp) / "overlay.webm"
        analysis = ui.attempt(analyze_clip, m, upload.getvalue(), layer=layer, overlay=overlay,
                              channel=channel, limits=ClipLimits(max_frames=max_frames, every=every),
                              video_out=out,
                              progress=progress, on_frame=keep)
        video = out.read_bytes() if analysis is not None and out.is_file() else None
    st.session_state.pop(RUNNING, None)
    bar.empty()
    if analysis is not None:
        st.session_state[KEY] = {"key": settings, "analysis": analysis, "video": video}
    else:
        st.session_state.pop(KEY, None)

kept = st.session_state.get(KEY)
if kept is None or kept["key"] != settings:
    st.info("Upload a clip and press **Analyse**." if upload is None else "Press **Analyse**.")
    st.stop()
a: ClipAnalysis = kept["analysis"]
if len(a) == 0:
    st.stop()

info = a.info
cols = st.columns(4)
cols[0].metric("Frames analysed", len(a))
cols[1].metric("Clip", f"{info.width}×{info.height}, {info.fps:.3g} fps",
               help=f"{info.container}, {info.codec}" + (", with audio (ignored)" if info.has_audio else ""))
cols[2].metric("Time", f"{a.seconds:.1f} s")
cols[3].metric("Frames/s", f"{len(a) / a.seconds:.1f}" if a.seconds > 0 else "–")
for note in a.notes:
    st.info(note)

names = [a.classes[c] for c in a.top1]
st.subheader("Top-1 class over time")
st.plotly_chart(render.class_timeline_figure(a.times, names, a.top1_probability), key="vid_classes")

st.subheader(f"{a.layer}: the strongest channels over time")
means = np.stack(a.channel_means)
strongest = a.strongest_channels(5)
st.plotly_chart(render.curves_figure({f"channel {c}": (a.times, means[:, c]) for c in strongest},
                                     xaxis="time (s)", yaxis="mean activation"), key="vid_channels")

st.subheader("Frame-to-frame feature similarity")
mean_sim = a.mean_similarity()
layers = list(mean_sim)
left, right = st.columns(2)
with left:
    fig = render.curves_figure({"mean over the clip": (list(range(len(layers))), list(mean_sim.values()))},
                               xaxis="depth (input, then each convolution)", yaxis="cosine similarity")
    fig.update_traces(mode="lines+markers", text=layers, hovertemplate="%{text}<br>%{y:.4f}<extra></extra>")
    st.plotly_chart(fig, key="vid_sim_depth")
with right:
    picks = sorted({round(i) for i in np.linspace(0, len(layers) - 1, SIMILARITY_LINES)})
    st.plotly_chart(render.curves_figure(
        {layers[i]: (a.times[1:], a.similarity[layers[i]][1:]) for i in picks},
        xaxis="time (s)", yaxis="similarity to the previous frame"), key="vid_sim_time")
st.caption("Cosine similarity of each layer's whole output between consecutive analysed frames. "
           "Left: its mean over the clip, from the pixels (input) to the deepest convolution.")

st.subheader("Any frame with its map")
i = st.slider("Frame", 0, len(a) - 1, 0, key="vid_frame") if len(a) > 1 else 0
opacity = st.slider("Map opacity", 0.0, 1.0, 0.5, 0.05, key="vid_opacity")
f1, f2 = st.columns(2)
what = "Grad-CAM of the top class" if a.overlay == "grad_cam" else f"{a.layer} channel {a.channel}"
with f1:
    ui.picture(a.overlay_image(i, opacity), f"Frame {a.frame_index[i]} at {a.times[i]:.2f} s: {what}",
               ui.safe_name("video-frame", m.spec.name, a.frame_index[i]), key="vid_frame_pic")
with f2:
    st.plotly_chart(render.topk_figure([(a.classes[c], p) for c, p in a.top[i]],
                                       title=f"Top-5 at frame {a.frame_index[i]}"), key="vid_topk")

st.subheader("Overlay video")
if kept["video"]:
    st.video(kept["video"], format="video/webm")
    st.download_button("Download the overlay video (WebM)", data=kept["video"],
                       file_name=f"overlay-{m.spec.name}.webm",
                       mime="video/webm", key="vid_dl", icon=":material/download:", on_click="ignore")
else:
    st.caption("No overlay video: the analysis was stopped before the end.")
if len(a):
    st.download_button("Download the per-frame table (CSV)", data=a.csv_text(),
                       file_name=f"frames-{m.spec.name}.csv", mime="text/csv",
                       key="vid_csv", icon=":material/download:", on_click="ignore")
