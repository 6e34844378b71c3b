"""The app shell: every page renders, a zoo model without weights says how to get them, rules."""

from __future__ import annotations

import ast

import pytest

import app
from app_support import BUNDLED, ROOT, assert_clean, open_page
from vizkit.models.registry import get_spec

PAGE_FILES = [file for file, _, _ in app.PAGES]


def test_navigation_lists_every_page_and_every_listed_file_exists():
    titles = [title for _, title, _ in app.PAGES]
    assert titles[0] == "Home" and "Style transfer" in titles
    for required in ["home.py", "activations.py", "deconvnet.py", "occlusion.py", "cam.py",
                     "filters.py", "explorer.py"]:
        assert required in PAGE_FILES
    # The navigation lists files, it does not look for them: every one must be there, and every
    # page script in pages/ must be listed.
    assert all((ROOT / "pages" / file).is_file() for file in PAGE_FILES)
    assert {p.name for p in (ROOT / "pages").glob("*.py") if not p.name.startswith("_")} == set(PAGE_FILES)


@pytest.mark.slow
@pytest.mark.parametrize("page", [p.removesuffix(".py") for p in PAGE_FILES])
def test_every_page_renders_with_the_bundled_model(page, bundled_ready):
    at = open_page(None if page == "home" else page)
    assert_clean(at)
    assert at.title, f"{page} shows no title"


def test_sidebar_shows_model_device_and_image_source(bundled_ready):
    at = open_page(state=BUNDLED)
    assert at.sidebar.selectbox(key="vk_model").value == "fashion-zf"
    assert any(f"Device: **{bundled_ready.device}**" in c.value for c in at.sidebar.caption)
    assert any("not a photo model" in c.value for c in at.sidebar.caption)
    assert at.sidebar.radio(key="vk_source").options == ["Sample image", "Dataset scene", "Upload"]
    assert at.sidebar.radio(key="vk_source").value == "Dataset scene"  # the bundled model's domain
    assert len(at.sidebar.image) == 1


@pytest.mark.slow
def test_the_app_opens_the_cat_photo_on_a_real_imagenet_network():
    """What `make run` shows first: chelsea on efficientnet_lite0, cat classes in its top 3."""
    at = open_page()
    assert_clean(at)
    assert at.sidebar.selectbox(key="vk_model").value == "efficientnet_lite0"
    assert at.sidebar.radio(key="vk_source").value == "Sample image"
    assert at.sidebar.selectbox(key="vk_sample").value == "chelsea"
    assert any("A real ImageNet network" in c.value for c in at.sidebar.caption)
    assert at.metric[0].value in {"Egyptian cat", "tiger cat", "tabby"}
    import json

    bar = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert set(bar["y"][-3:]) <= {"Egyptian cat", "tiger cat", "tabby"}, bar["y"]


def test_the_image_source_picks_the_model_trained_for_it(bundled_ready):
    """Dataset scenes select fashion-zf; going back to a photo source selects efficientnet_lite0."""
    at = open_page()
    at.sidebar.radio(key="vk_source").set_value("Dataset scene").run()
    assert at.session_state["vk_model"] == "fashion-zf"
    assert not at.exception, [e.value for e in at.exception]
    at = open_page(state=BUNDLED)
    at.sidebar.radio(key="vk_source").set_value("Upload").run()
    assert at.session_state["vk_model"] == "efficientnet_lite0"


@pytest.mark.slow
def test_a_zoo_model_without_weights_explains_how_to_get_them(bundled_ready):
    at = open_page(state={"vk_model": "vgg16"})
    assert not at.exception, [e.value for e in at.exception]
    assert any("python -m vizkit weights import FILE --model vgg16" in w.value for w in at.sidebar.warning)
    options = at.sidebar.selectbox(key="vk_model").options
    assert options[0] == "fashion-zf (bundled, FashionScenes)"
    import vizkit as vk

    zoo = [o for o, n in zip(options, vk.list_models(), strict=True) if get_spec(n).weights_enum]
    assert zoo and all(o.endswith("weights missing") for o in zoo)  # TORCH_HOME is empty in tests
    for page in PAGE_FILES:
        if page in ("home.py", "style_transfer.py"):  # style transfer has its own extractor, not the model
            continue
        at.switch_page(f"pages/{page}").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        warnings = [w.value for w in at.main.warning]
        assert any("--model vgg16" in w for w in warnings), (page, warnings)


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_pages_never_import_torch():
    files = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]
    for path in files:
        bad = [name for name in imported_modules(path) if name.split(".")[0] in ("torch", "torchvision")]
        assert not bad, f"{path.name} imports {bad}"


def test_render_and_ui_glue_split():
    render = ROOT / "vizkit" / "render.py"
    assert "streamlit" not in {n.split(".")[0] for n in imported_modules(render)}
