"""Filters: a convolution's kernels as pictures, and images that maximize chosen channels."""

from __future__ import annotations

import streamlit as st

from pages import _ui as ui
from vizkit import render
from vizkit.methods.filters import filter_grid, filter_weights, maximize_activation

PAGE = "filters"
RUNNING = "filt_running"

ui.page_header(
    "Filters",
    "The first layer's kernels are pictures in their own right (Zeiler & Fergus 2013, Fig. 5). "
    "Deeper channels are shown by the images that excite them most: gradient ascent on the "
    "input with a decorrelated Fourier parameterization and random jitter, scale and rotation "
    "(Olah et al. 2017).",
)
m = ui.require_model()

st.subheader("Kernels")
convs = m.conv_layers()
if not convs:
    st.info("This model has no Conv2d layer.")
else:
    k1, k2 = st.columns([3, 1])
    conv = k1.selectbox("Convolution", convs, index=0, key=f"filt_conv_{m.spec.name}")
    scale = k2.radio("Scale", ["filter", "layer"], horizontal=True, key="filt_scale",
                     help="filter: each kernel by its own largest weight; layer: by the layer's.")
    fw = ui.attempt(filter_weights, m, conv, scale=scale)
    if fw is not None:
        grid = filter_grid(fw)
        kind = "RGB kernels" if fw.rgb else "one row per output channel, first input channels across"
        st.image(grid, caption=f"{conv}: {len(fw.channels)} kernels of "
                               f"{fw.weights.shape[2]}×{fw.weights.shape[3]} ({kind}); grey = 0")
        ui.download(grid, ui.safe_name("kernels", m.spec.name, conv), key="dl_filt_kernels")

st.subheader("Activation maximization")
c1, c2, c3 = st.columns([2, 2, 1])
with c1:
    layer = ui.layer_picker(m, key="filt_layer")
n = ui.channel_count(m, layer) or 1
with c2:
    channels = st.multiselect(f"Channels (0–{n - 1})", list(range(n)), default=list(range(min(4, n))),
                              key=f"filt_channels_{m.spec.name}_{layer}", max_selections=32)
with c3:
    steps = int(st.select_slider("Steps", [16, 32, 64, 128, 256, 512], value=64, key="filt_steps"))
    size = int(st.select_slider("Size", [32, 64, 96, 128, 160, 224],
                                value=min(128, max(64, m.input_size)), key="filt_size"))
b1, b2, _ = st.columns([1, 1, 4])
go = b1.button("Maximize", type="primary", key="filt_go", disabled=not channels)
b2.button("Stop", key="filt_stop", help="Stops a running optimization.")
if st.session_state.pop(RUNNING, False) and not go:
    st.warning("The last optimization was stopped before it finished; no images were kept.")
if go:
    bar = st.progress(0.0, text="Optimizing…")

    def progress(step: int, total: int) -> bool:
        bar.progress(min(1.0, step / max(total, 1)), text=f"Optimizing… step {step}/{total}")
        return True

    st.session_state[RUNNING] = True
    result = ui.attempt(maximize_activation, m, layer, channels, steps=steps, size=size, progress=progress)
    st.session_state.pop(RUNNING, None)
    bar.empty()
    if result is not None:
        ui.store(PAGE, m, None, result)

result = ui.stored_or_stop(PAGE, m, None, "Choose channels and press **Maximize**.")
st.markdown(f"**{result.layer}**: {len(result.channels)} channels, {result.steps} steps, "
            f"{result.images.shape[1]}×{result.images.shape[2]} px"
            + (" — stopped early" if result.stopped else ""))
grid = render.tile(list(result.images), pad=4)
ui.download(grid, ui.safe_name("maximization", m.spec.name, result.layer), key="dl_filt_grid",
            label="Download all (PNG)")
cols = st.columns(min(4, len(result.channels)))
for i, (ch, img, score) in enumerate(zip(result.channels, result.images, result.scores, strict=True)):
    with cols[i % len(cols)]:
        ui.picture(img, f"channel {ch} (mean activation {score:.3g})",
                   ui.safe_name("maximization", m.spec.name, result.layer, ch), key=f"filt_img_{i}",
                   min_side=160)
