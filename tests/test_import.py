"""``import vizkit`` and every vizkit module stay free of streamlit; the public API and CLI resolve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "vizkit").rglob("*.py")
    if p.stem != "__main__"
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "TORCH_HOME": "/nonexistent-vizkit-test-torch-home"}, timeout=600)


def test_every_module_imports_without_streamlit_and_no_module_shadows_a_function():
    # One subprocess (a fresh interpreter) for all checks: imports are slow on a loaded machine.
    code = (
        "import importlib, json, sys\n"
        "import vizkit\n"
        "light = sorted(m for m in sys.modules if m.startswith('vizkit'))\n"
        f"failed = {{}}\nfor name in {MODULES!r}:\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception as error:\n        failed[name] = repr(error)\n"
        "shadowed = sorted(n for n in vizkit.__all__ if type(getattr(vizkit, n)).__name__ == 'module')\n"
        "print(json.dumps({'light': light, 'failed': failed, 'shadowed': shadowed, 'streamlit': sorted(m "
        "for m in sys.modules if m == 'streamlit' or m.startswith('streamlit.'))}))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}
    assert report["streamlit"] == []
    assert len(MODULES) > 30 and "vizkit.methods.occlusion.incremental" in MODULES
    # Every submodule is now imported: a public function named like a module at the package's top
    # level would have been replaced by that module.
    assert report["shadowed"] == []


def test_no_vizkit_source_mentions_streamlit_imports():
    for path in (ROOT / "vizkit").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import streamlit", "from streamlit")), f"{path.name}: {line}"


@pytest.mark.parametrize("name", __import__("vizkit").__all__)
def test_public_names_resolve(name):
    import vizkit

    value = getattr(vizkit, name)
    assert callable(value), f"vizkit.{name} is {value!r}"
    assert value.__module__.startswith("vizkit."), value.__module__


def test_cli_commands_resolve():
    from vizkit.cli import COMMANDS, command_module

    for command in COMMANDS:
        module = command_module(command)
        assert callable(module.add_arguments) and callable(module.run), command


def test_cli_help_runs(capsys):
    from vizkit.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("weights", "occlusion", "style"))
