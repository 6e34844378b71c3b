"""Model explorer: the per-layer table and one unit's receptive field drawn on the image."""

from __future__ import annotations

import streamlit as st

from pages import _ui as ui
from vizkit import render
from vizkit.methods.receptive_fields import summary_table

ui.page_header(
    "Model explorer",
    "Every layer's output shape, parameters, multiply-accumulates (MACs) and receptive field "
    "(Araujo et al. 2019). Pick a layer (or click a row) and a unit position to see the input "
    "region that unit sees.",
)
m, picked = ui.require_inputs()
rows = ui.attempt(ui.layer_summary, m.spec.name)
if rows is None:
    st.stop()

table = summary_table(rows)
total = table[-1]
c1, c2, c3 = st.columns(3)
c1.metric("Layers", len(rows))
c2.metric("Parameters", f"{total['params']:,}")
c3.metric("MACs per image", f"{total['MACs'] / 1e6:,.1f} M")
event = st.dataframe(table, on_select="rerun", selection_mode="single-row", key="explorer_table",
                     hide_index=True, height=320)

spatial = [r for r in rows if r.receptive_field is not None and r.receptive_field.output_shape]
if not spatial:
    st.info("No layer of this model has a spatial output.")
    st.stop()
names = [r.name for r in spatial]
default = names.index(m.spec.cam_layer) if m.spec.cam_layer in names else len(names) - 1
selected = event.selection.rows if event is not None else []
if selected and selected[0] < len(rows) and rows[selected[0]].name in names:
    default = names.index(rows[selected[0]].name)
layer = st.selectbox("Layer", names, index=default)
row = spatial[names.index(layer)]
rf = row.receptive_field
h, w = rf.output_shape
left, right = st.columns([1, 1])
with right:
    y = st.slider("Unit row (y)", 0, h - 1, h // 2, key=f"rf_y_{layer}")
    x = st.slider("Unit column (x)", 0, w - 1, w // 2, key=f"rf_x_{layer}")
    x0, y0, x1, y1 = rf.box(y, x)
    st.markdown(
        f"**{layer}** ({row.kind}), output {'×'.join(map(str, row.output_shape))}  \n"
        f"Receptive field {rf.size[0]}×{rf.size[1]} px, stride {rf.stride[0]}×{rf.stride[1]}, "
        f"offset {rf.offset}  \nUnit ({y}, {x}) sees x {x0}–{x1 - 1}, y {y0}–{y1 - 1} "
        f"of the {m.input_size}×{m.input_size} input"
        + ("" if rf.exact else "  \n*Approximate: this model has an operation the analysis estimates.*")
    )
with left:
    base = m.resize(picked.image)
    big = render.enlarge(base, 384)
    f = big.shape[0] / base.shape[0]
    drawn = render.draw_box(big, (x0 * f, y0 * f, x1 * f, y1 * f), color=(255, 40, 40),
                            thickness=max(2, int(f)))
    ui.picture(drawn, f"Receptive field of {layer} unit ({y}, {x})",
               ui.safe_name("receptive-field", m.spec.name, layer, y, x), key="explorer_rf")
