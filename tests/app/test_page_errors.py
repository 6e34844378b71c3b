"""Every page turns vizkit errors into a clear ``st.error``, never a traceback; downloads are clean.

Each page of the app gets a hostile upload (a different kind per page) and a zoo model whose
weights file is a malicious pickle; the page must show an error saying what is wrong, with no
exception element. (A model with no weights at all is covered in test_app.py.) The server
settings in .streamlit/config.toml are read back through Streamlit's own config loader. The
page's PNG download of an input carrying EXIF GPS must carry no metadata, and no user file name
may become a path or a download name.
"""

from __future__ import annotations

import ast
import io
import pickle
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import app
from app_support import ROOT, open_page
from support import png_chunk_types
from vizkit.models.registry import get_spec
from vizkit.models.weights import zoo_checkpoint_path

PAGE_FILES = [file.removesuffix(".py") for file, _, _ in app.PAGES]
NEEDS_MODEL = {p for p in PAGE_FILES if "require_model()" in (ROOT / "pages" / f"{p}.py").read_text()
               or "require_inputs()" in (ROOT / "pages" / f"{p}.py").read_text()}


def _png(arr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb() -> bytes:
    """A ~20 KB PNG that declares 20000×10000 gray pixels."""
    ihdr = struct.pack(">IIBBBBB", 20000, 10000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (20001 * 200), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


NOISE = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
# (name the user gave it, bytes, a word the error message must contain)
HOSTILE = [
    ("holiday.png", b"hello, I am a text file pretending to be a PNG\n", "text"),
    ("bomb.png", _bomb(), "pixels"),
    ("cut.png", _png(NOISE)[:3000], "truncated"),
    ("setup.png", b"\x7fELF\x02\x01\x01" + bytes(200), "executable"),
    ("print.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "Ghostscript"),
    ("../../etc/passwd.png", b"", "empty"),
]

PWNED = Path("/tmp/vizkit-page-errors-pickle-ran")


class _Payload:
    """Unpickling this would run a shell command; the weights loader must refuse it."""

    def __reduce__(self):
        import os

        return os.system, (f"touch {PWNED}",)


@pytest.fixture
def poisoned_alexnet(monkeypatch, tmp_path):
    """TORCH_HOME holding an AlexNet checkpoint that is a malicious pickle."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = zoo_checkpoint_path(get_spec("alexnet"))
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps({"features.0.weight": _Payload()}, protocol=2))
    PWNED.unlink(missing_ok=True)
    yield path
    assert not PWNED.exists(), "the pickle payload ran"


@pytest.fixture(autouse=True)
def navigation_like_the_server(monkeypatch):
    """Runs app.py (sidebar + st.navigation) on every AppTest rerun, as the real server does.

    AppTest resets ``PagesManager.uses_pages_directory`` before each run; because the app's
    pages live in a folder named ``pages/``, Streamlit then takes the legacy pages-directory
    path and reruns ``pages/<page>.py`` alone, without app.py's sidebar. The server decides
    this once, and ``st.navigation`` switches it off for good.
    """
    from streamlit.runtime.scriptrunner import script_runner

    class NoPagesDirectory:
        uses_pages_directory = False

    monkeypatch.setattr(script_runner, "PagesManager", NoPagesDirectory)


def _errors(elements) -> list[str]:
    return [e.value for e in elements]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGE_FILES)
def test_bad_upload_and_bad_weights_become_clear_errors_on_every_page(page, poisoned_alexnet,
                                                                      bundled_ready):
    name, data, word = HOSTILE[PAGE_FILES.index(page) % len(HOSTILE)]
    at = open_page(None if page == "home" else page)
    assert not at.exception, _errors(at.exception)

    at.sidebar.radio(key="vk_source").set_value("Upload").run()
    at.sidebar.file_uploader(key="vk_upload").upload(name, data, "image/png")
    at.run()
    assert not at.exception, _errors(at.exception)
    shown = _errors(at.sidebar.error)
    assert any(word.lower() in e.lower() for e in shown), (name, shown)
    assert not any("Traceback" in e or 'File "' in e for e in _errors(at.error))
    assert not any("passwd" in e for e in _errors(at.error))  # the user's name is not echoed

    at.sidebar.selectbox(key="vk_model").set_value("alexnet").run()
    assert not at.exception, _errors(at.exception)
    weights_errors = [e for e in _errors(at.error) if e.startswith("Weights problem")]
    assert weights_errors, _errors(at.error)
    assert any("pickle" in e.lower() or "refus" in e.lower() for e in weights_errors), weights_errors
    if page in NEEDS_MODEL:  # the page itself says so too, not only the sidebar
        assert any(e.startswith("Weights problem") for e in _errors(at.main.error)), page




def _gps_jpeg(arr: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    exif[0x010E] = "home address"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)})
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.slow
def test_page_download_of_a_gps_jpeg_has_no_metadata(bundled_ready, monkeypatch):
    from streamlit.runtime import memory_media_file_storage as storage

    served: list[tuple[bytes, str, str | None]] = []
    real = storage.MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        if isinstance(path_or_data, bytes):
            served.append((path_or_data, mimetype, filename))
        return real(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(storage.MemoryMediaFileStorage, "load_and_get_id", spy)
    img = np.kron(np.random.default_rng(1).integers(0, 255, (12, 10, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    jpeg = _gps_jpeg(img)
    assert Image.open(io.BytesIO(jpeg)).getexif().get_ifd(0x8825)  # the input really has GPS
    at = open_page()
    at.sidebar.radio(key="vk_source").set_value("Upload").run()
    served.clear()
    at.sidebar.file_uploader(key="vk_upload").upload("IMG_20240101_home.jpg", jpeg, "image/jpeg")
    at.run()
    assert not at.exception and not at.error, (_errors(at.exception), _errors(at.error))
    downloads = [(d, f) for d, mime, f in served if mime == "image/png" and f]
    assert downloads, [(m, f) for _, m, f in served]
    from pages import _ui

    m = _ui.cached_model(at.session_state["vk_model"])  # an upload opens on the photo model
    for data, filename in downloads:
        assert set(png_chunk_types(data)) <= {b"IHDR", b"IDAT", b"IEND"}, filename
        for marker in (b"GPS", b"Exif", b"SecretCam", b"home address"):
            assert marker not in data, (filename, marker)
        assert "IMG_20240101" not in filename and "/" not in filename and ".." not in filename
    # The home page's download is the input as the model sees it: same pixels, nothing else.
    shown = np.asarray(Image.open(io.BytesIO(downloads[0][0])).convert("RGB"))
    from vizkit.core.images import load_image

    np.testing.assert_array_equal(shown, m.resize(load_image(jpeg)))


def test_server_settings_are_effective():
    """Streamlit's own loader reads the project's config: 25 MB uploads, no error details, and
    the server listens on this machine only."""
    from streamlit import config

    assert (ROOT / ".streamlit" / "config.toml").is_file()
    config._config_options = None  # reparse from this working directory's .streamlit/
    import os

    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        config.get_config_options(force_reparse=True)
        assert config.get_option("server.maxUploadSize") == 25
        assert config.get_option("server.address") == "127.0.0.1"
        assert str(config.get_option("client.showErrorDetails")).lower() in ("none", "false")
        assert config.get_option("server.maxUploadSize") * 2**20 <= 25 * 2**20
    finally:
        os.chdir(cwd)
        config.get_config_options(force_reparse=True)
    from pages import _ui
    from vizkit.core import images

    # The app's own limit and the decoder's agree with the server's (none above 25 MB).
    assert _ui.MAX_UPLOAD_MB <= 25 and images.MAX_BYTES <= 25 * 2**20


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_listens_on_localhost_unless_asked():
    """``make run`` passes --server.address: 127.0.0.1 by default, HOST when given."""

    def command(*extra: str) -> str:
        out = subprocess.run(["make", "-n", "run", *extra], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        return next(line for line in out.splitlines() if "streamlit run app.py" in line)

    assert "--server.address 127.0.0.1 " in command()
    assert "--server.address 0.0.0.0 " in command("HOST=0.0.0.0")


def _calls(tree: ast.AST, names: set[str]):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in names:
                yield node


def test_user_file_names_never_become_paths_or_download_names():
    """Static check of app.py and pages/: an upload's ``.name`` is never read, files are opened
    only by the library's loader, and every download name is built by ``safe_name``."""
    files = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]
    for path in files:
        text = path.read_text()
        tree = ast.parse(text)
        assert not re.search(r"\bupload\w*\.name\b", text), f"{path.name} reads an upload's file name"
        for call in _calls(tree, {"open", "write_bytes", "write_text", "save"}):
            raise AssertionError(f"{path.name}:{call.lineno} writes or opens a file")
        for call in _calls(tree, {"download", "picture"}):
            if path.name == "_ui.py":
                continue
            index = 1 if call.func.attr == "download" else 2
            arg = call.args[index] if len(call.args) > index else next(
                (k.value for k in call.keywords if k.arg == "filename"), None)
            assert isinstance(arg, ast.Call) and getattr(arg.func, "attr", None) == "safe_name", \
                f"{path.name}:{call.lineno} download name not from safe_name"
        for call in _calls(tree, {"download_button"}):
            arg = next((k.value for k in call.keywords if k.arg == "file_name"), None)
            safe = (isinstance(arg, ast.Constant) or (isinstance(arg, ast.Name) and path.name == "_ui.py")
                    or (isinstance(arg, ast.JoinedStr) and "picked" not in ast.unparse(arg)
                        and "upload" not in ast.unparse(arg)))
            assert safe, f"{path.name}:{call.lineno} file_name={ast.unparse(arg) if arg else None}"


@pytest.mark.parametrize("parts", [
    ("occlusion", "fashion-zf", "T-shirt/top"), ("../../etc/passwd",), ("x", None, "", "a b\\c\x00d"),
    ("..",), ("",), ("CON",), ("/root/.ssh/id_rsa",), ("C:\\Windows\\system32",),
])
def test_safe_name_examples(parts):
    from pages._ui import safe_name

    name = safe_name(*parts)
    assert name.endswith(".png") and Path(name).name == name and ".." not in name
    assert "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")


def test_safe_name_is_never_a_path():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from pages._ui import safe_name

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(st.text(), st.none(), st.integers()), max_size=4))
    def check(parts):
        name = safe_name(*parts)
        assert name.endswith(".png") and 4 < len(name) <= 124
        assert "/" not in name and "\\" not in name and "\x00" not in name
        assert not name.startswith(".") and Path(name).name == name
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name)

    check()
