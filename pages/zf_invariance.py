"""Invariance (Zeiler & Fergus 2013, Fig. 5): feature distances and class probability under
translation, scale and rotation of the picked image."""

from __future__ import annotations

import numpy as np
import streamlit as st

from pages import _ui as ui
from vizkit import render
from vizkit.analyses.features import table_text
from vizkit.analyses.invariance import (
    TRANSFORMS,
    UNITS,
    default_invariance_layers,
    invariance,
    invariance_figure,
    invariance_rows,
)

PAGE = "zf_invariance"
LABELS = {"translate_x": "Horizontal shift", "translate_y": "Vertical shift", "scale": "Scale",
          "rotate": "Rotation"}

ui.page_header(
    "Invariance",
    "Zeiler & Fergus 2013, Fig. 5: transform the image over a range and measure the Euclidean "
    "distance between the feature vectors of the transformed and the original image at a low and "
    "a high layer, and the probability of the image's class. Small transformations move the first "
    "layer a lot and the top layer little; the output is fairly invariant to shifts and scale, "
    "less to rotation (unless the object is rotationally symmetric).",
)
m, picked = ui.require_inputs()
s = m.input_size
c1, c2, c3 = st.columns(3)
with c1:
    transform = st.radio("Transform", TRANSFORMS, format_func=LABELS.get, key="inv_transform",
                         horizontal=True)
    steps = int(st.slider("Steps", 3, 37, 13, key="inv_steps"))
with c2:
    if transform == "scale":
        lo, hi = st.slider("Scale range", 0.2, 2.0, (0.5, 1.5), 0.05, key="inv_scale")
    elif transform == "rotate":
        lo, hi = st.slider("Angle range (degrees)", -180, 360, (0, 360), 5, key="inv_rotate")
    else:
        q = s // 2
        lo, hi = st.slider("Shift range (pixels)", -q, q, (-(s // 4), s // 4), key=f"inv_shift_{s}")
    target = ui.class_options(m, picked, key="inv_class", label="Class whose probability is shown")
with c3:
    low_default, high_default = default_invariance_layers(m)
    low = ui.layer_picker(m, key="inv_low", label="Low layer", default=low_default)
    high = ui.layer_picker(m, key="inv_high", label="High layer", default=high_default)
    relative = st.toggle("Relative distance", key="inv_relative",
                         help="Divide by the norm of the original feature vector (compares layers).")
values = np.linspace(float(lo), float(hi), steps)
if transform != "scale":
    values = np.unique(np.round(values, 2))
st.caption(f"{len(values)} values from {lo} to {hi} {UNITS[transform]}; uncovered pixels get the "
           "dataset mean colour.")

if st.button("Compute", type="primary", key="inv_go"):
    with st.spinner("Transforming and running the model…"):
        result = ui.attempt(invariance, m, picked.image, transform, values, [low, high], target)
    if result is not None:
        ui.store(PAGE, m, picked, result)

result = ui.stored_or_stop(PAGE, m, picked, "Choose a transform and press **Compute**.")

name = m.classes[result.target]
st.plotly_chart(invariance_figure(result, name, relative=relative), key="inv_fig")
step = max(1, len(result.images) // 13)
shown = list(result.images[::step])
strip = render.tile([render.enlarge(img, 96) for img in shown], cols=len(shown))
st.image(strip, caption=f"{LABELS[result.transform]}: "
         + ", ".join(f"{v:g}" for v in result.values[::step]) + f" {UNITS[result.transform]}")
ui.download(strip, ui.safe_name("invariance", m.spec.name, result.transform), key="dl_inv_strip")
rows = invariance_rows(result)
st.dataframe(rows, key="inv_table")
st.download_button("Download CSV", table_text(rows), file_name=f"invariance-{result.transform}.csv",
                   mime="text/csv", key="dl_inv_csv", on_click="ignore")
