"""Correspondence analysis (Zeiler & Fergus 2013, section 5.2, Table 1) on the bundled scenes."""

from __future__ import annotations

import numpy as np
import streamlit as st

from pages import _ui as ui
from vizkit import render
from vizkit.analyses.correspondence import (
    PARTS,
    correspondence,
    correspondence_figure,
    correspondence_rows,
    part_rects,
    random_rects,
)
from vizkit.analyses.features import default_layers, table_text

PAGE = "zf_correspondence"
CUSTOM = "custom region"

ui.page_header(
    "Correspondence",
    "Zeiler & Fergus 2013, section 5.2: hide the same part of the object in many images and, per "
    "layer, compare the signs of the feature changes between every pair of images of a class "
    "(mean Hamming distance: the fraction of units whose change has a different sign). A layer "
    "that relates that part across images changes consistently: lower than for random parts of "
    "the object of the same size.",
)
m = ui.require_model()
subset = ui.scenes()
if not m.spec.bundled or subset is None:
    st.info("Correspondence runs on the bundled FashionScenes (their object boxes say where the "
            "parts are): choose the bundled model **fashion-zf** in the sidebar.")
    st.stop()

c1, c2 = st.columns([1, 1])
with c1:
    part_name = st.selectbox("Part of the object's box", [*PARTS, CUSTOM], key="cor_part")
    if part_name == CUSTOM:
        fx = st.slider("Region across the box (fraction of its width)", 0.0, 1.0, (0.0, 0.5), 0.05,
                       key="cor_fx")
        fy = st.slider("Region down the box (fraction of its height)", 0.0, 1.0, (0.0, 0.5), 0.05,
                       key="cor_fy")
        part = (fx[0], fy[0], fx[1], fy[1])
    else:
        part = PARTS[part_name]
    n = int(st.slider("Scenes", 20, len(subset), min(200, len(subset)), 10, key="cor_n",
                      help="The first N held-out scenes; pairs are formed within each class."))
    names = ui.spatial_layers(m)
    layers = st.multiselect("Layers", names, default=[x for x in default_layers(m) if x in names],
                            key="cor_layers")
    seed = int(st.number_input("Seed of the random occlusions", 0, 10_000, 0, key="cor_seed"))
valid = part[0] < part[2] and part[1] < part[3]
with c2:
    if valid:
        idx = int(st.number_input("Preview scene", 0, n - 1, 0, key="cor_preview"))
        box = subset.boxes[idx:idx + 1]
        rect = part_rects(box, part, m.input_size)
        rand = random_rects(rect, box, m.input_size, np.random.default_rng(seed))
        big = render.enlarge(subset.images[idx], 256)
        f = big.shape[0] / subset.images.shape[1]
        pic = render.draw_box(big, box[0] * f, (255, 255, 0), 2)
        pic = render.draw_box(pic, rect[0] * f, (255, 0, 0), 2)
        pic = render.draw_box(pic, rand[0] * f, (0, 160, 255), 2)
        st.image(pic, caption="yellow: object box · red: the occluded part · blue: a random occlusion "
                              "of the same size (filled with the mean colour)")
    else:
        st.warning("The region is empty: make both ranges wider than zero.")

b1, b2, _ = st.columns([1, 1, 4])
go = b1.button("Compute", type="primary", key="cor_go", disabled=not (layers and valid))
b2.button("Stop", key="cor_stop", help="Stops a running computation (nothing is kept).")
if go:
    bar = st.progress(0.0, text="Occluding and comparing…")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"Occluding and comparing… {done}/{total} scenes")

    result = ui.attempt(correspondence, m, subset.images[:n], subset.boxes[:n], part, subset.labels[:n],
                        layers, seed=seed, progress=progress)
    bar.empty()
    if result is not None:
        ui.store(PAGE, m, None, (part_name, result))

kept = ui.stored_or_stop(PAGE, m, None, "Choose a part and press **Compute**.")
label, result = kept
st.plotly_chart(correspondence_figure(result, label), key="cor_fig")
rows = correspondence_rows(result)
st.dataframe(rows, key="cor_table")
st.caption(f"{result.n_pairs} pairs within classes of {result.n_images} scenes. Part (x0, y0, x1, y1) "
           f"= {tuple(round(v, 2) for v in result.part)} of each box. Lower than random: the layer "
           "relates this part across images.")
st.download_button("Download CSV", table_text(rows), file_name="correspondence.csv", mime="text/csv",
                   key="dl_cor_csv", on_click="ignore")
