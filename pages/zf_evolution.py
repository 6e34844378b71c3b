"""Feature evolution during training (Zeiler & Fergus 2013, Fig. 4) from the bundled snapshots."""

from __future__ import annotations

import streamlit as st

from pages import _ui as ui
from vizkit import render
from vizkit.analyses.evolution import evolution_picture, evolution_rows, feature_evolution, snapshot_paths
from vizkit.analyses.features import table_text

PAGE = "zf_evolution"
STRONGEST = "strongest unit at each snapshot"
FIXED = "follow chosen feature maps"

ui.page_header(
    "Feature evolution",
    "Zeiler & Fergus 2013, Fig. 4: at each training snapshot of the bundled model (epoch 0 is the "
    "initialization), the strongest activation of a layer over the held-out scenes, the image "
    "patch under its receptive field and its deconvnet projection, and the first-layer filters. "
    "Lower layers settle after a few epochs, upper layers later.",
)
m = ui.require_model()
snaps = snapshot_paths(model="fashion-zf")
if not m.spec.bundled:
    st.info("Training snapshots exist only for the bundled model: choose **fashion-zf** in the sidebar.")
    st.stop()
if not snaps or ui.scenes() is None:
    st.info("The training snapshots (assets/snapshots/fashion-zf-epoch<N>.safetensors) or the "
            "held-out scenes are not on this machine yet.")
    st.stop()

c1, c2 = st.columns(2)
with c1:
    layer = ui.layer_picker(m, key="evo_layer")
    mode = st.radio("Units", [STRONGEST, FIXED], key="evo_mode")
with c2:
    n = ui.channel_count(m, layer) or 1
    channels = None
    if mode == FIXED:
        channels = st.multiselect(f"Feature maps (0–{n - 1})", list(range(n)), default=[0],
                                  max_selections=6, key=f"evo_channels_{layer}") or None
    limit = int(st.slider("Scenes searched", 50, len(ui.scenes()), min(300, len(ui.scenes())), 50,
                          key="evo_limit"))
st.caption(f"{len(snaps)} snapshots: epochs {', '.join(str(e) for e, _ in snaps)}.")

b1, b2, _ = st.columns([1, 1, 4])
go = b1.button("Compute", type="primary", key="evo_go", disabled=mode == FIXED and not channels)
b2.button("Stop", key="evo_stop", help="Stops a running computation (nothing is kept).")
if go:
    bar = st.progress(0.0, text="Loading snapshots…")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"Snapshot {done}/{total}")

    result = ui.attempt(feature_evolution, layer, channels, snaps, ui.scenes().images, limit=limit,
                        device=str(m.device), progress=progress)
    bar.empty()
    if result is not None:
        ui.store(PAGE, m, None, result)

result = ui.stored_or_stop(PAGE, m, None, "Choose a layer and press **Compute**.")

picture = evolution_picture(result, zoom=max(1, 96 // max(result.steps[0].patch.shape[:2])))
st.image(picture, caption=f"{result.layer}: per feature map, deconvnet projections (top row) and image "
         f"patches (bottom row); epochs {', '.join(map(str, result.epochs))} left to right")
ui.download(picture, ui.safe_name("evolution", result.layer), key="dl_evo")
st.dataframe(evolution_rows(result), key="evo_table")
st.download_button("Download CSV", table_text(evolution_rows(result)), file_name="evolution.csv",
                   mime="text/csv", key="dl_evo_csv", on_click="ignore")

st.subheader(f"First-layer filters ({result.first_conv})")
epochs = result.epochs
cols = st.columns(min(4, len(epochs)))
for k, epoch in enumerate(epochs):
    step = next(s for s in result.steps if s.epoch == epoch)
    with cols[k % len(cols)]:
        st.image(render.enlarge(step.filters, 200), caption=f"epoch {epoch}")
