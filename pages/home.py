"""Home: the picked image as the model sees it, and its top-5 predictions."""

from __future__ import annotations

import streamlit as st

from pages import _ui as ui
from vizkit import render
from vizkit.methods.prediction import predict

ui.page_header(
    "vizkit — see inside a CNN",
    "Pick a model and an image in the sidebar, then open a page: activations, deconvnet and "
    "guided backprop, occlusion, class activation maps, filters, the model explorer, style transfer.",
)
m, picked = ui.require_inputs()
left, right = st.columns([1, 2])
with left:
    ui.picture(m.resize(picked.image), f"{picked.name}, as the model sees it ({m.input_size}×{m.input_size})",
               ui.safe_name("input", m.spec.name, picked.name), key="home_input")
    if picked.label is not None:
        st.caption(f"True class: **{m.classes[picked.label]}**" if picked.label < len(m.classes) else "")
with right:
    predictions = ui.attempt(predict, m, picked.image, top=5)
    if predictions is not None:
        best, prob = predictions[0]
        st.metric("Top prediction", best, f"{prob:.1%}", delta_color="off")
        st.plotly_chart(render.topk_figure(predictions), key="home_top5")
