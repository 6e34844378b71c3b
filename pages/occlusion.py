"""Occlusion: slide a grey patch over the image and map how much the class probability drops."""

from __future__ import annotations

import numpy as np
import streamlit as st

from pages import _ui as ui
from vizkit import render
from vizkit.methods.occlusion.sensitivity import (
    MODES,
    OcclusionRun,
    approximation_summary,
    default_patch,
    default_stride,
    occlusion,
    patch_grid,
)

PAGE = "occlusion"
RUNNING = "occ_running"
MODE_HELP = {
    "exact": "incremental inference: only the activations a patch changes are recomputed (Krypton); "
             "the same map as full inference",
    "approximate": "8-bit arithmetic on what each patch changes where this CPU's integer kernels "
                   "are exact and fast (VNNI; float32 elsewhere, and the result says which), and "
                   "coarse-to-fine: a sparse grid first; if it predicts a sample of the rest, only "
                   "where the map changes is evaluated and the rest interpolated. On a VNNI CPU, "
                   "about 2.3× faster than exact on VGG16; the map looks alike but is not equal",
    "full": "one full forward pass per patch position (captum's Occlusion)",
}

ui.page_header(
    "Occlusion",
    "Zeiler & Fergus 2013, section 4.2: a patch hides part of the image at each position; the map "
    "shows how much the target class probability drops there, and how much the strongest feature "
    "map of a layer loses (their Fig. 7). Upload your own image in the sidebar.",
)
m, picked = ui.require_inputs()
s = m.input_size
c1, c2, c3 = st.columns(3)
with c1:
    # Defaults in powers of two: positions congruent modulo the network's stride batch together.
    patch = int(st.slider("Patch size (px)", 2, s // 2, default_patch(s)[0], key=f"occ_patch_{s}"))
    stride = int(st.slider("Stride (px)", 1, patch, default_stride(patch), key=f"occ_stride_{s}_{patch}",
                           help="Powers of two batch best: positions a multiple of the network's "
                                "total stride apart are computed together."))
with c2:
    target = ui.class_options(m, picked, key="occ_class")
    baseline = st.selectbox("Patch colour", ["mean", "grey", "zero"], key="occ_baseline",
                            help="mean: the dataset mean colour (0 after normalization); zero: black.")
with c3:
    mode = st.radio("Mode", list(MODES), key="occ_mode",
                    help=" · ".join(f"{k}: {v}" for k, v in MODE_HELP.items()))
    layer = ui.layer_picker(m, key="occ_layer", label="Feature-map layer")
positions = patch_grid(s, patch, stride).ys.size ** 2
st.caption(f"{positions} patch positions on the {s}×{s} input. Mode *{mode}*: {MODE_HELP[mode]}.")

b1, b2, _ = st.columns([1, 1, 4])
go = b1.button("Compute", type="primary", key="occ_go")
stop = b2.button("Stop", key="occ_stop", help="Stops a running computation (no map is kept).")
if st.session_state.pop(RUNNING, False) and not go:
    st.warning("The last computation was stopped before it finished; no map was kept.")

if go:
    bar = st.progress(0.0, text="Occluding…")

    def progress(done: int, total: int) -> bool:
        # Each update is also where Streamlit interrupts the run when Stop is pressed.
        bar.progress(min(1.0, done / max(total, 1)), text=f"Occluding… {done}/{total} positions")
        return True

    st.session_state[RUNNING] = True
    result = ui.attempt(occlusion, m, picked.image, target, patch=patch, stride=stride,
                        baseline=baseline, layer=layer, mode=mode, progress=progress,
                        time_full=True)
    st.session_state.pop(RUNNING, None)
    bar.empty()
    if result is not None:
        ui.store(PAGE, m, picked, result)

result = ui.stored_or_stop(PAGE, m, picked, "Set the patch and press **Compute**.")

run: OcclusionRun = result.info
timings = run.timings
cols = st.columns(5)
cols[0].metric("Clean probability", f"{run.clean_probability:.1%}")
cols[1].metric("Largest drop", f"{float(np.nanmax(result.raw.numpy())):.1%}")
cols[2].metric("Time", f"{timings.total_s:.2f} s")
if run.speedup_over_full:
    cols[3].metric("Speed-up vs full", f"{run.speedup_over_full:.1f}×",
                   help=f"Full inference (one forward pass per position) would take about "
                        f"{timings.full_estimate_s:.2f} s here, timed on a few positions.")
cols[4].metric("Positions evaluated", f"{run.evaluated}/{run.total_positions}")
notes = [f"Class **{m.classes[result.target]}**" if result.target is not None else "Callable target",
         f"patch {run.patch} px, stride {run.stride} px, colour {run.baseline}",
         f"mode **{run.mode}**"]
summary = approximation_summary(run)
if summary:
    notes.append(f"**approximate**: {summary}")
if run.fallback:
    notes.append(run.fallback)
st.markdown(" · ".join(notes))

opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05, key="occ_opacity")
base = m.resize(picked.image)
big = render.enlarge(base, 320)
f = big.shape[0] / base.shape[0]
x0, y0, x1, y1 = run.box
box = (x0 * f, y0 * f, x1 * f, y1 * f)
name = m.classes[result.target] if result.target is not None else "score"
left, mid, right = st.columns(3)
with left:
    heat = render.overlay(big, result.map, opacity, "jet")
    ui.picture(render.draw_box(heat, box, (255, 255, 255), max(2, int(f))),
               "Probability drop (red: occluding here hurts most; box: the most damaging patch)",
               ui.safe_name("occlusion", m.spec.name, name), key="occ_map")
with mid:
    grid = np.asarray(run.probability_grid, dtype=np.float32)
    prob_img = render.overlay(big, grid, opacity, "jet", smooth=False)
    ui.picture(prob_img, f"p({name}) with the patch at each position (blue: low)",
               ui.safe_name("occlusion-probability", m.spec.name, name), key="occ_prob")
with right:
    if run.feature_map is not None:
        heat = render.overlay(big, run.feature_map, opacity, "jet")
        ui.picture(render.draw_box(heat, box, (255, 255, 255), max(2, int(f))),
                   f"Drop of {result.layer} channel {run.channel}'s total activation "
                   "(its strongest feature map)",
                   ui.safe_name("occlusion-feature", m.spec.name, result.layer, run.channel),
                   key="occ_feature")
with st.expander("Probability per patch position (hover for values)"):
    st.plotly_chart(render.heatmap_figure(grid, signed=False), key="occ_grid_fig")
