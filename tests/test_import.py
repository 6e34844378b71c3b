"""``import vizkit`` and every vizkit module stay free of streamlit; the lazy API and CLI resolve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    "vizkit" if p.stem == "__init__" else f"vizkit.{p.stem}"
    for p in (ROOT / "vizkit").glob("*.py")
    if p.stem != "__main__"
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "TORCH_HOME": "/nonexistent-vizkit-test-torch-home"}, timeout=600)


def test_every_module_imports_without_streamlit_and_plain_import_is_lazy():
    # One subprocess (a fresh interpreter) for all checks: imports are slow on a loaded machine.
    code = (
        "import importlib, json, sys\n"
        "import vizkit\n"
        "light = sorted(m for m in sys.modules if m.startswith('vizkit'))\n"
        f"failed = {{}}\nfor name in {MODULES!r}:\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception as error:\n        failed[name] = repr(error)\n"
        "print(json.dumps({'light': light, 'failed': failed, 'streamlit': sorted(m for m in sys.modules "
        "if m == 'streamlit' or m.startswith('streamlit.'))}))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}
    assert report["streamlit"] == []
    # Functions named like their module are eager (see vizkit/__init__.py); the rest stays lazy.
    assert "vizkit.style" not in report["light"] and "vizkit.probes" not in report["light"]


def test_no_vizkit_source_mentions_streamlit_imports():
    for path in (ROOT / "vizkit").glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import streamlit", "from streamlit")), f"{path.name}: {line}"


@pytest.mark.parametrize("name", __import__("vizkit")._LAZY)
def test_lazy_api_names_resolve(name):
    import importlib

    import vizkit

    # Import the module first: once imported, a submodule named like the function
    # (vizkit.receptive_field) shadows the package's lazy __getattr__.
    importlib.import_module(vizkit._LAZY[name])
    assert callable(getattr(vizkit, name)), f"vizkit.{name} is {getattr(vizkit, name)!r}"


def test_cli_commands_resolve():
    import importlib

    from vizkit.__main__ import COMMANDS

    for command, (module_name, _help) in COMMANDS.items():
        module = importlib.import_module(module_name)
        key = command.replace("-", "_")
        adder = getattr(module, f"add_{key}_arguments", None) or getattr(module, "add_arguments", None)
        assert adder, command
        assert getattr(module, f"run_{key}", None) or getattr(module, "run", None), command


def test_cli_help_runs(capsys):
    from vizkit.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("weights", "occlusion", "style"))
