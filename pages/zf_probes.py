"""Layer-wise linear probes (Zeiler & Fergus 2013, Table 6): how linearly separable the classes
are at each layer."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from pages import _ui as ui
from vizkit.analyses.features import default_layers, table_text
from vizkit.analyses.probes import (
    fashion_probe_data,
    fashion_probe_note,
    folder_probe_data,
    linear_probes,
    probe_rows,
    probes_figure,
)

PAGE = "zf_probes"
SCENES = "FashionScenes (train scenes / bundled held-out scenes)"
FOLDER = "A labelled image folder on this machine"
# Web users may only read folders below this root (an operator's choice): a free path would let
# anyone browse the server's file system.
DATA_ROOT = os.environ.get("VIZKIT_DATA_ROOT", "")


def labelled_folder(name: str) -> Path | None:
    """``name`` below VIZKIT_DATA_ROOT, or None when there is no root or it escapes the root."""
    if not DATA_ROOT:
        return None
    root = Path(DATA_ROOT).resolve()
    path = (root / name.strip()).resolve()
    return path if path.is_relative_to(root) and path.is_dir() else None


@st.cache_data(show_spinner="Rendering the train scenes…", max_entries=2)
def fashion_data(n_train: int, n_test: int, note: str | None):
    """The probes' scenes; ``note`` (the fallback's, or None) keys the cache by data source."""
    x_train, y_train, x_test, y_test, classes = fashion_probe_data(n_train)
    return x_train, y_train, x_test[:n_test], y_test[:n_test], classes


ui.page_header(
    "Linear probes",
    "Zeiler & Fergus 2013, Table 6: each layer's features (globally average-pooled) of a train set "
    "feed a linear classifier (logistic regression, scikit-learn); its accuracy on held-out images "
    "shows how much class information each layer makes linearly readable. It usually rises with depth.",
)
m = ui.require_model()
sources = [SCENES, FOLDER] if m.spec.bundled else [FOLDER]
c1, c2 = st.columns(2)
with c1:
    source = st.radio("Data", sources, key=f"probe_source_{m.spec.bundled}")
    if source == SCENES:
        n_train = int(st.select_slider("Train scenes", [200, 500, 1000, 2000, 3000, 5000], value=1000,
                                       key="probe_n"))
        n_test = int(st.select_slider("Held-out scenes", [200, 500, 1000], value=1000, key="probe_test"))
        folder = ""
        note = fashion_probe_note()
        if note:
            st.info(note)
    else:
        if not DATA_ROOT:
            st.info("Labelled folders are off: start the app with VIZKIT_DATA_ROOT=/path/to/datasets "
                    "to offer the folders below that path.")
        folder = st.text_input("Folder below VIZKIT_DATA_ROOT (folder/<class>/*.png)", key="probe_folder",
                               disabled=not DATA_ROOT,
                               help="A folder with one subfolder per class; a quarter of each class is "
                                    "held out for testing.")
with c2:
    names = ui.spatial_layers(m)
    layers = st.multiselect("Layers", names, default=[x for x in default_layers(m) if x in names],
                            key=f"probe_layers_{m.spec.name}")

ready = bool(layers) and (source == SCENES or bool(folder.strip()))
b1, b2, _ = st.columns([1, 1, 4])
go = b1.button("Compute", type="primary", key="probe_go", disabled=not ready)
b2.button("Stop", key="probe_stop", help="Stops a running computation (nothing is kept).")
if go:
    bar = st.progress(0.0, text="Extracting features…")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"Features and classifiers… {done}/{total}")

    if source == SCENES:
        data = ui.attempt(fashion_data, n_train, n_test, note)
    elif labelled_folder(folder) is None:
        st.error("That is not a folder below VIZKIT_DATA_ROOT.")
        data = None
    else:
        data = ui.attempt(folder_probe_data, labelled_folder(folder))
    if data is not None:
        x_train, y_train, x_test, y_test, classes = data
        result = ui.attempt(linear_probes, m, x_train, y_train, x_test, y_test, layers=layers,
                            classes=classes, progress=progress)
        if result is not None:
            ui.store(PAGE, m, None, result)
    bar.empty()

result = ui.stored_or_stop(PAGE, m, None, "Choose the data and press **Compute**.")
st.plotly_chart(probes_figure(result, f"{m.spec.title}: linear probes"), key="probe_fig")
rows = probe_rows(result)
st.dataframe(rows, key="probe_table")
st.caption(f"{result.n_train} train and {result.n_test} test images, {len(result.classes)} classes; "
           f"chance (majority class) {result.chance:.1%}.")
st.download_button("Download CSV", table_text(rows), file_name="probes.csv", mime="text/csv",
                   key="dl_probe_csv", on_click="ignore")
