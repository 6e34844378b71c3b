"""Deconvnet, guided backprop and saliency side by side, each with its sanity-check score."""

from __future__ import annotations

import streamlit as st

import vizkit as vk
from pages import _ui as ui
from vizkit import render
from vizkit.methods.registry import list_methods
from vizkit.metrics.sanity import sanity_check

PAGE = "deconvnet"
METHODS = {spec.name: spec for spec in list_methods(family="backprop")}


def explain(spec, m, img, target, layer, channel):
    """One method call: a class target, or a unit for the methods that explain units (else None)."""
    if layer is None:
        return spec.run(m, img, target=target)
    if "unit" in spec.targets:
        return spec.run(m, img, unit=(layer, channel))
    return None


ui.page_header(
    "Deconvnet & guided backprop",
    "Three ways to project a class score or one feature map back to pixels. These maps partly "
    "reconstruct the image whatever the weights (Adebayo et al. 2018): run the sanity check to "
    "see how much each one depends on what the model learned.",
)
m, picked = ui.require_inputs()
kind = st.radio("Explain", ["A class", "A layer's channel"], horizontal=True, key="dc_kind")
layer = channel = target = None
if kind == "A class":
    target = ui.class_options(m, picked, key="dc_class")
else:
    col1, col2 = st.columns(2)
    with col1:
        layer = ui.layer_picker(m, key="dc_layer")
    with col2:
        n = ui.channel_count(m, layer) or 4096
        channel = int(st.number_input(f"Channel (0–{n - 1})", 0, n - 1, 0, key=f"dc_channel_{layer}"))
sanity = st.checkbox("Also run the model-randomization sanity check (slower)", key="dc_sanity",
                     help="Adebayo et al. 2018: re-compute each map with randomized weights and compare. "
                          "A map that barely changes shows the image, not the model.")

if st.button("Compute", type="primary", key="dc_go"):
    results = {}
    with st.spinner("Computing…"):
        for method, spec in METHODS.items():
            try:
                results[method] = explain(spec, m, picked.image, target, layer, channel)
            except Exception as exc:  # noqa: BLE001 - one method failing must not hide the others
                results[method] = exc
        scores = {}
        if sanity:
            for method, result in results.items():
                if isinstance(result, vk.Explanation):
                    try:
                        if layer is None:
                            scores[method] = sanity_check(m, picked.image, method, target=target)
                        else:  # the unit form: the same layer and channel at every step
                            scores[method] = sanity_check(
                                m, picked.image, lambda mm, im, _t, spec=METHODS[method]: spec.run(
                                    mm, im, unit=(layer, channel)))
                    except Exception as exc:  # noqa: BLE001
                        scores[method] = exc
    ui.store(PAGE, m, picked, {"results": results, "scores": scores, "what": (kind, target, layer, channel)})

kept = ui.stored_or_stop(PAGE, m, picked, "Choose a target and press **Compute**.")
kind_, target_, layer_, channel_ = kept["what"]
what = (f"class **{m.classes[target_]}**" if layer_ is None
        else f"channel **{channel_}** of **{layer_}**")
st.markdown(f"Explaining {what}.")
base = m.resize(picked.image)
columns = st.columns(len(METHODS))
for col, (method, spec) in zip(columns, METHODS.items(), strict=True):
    title = spec.title
    with col:
        st.subheader(title)
        st.caption(spec.caption)
        result = kept["results"].get(method)
        if isinstance(result, Exception):
            ui.show_error(result)
            continue
        if result is None:
            st.info(f"{title} explains class scores only; pick *A class* to compare it.")
            continue
        ui.picture(render.signed_image(result.raw), "Pixel-space signal (grey = 0)",
                   ui.safe_name(method, m.spec.name, "signal"), key=f"dc_{method}_raw", min_side=224)
        ui.picture(render.overlay(base, result.map, 0.6, "inferno"), "max |signal| over colours",
                   ui.safe_name(method, m.spec.name, "map"), key=f"dc_{method}_map", min_side=224)
        score = kept["scores"].get(method)
        if isinstance(score, Exception):
            ui.show_error(score)
        elif score is not None:
            ui.show_sanity(score, key=f"dc_{method}_sanity")
