"""Activations: every channel of a layer, one channel large, its deconvnet projection, top-9 patches."""

from __future__ import annotations

import numpy as np
import streamlit as st

import vizkit as vk
from pages import _ui as ui
from vizkit import render
from vizkit.methods.backprop import deconvnet
from vizkit.methods.layer_activations import activations
from vizkit.methods.patches import patch_grid, top_patches
from vizkit.mining.index import index_for

PAGE = "activations"
GRID_CELLS = 250_000  # plotly heatmap cells above which channel maps are shrunk for the grid

ui.page_header(
    "Activations",
    "All channels of one layer for the picked image (Zeiler & Fergus 2013). Hover the grid for "
    "values; pick a channel to see its map over the image, its deconvnet projection and the "
    "dataset patches that excite it most, each with its projection (their Fig. 2: from a mining "
    "index when one fits the model's weights, otherwise ranked live).",
)
m, picked = ui.require_inputs()
layer = ui.layer_picker(m, key="act_layer")
if st.button("Show activations", type="primary", key="act_go"):
    acts = ui.attempt(activations, m, picked.image, layer)
    if acts is not None:
        ui.store(PAGE, m, picked, acts)
        st.session_state.pop("act_extra", None)

acts: vk.Activations = ui.stored_or_stop(PAGE, m, picked, "Choose a layer and press **Show activations**.")

maps = acts.maps
c, h, w = maps.shape
st.subheader(f"{acts.layer}: {c} channels of {h}×{w}")
shown = maps
if c * h * w > GRID_CELLS:
    side = max(2, int(np.sqrt(GRID_CELLS / c)))
    shown = np.stack([render.resize(ch, (min(h, side), min(w, side))) for ch in maps])
    st.caption(f"Maps shrunk to {shown.shape[1]}×{shown.shape[2]} for the grid; hover values are of "
               "the shrunk maps, the channel view below is exact.")
st.plotly_chart(render.channel_grid_figure(shown), key="act_grid")
ui.download(render.channel_grid(maps), ui.safe_name("activations", m.spec.name, acts.layer),
            key="dl_act_grid", label="Download the grid (PNG)")

order = [int(i) for i in acts.top_channels]
channel = st.selectbox(
    "Channel (strongest mean activation first)", order, key=f"act_channel_{acts.layer}",
    format_func=lambda i: f"{i} — mean {acts.mean[i]:.3g}, max {acts.max[i]:.3g}",
)
s1, s2, s3 = st.columns(3)
s1.metric("Mean", f"{acts.mean[channel]:.4g}")
s2.metric("Max", f"{acts.max[channel]:.4g}")
s3.metric("Active (> 0)", f"{acts.active[channel]:.0%}")

base = m.resize(picked.image)
extra = st.session_state.setdefault("act_extra", {})
key = (m.spec.name, picked.digest, acts.layer, channel)
if ("deconv", key) not in extra:
    extra[("deconv", key)] = ui.attempt(deconvnet, m, picked.image, acts.layer, channel)
projection = extra[("deconv", key)]

opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05, key="act_opacity")
left, right = st.columns(2)
with left:
    ui.picture(render.overlay(base, maps[channel], opacity, "jet"),
               f"Channel {channel} over the image", ui.safe_name("channel", m.spec.name, acts.layer, channel),
               key="act_overlay")
with right:
    if projection is not None:
        ui.picture(render.signed_image(projection.raw),
                   f"Deconvnet projection of its strongest unit {projection.info.get('unit')}",
                   ui.safe_name("deconvnet", m.spec.name, acts.layer, channel), key="act_deconv")

st.subheader("Top-9 dataset patches")


def show_top9(found, caption: str, names: list[str] | None = None) -> None:
    """Zeiler & Fergus Fig. 2: the patches and, when computed, their deconvnet projections."""
    st.caption(caption)
    left, right = st.columns(2)
    with left:
        ui.picture(patch_grid(found, "patches"), "Top patches, strongest first",
                   ui.safe_name("top-patches", m.spec.name, acts.layer, channel), key="act_top9_patches")
    with right:
        if found.projections is not None:
            ui.picture(patch_grid(found, "projections"), "Their deconvnet projections",
                       ui.safe_name("top-projections", m.spec.name, acts.layer, channel), key="act_top9_proj")
        elif found.projection_error:
            st.info(f"No projections: {found.projection_error}")
    labels = names or [f"#{int(i)}" for i in found.indices]
    st.caption("Scenes (channel maximum): " + ", ".join(
        f"{label} ({v:.3g})" for label, v in zip(labels, found.scores, strict=True)))


scenes = ui.scenes()
# A mining index of this model's exact weights (python -m vizkit mine) answers at once; without
# one, or when its images changed, the dataset is ranked live below.
index = ui.attempt(index_for, m, acts.layer)
if index is not None:
    images = scenes.images if scenes is not None else None
    if ("index9", key) not in extra:
        try:
            extra[("index9", key)] = index.top_patches(m, acts.layer, channel, images=images)
        except ValueError as exc:  # StaleIndexError: its images changed since it was mined
            extra[("index9", key)] = str(exc)
    found = extra[("index9", key)]
    if isinstance(found, str):
        st.caption(f"The mining index {index.path.name} does not fit ({found}); ranking live instead.")
    else:
        if found.projections is None and st.button("Compute their projections", key="act_index_proj"):
            found = ui.attempt(index.top_patches, m, acts.layer, channel, images=images, projections=True)
            if found is not None:
                extra[("index9", key)] = found
            found = extra[("index9", key)]
        winners = index.top(acts.layer, channel)
        rf = found.receptive_field
        data = index.meta["dataset"]
        show_top9(found, f"The {len(found.patches)} images (of {data['readable']}) where channel {channel} "
                  f"fires most, from the mining index {index.path.name} (mined once for every channel: "
                  f"`python -m vizkit mine`), cropped to the firing unit's {rf.size[0]}×{rf.size[1]} px "
                  "receptive field; right: the deconvnet projection of that unit (Zeiler & Fergus 2013, "
                  "Fig. 2), computed for these nine on request.",
                  names=[w.image for w in winners] if data["kind"] == "folder" else None)
        st.stop()

if scenes is None:
    st.info("The bundled dataset subset (assets/fashion-scenes-subset.npz) is not here yet.")
    st.stop()
count = st.select_slider("Scenes to search", [100, 250, 500, 1000], value=250 if m.input_size > 64 else 1000,
                         key="act_scenes", help="Bundled held-out FashionScenes; more is slower.")
if st.button("Find top-9 patches", key="act_top9"):
    bar = st.progress(0.0, text="Searching the dataset…")

    def progress(done: int, total: int) -> bool:
        bar.progress(min(1.0, done / max(total, 1)), text=f"Searching the dataset… {done}/{total} scenes")
        return True

    found = ui.attempt(top_patches, m, acts.layer, channel, scenes.images[:count], k=9, progress=progress)
    bar.empty()
    if found is not None:
        extra[("top9", key)] = found
found = extra.get(("top9", key))
if found is None:
    st.caption("Press **Find top-9 patches** to search the bundled scenes for this channel.")
    st.stop()
rf = found.receptive_field
show_top9(found, f"The {len(found.patches)} scenes (of {count}) where channel {channel} fires most, "
          f"cropped to the firing unit's {rf.size[0]}×{rf.size[1]} px receptive field; right: the deconvnet "
          "projection of that unit (Zeiler & Fergus 2013, Fig. 2).")
