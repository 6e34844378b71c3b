"""vizkit's Streamlit entry: ``streamlit run app.py``.

Builds ``st.navigation`` over the pages inside ``run()``; the sidebar (model, device, image) is
drawn here, before the chosen page runs, so every page sees the same model and image.
"""

from __future__ import annotations

import streamlit as st

from pages import _ui as ui

# (file in pages/, title, icon)
PAGES = [
    ("home.py", "Home", ":material/home:"),
    ("activations.py", "Activations", ":material/grid_view:"),
    ("deconvnet.py", "Deconvnet & guided backprop", ":material/flip:"),
    ("occlusion.py", "Occlusion", ":material/select:"),
    ("cam.py", "Class activation maps", ":material/local_fire_department:"),
    ("filters.py", "Filters", ":material/filter:"),
    ("explorer.py", "Model explorer", ":material/account_tree:"),
    ("style_transfer.py", "Style transfer", ":material/palette:"),
    ("live.py", "Live camera", ":material/videocam:"),
    ("video.py", "Video", ":material/movie:"),
    # Zeiler & Fergus 2013's other analyses
    ("zf_evolution.py", "Z&F: feature evolution", ":material/timeline:"),
    ("zf_invariance.py", "Z&F: invariance", ":material/rotate_right:"),
    ("zf_correspondence.py", "Z&F: correspondence", ":material/join_inner:"),
    ("zf_probes.py", "Z&F: linear probes", ":material/stacked_bar_chart:"),
]


def pages() -> list[st.Page]:
    return [st.Page(f"pages/{file}", title=title, icon=icon, default=(file == "home.py"))
            for file, title, icon in PAGES]


def run() -> None:
    st.set_page_config(page_title="vizkit", page_icon=":material/visibility:", layout="wide")
    page = st.navigation(pages())
    st.sidebar.markdown("### vizkit")
    ui.sidebar()
    page.run()


if __name__ == "__main__":
    run()
