"""Style transfer: the content of one image in the style of another (Gatys et al. 2015)."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

import vizkit as vk
from pages import _ui as ui
from vizkit import render
from vizkit.methods.style.extractors import (
    EXTRACTORS,
    available_extractors,
    get_extractor,
    layer_label,
    lite0_available,
    vgg19_available,
)
from vizkit.methods.style.transfer import COARSE_MIN_SIZE, INITS, style_images, style_transfer

PAGE = "style"
KEY_RUN = "style_run"  # the run's state: params, history of losses, last preview, finished flag
SIZES = [64, 96, 128, 192, 256, 384, 512]
STEPS = [10, 25, 50, 100, 200, 300, 500]
UI_REFRESH_S = 0.4  # at most this often the preview and curves are redrawn while running

ui.page_header(
    "Style transfer",
    "Gatys, Ecker & Bethge 2015: an image is optimized so that its deep features match the "
    "content image's and the Gram matrices of its features (which channels fire together, "
    "wherever they are) match the style image's. *Preserve colors* transfers luminance only "
    "(Gatys et al. 2016).",
)


@st.cache_resource(show_spinner=False)
def _bundled_style(path: str, mtime: float) -> np.ndarray:
    return vk.load_image(path)


def _uploaded(label: str, key: str) -> np.ndarray | None:
    upload = st.file_uploader(label, type=ui.UPLOAD_TYPES, key=key)
    if upload is None:
        return None
    if upload.size > ui.MAX_UPLOAD_MB * 2**20:
        st.error(f"{upload.size / 2**20:.0f} MB is over the {ui.MAX_UPLOAD_MB} MB limit.")
        return None
    return ui.attempt(vk.load_image, upload.getvalue())


# ---------------------------------------------------------------- extractor
extractor_name = st.selectbox("Feature extractor", available_extractors(), key="style_extractor",
                              format_func=lambda name: EXTRACTORS[name].title)
if not vgg19_available() and lite0_available():
    st.info(
        "VGG19's ImageNet weights are not on this machine, so the default features come from "
        "**EfficientNet-Lite0**, trained on ImageNet and installed with vizkit (it works offline): "
        "the ReLU6 outputs of its first blocks for style, block 10 for content, on a slightly "
        "blurred image. A run starts from the content in the style's colours. Untrained random "
        "filters (Ustyuzhaninov et al. 2017) stay in the list. "
        "To use VGG19, run `python -m vizkit weights import FILE --model vgg19` with torchvision's "
        "vgg19 file."
    )
elif not vgg19_available():
    st.info(
        "VGG19's ImageNet weights are not on this machine, so the features come from **untrained "
        "random filters** at several scales (Ustyuzhaninov et al. 2017): they capture textures and "
        "colors, not VGG's learned features. To use VGG19, run "
        "`python -m vizkit weights import FILE --model vgg19` with torchvision's vgg19 file."
    )
extractor = ui.attempt(get_extractor, extractor_name)
if extractor is None:
    st.stop()

# ---------------------------------------------------------------- images
left, right = st.columns(2)
with left:
    st.subheader("Content")
    content_source = st.radio("Content image", ["Sidebar image", "Upload"], horizontal=True,
                              key="style_content_source", label_visibility="collapsed")
    if content_source == "Upload":
        content = _uploaded("Content image", "style_content_upload")
        content_name = "upload"
    else:
        picked = st.session_state.get("vk_picked")
        content = picked.image if picked is not None else None
        content_name = picked.name if picked is not None else "-"
    if content is not None:
        st.image(render.enlarge(content, 160), width=200)
with right:
    st.subheader("Style")
    bundled = style_images()
    options = [*bundled, "Upload"]
    style_choice = st.selectbox("Style image", options, key="style_choice",
                                help="Procedural textures made by vizkit (assets/styles), or your own.")
    if style_choice == "Upload":
        style = _uploaded("Style image", "style_style_upload")
    else:
        path = bundled[style_choice]
        style = _bundled_style(str(path), path.stat().st_mtime)
    if style is not None:
        st.image(render.enlarge(style, 160), width=200)

# ---------------------------------------------------------------- settings
c1, c2, c3, c4 = st.columns(4)
# The first run: 256 px, 50 steps, the extractor's start, weights and scale (with EfficientNet-Lite0:
# from the content in the style's colours, at full size; a stylized photo in a few seconds on 2
# CPU cores). bench/style_quality.py measures these defaults.
size = int(c1.select_slider("Size (longer side, px)", SIZES, value=256, key="style_size"))
steps = int(c2.select_slider("Steps", STEPS, value=50, key="style_steps",
                             help="Evaluations of the loss and its gradient."))
OPTIMIZERS = ["lbfgs", "adam"]
optimizer = c3.radio("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(extractor.optimizer),
                     horizontal=True, key=f"style_optimizer_{extractor.name}",
                     help="L-BFGS (Gatys et al.) suits VGG19 and EfficientNet-Lite0; Adam descends "
                          "more smoothly on the untrained random filters.")
INIT_LABELS = {"content": "content", "palette": "content in the style's colours", "noise": "noise"}
init = c4.radio("Start from", INITS, index=INITS.index(extractor.init), format_func=INIT_LABELS.get,
                key=f"style_init_{extractor.name}",
                help="The content in the style's colours: the content image recoloured to take the "
                     "style image's colour distribution (Pitié et al. 2005), then stylized.")
w1, w2, w3 = st.columns(3)
default_style = round(2 * np.log10(extractor.style_weight)) / 2  # the half-decade slider's step
log_content = w1.slider("Content weight (log₁₀ α)", -3, 3, 0, key="style_w_content")
log_style = w2.slider("Style weight (log₁₀ β)", 0.0, 9.0, default_style, step=0.5,
                      key=f"style_w_style_{extractor.name}")
default_tv = int(round(np.log10(extractor.tv_weight))) if extractor.tv_weight > 0 else -6
log_tv = w3.slider("Smoothness (log₁₀ TV weight; −6 = off)", -6, 2, default_tv,
                   key=f"style_w_tv_{extractor.name}")
k1, k2 = st.columns(2)
preserve_color = k1.checkbox("Preserve colors (transfer luminance only)", key="style_preserve")
if preserve_color and init == "palette":  # keeping the content's colours: start from the content
    k1.caption("Preserving colours: the run starts from the content's own colours.")
    init = "content"
coarse_possible = size // 2 >= COARSE_MIN_SIZE
# Below 256 px the box is shown off and disabled (its own key keeps the user's choice for later).
coarse_to_fine = k2.checkbox(
    f"Coarse-to-fine (from {2 * COARSE_MIN_SIZE} px)", value=coarse_possible and extractor.coarse_to_fine,
    key=f"style_coarse_{extractor.name}" if coarse_possible else "style_coarse_off",
    disabled=not coarse_possible,
    help=f"From {2 * COARSE_MIN_SIZE} px up: the first half of the steps run at half the size "
         "(a quarter of the work each), then the image is refined at full size. "
         "Losses in the coarse half are at half size.")
with st.expander("Layers"):
    leaves = extractor.layers()
    label = lambda name: layer_label(extractor, name)  # noqa: E731
    style_layers = st.multiselect("Style layers (Gram matrices)", leaves, list(extractor.style_layers),
                                  format_func=label, key=f"style_layers_{extractor.name}")
    content_layers = st.multiselect("Content layers", leaves, list(extractor.content_layers),
                                    format_func=label, key=f"style_content_layers_{extractor.name}")

ready = content is not None and style is not None and style_layers and content_layers
b1, b2, _ = st.columns([1, 1, 4])
go = b1.button("Run", type="primary", key="style_go", disabled=not ready)
b2.button("Stop", key="style_stop", help="Stops a running transfer; the last preview is kept.")
if content is None:
    st.info("Pick an image in the sidebar or upload a content image.")
if style is None:
    st.info("Upload a style image or pick a bundled one.")


def _curves(history: list[tuple[int, dict[str, float]]]):
    terms = ["total", "content", "style"] + (["tv"] if any(h[1]["tv"] for h in history) else [])
    fig = render.curves_figure({t: ([h[0] for h in history], [h[1][t] for h in history]) for t in terms},
                               xaxis="step", yaxis="weighted loss")
    fig.update_yaxes(type="log")
    full = history[-1][2]
    switch = next((step for step, _, work in history if work == full), None)
    if switch is not None and history[0][2] != full:
        fig.add_vline(x=switch, line_dash="dot", annotation_text="full size")
    return fig


def _show(run: dict, live: int = 0) -> None:
    """The preview (or result), its status line, the loss curves and the download.

    ``live`` numbers the redraws during a run (element keys must differ within one script run).
    """
    view_img, view_info = st.columns([1, 1])
    last = run["last"]
    state = ("done" if run["finished"] and not last.stopped else
             "stopped" if run["finished"] or not live else "running")
    coarse = last.work_size is not None and tuple(last.work_size) != last.image.shape[:2]
    stage = f" (coarse stage, computed at {last.work_size[1]}×{last.work_size[0]})" if coarse else ""
    with view_img:
        st.image(render.enlarge(last.image, 256),
                 caption=f"{state}: step {last.step} of {run['steps']} · {last.image.shape[1]}×"
                         f"{last.image.shape[0]} px{stage} · {run['title']}")
        if not live:
            ui.download(last.image, ui.safe_name("style", run["content_name"], run["style_name"], last.step),
                        key="dl_style")
    with view_info:
        st.markdown(f"**{state.capitalize()}** at step {last.step}/{run['steps']} — total loss "
                    f"{last.losses['total']:.4g} (content {last.losses['content']:.3g}, "
                    f"style {last.losses['style']:.3g}, TV {last.losses['tv']:.3g})")
        if len(run["history"]) > 1:
            st.plotly_chart(_curves(run["history"]), key=f"style_curves_{live}")


if go and ready:
    run = {
        "steps": steps, "title": extractor.title, "content_name": content_name,
        "style_name": style_choice, "history": [], "last": None, "finished": False,
    }
    st.session_state[KEY_RUN] = run
    bar = st.progress(0.0, text="Preparing…")
    live = st.empty()
    generator = style_transfer(
        content, style, extractor=extractor, content_layers=content_layers, style_layers=style_layers,
        content_weight=10.0 ** log_content, style_weight=10.0 ** log_style,
        tv_weight=0.0 if log_tv <= -6 else 10.0 ** log_tv, optimizer=optimizer, steps=steps, size=size,
        init=init, preserve_color=preserve_color, preview_every=1, coarse_to_fine=coarse_to_fine,
    )
    shown, redraws = 0.0, 0
    started = time.perf_counter()
    try:
        for item in generator:
            # Kept before anything is drawn: a Stop press interrupts at the next Streamlit call.
            run["last"] = item
            run["history"].append((item.step, item.losses, item.work_size))
            if item.done or time.perf_counter() - shown > UI_REFRESH_S:
                shown = time.perf_counter()
                rate = item.step / max(shown - started, 1e-9)
                bar.progress(item.step / steps, text=f"Step {item.step}/{steps} · {rate:.1f} steps/s")
                redraws += 1
                with live.container():
                    _show(run, live=redraws)
        run["finished"] = True
    except Exception as exc:  # noqa: BLE001 - a message; reruns and stops are BaseExceptions, not caught
        ui.show_error(exc)
    finally:
        generator.close()
    bar.empty()
    live.empty()

run = st.session_state.get(KEY_RUN)
if run is None or run["last"] is None:
    st.caption("Choose images and settings, then press **Run**; the preview updates as it optimizes.")
    st.stop()
_show(run)
