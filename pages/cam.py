"""Class activation maps: CAM, Grad-CAM and Grad-CAM++ side by side, with their faithfulness curves."""

from __future__ import annotations

import streamlit as st

from pages import _ui as ui
from vizkit import render
from vizkit.methods.registry import list_methods
from vizkit.metrics.faithfulness import deletion_insertion

PAGE = "cam"
METHODS = {spec.name: spec for spec in list_methods(family="class_maps")}

ui.page_header(
    "Class activation maps",
    "Where the model looks for a class. The deletion and insertion curves (Petsiuk et al. 2018) "
    "show which map is most faithful for this image: deleting the pixels a faithful map ranks "
    "first makes the probability fall fast (low area); inserting them makes it rise fast (high area).",
)
m, picked = ui.require_inputs()
col1, col2, col3 = st.columns([2, 2, 1])
with col1:
    target = ui.class_options(m, picked, key="cam_class")
with col2:
    layer = ui.layer_picker(m, key="cam_layer", label="Layer (Grad-CAM, Grad-CAM++)")
with col3:
    steps = int(st.select_slider("Curve steps", [8, 16, 32, 64], value=16, key="cam_steps"))

if st.button("Compute maps", type="primary", key="cam_go"):
    maps, curves = {}, {}
    progress = st.progress(0.0, text="Computing maps…")
    for i, (method, spec) in enumerate(METHODS.items()):
        try:
            # A GAP-head method (CAM) is defined at the layer feeding the head; the others take
            # the chosen layer.
            chosen = {} if spec.needs_gap_head else {"layer": layer}
            maps[method] = spec.run(m, picked.image, target=target, **chosen)
            curves[method] = deletion_insertion(m, picked.image, maps[method].map, target, steps=steps)
        except Exception as exc:  # noqa: BLE001 - CAM fails on non-GAP models; show the others
            maps[method] = exc
        progress.progress((i + 1) / len(METHODS), text=f"{spec.title} done")
    progress.empty()
    ui.store(PAGE, m, picked, {"maps": maps, "curves": curves, "target": target})

kept = ui.stored_or_stop(PAGE, m, picked, "Choose a class and press **Compute maps**.")
st.markdown(f"Maps for class **{m.classes[kept['target']]}**.")
opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="cam_opacity")
base = m.resize(picked.image)
for col, (method, spec) in zip(st.columns(len(METHODS)), METHODS.items(), strict=True):
    title = spec.title
    with col:
        st.subheader(title)
        st.caption(spec.caption)
        result = kept["maps"][method]
        if isinstance(result, Exception):
            ui.show_error(result)
            continue
        ui.picture(render.overlay(base, result.map, opacity, "jet"), f"{title} at {result.layer}",
                   ui.safe_name(method, m.spec.name, m.classes[kept["target"]]), key=f"cam_{method}",
                   min_side=224)
        curve = kept["curves"].get(method)
        if curve is not None:
            a, b = st.columns(2)
            a.metric("Deletion area ↓", f"{curve.deletion_auc:.3f}")
            b.metric("Insertion area ↑", f"{curve.insertion_auc:.3f}")

curves = kept["curves"]
if curves:
    names = {method: METHODS[method].title for method in curves}
    best_del = min(curves, key=lambda k: curves[k].deletion_auc)
    best_ins = max(curves, key=lambda k: curves[k].insertion_auc)
    st.markdown(f"Most faithful here: **{names[best_del]}** by deletion, **{names[best_ins]}** by insertion.")
    for col, (kind, better, verb) in zip(st.columns(2), [("deletion", "lower", "deleted"),
                                                         ("insertion", "higher", "inserted")], strict=True):
        with col:
            fig = render.curves_figure(
                {names[k]: (c.fractions, getattr(c, kind)) for k, c in curves.items()},
                title=f"{kind.capitalize()} ({better} area is better)", xaxis=f"fraction of pixels {verb}",
                yaxis="class probability",
                labels={names[k]: f"(area {getattr(c, kind + '_auc'):.3f})" for k, c in curves.items()})
            st.plotly_chart(fig, key=f"cam_{kind}")
