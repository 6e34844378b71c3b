"""Every file a docstring, a comment or a doc page cites exists in the repository.

A reader of a clone must be able to follow each reference: ``vizkit/methods/registry.py``,
``docs/reliability.md``, ``tests/support.py`` ... A path counts as cited when it starts at one of
the repository's top-level entries (so ``captum/testing/...``, another project's file, is not one)
and names a file (``.py``, ``.md``, ``.toml``); placeholders like ``pages/<name>.py`` are not paths.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ["vizkit", "pages", "tests", "bench"]
TOP_LEVEL = sorted(p.name for p in ROOT.iterdir() if not p.name.startswith(".") or p.name == ".streamlit")
PATH = re.compile(r"(?<![\w/.-])((?:[A-Za-z_.][\w.-]*/)+[\w.-]+\.(?:py|md|toml))\b")


def python_files() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in SCANNED:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def prose(path: Path) -> str:
    """A Python file's comments and docstrings."""
    source = path.read_text()
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    return "\n".join(parts)


def cited(text: str) -> set[str]:
    return {p for p in PATH.findall(text) if p.split("/")[0] in TOP_LEVEL}


def test_the_scanner_finds_paths_and_skips_other_projects_and_placeholders():
    text = ("see vizkit/core/hooks.py, docs/design.md and ``tests/support.py``; "
            "captum/testing/attr/helpers/test_config.py; pages/<name>.py; /work/x/vizkit/a.py")
    assert cited(text) == {"vizkit/core/hooks.py", "docs/design.md", "tests/support.py"}
    assert cited("missing: vizkit/nowhere.py") == {"vizkit/nowhere.py"}  # found, so it can fail


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_in_docstrings_and_comments_exist(path):
    missing = sorted(p for p in cited(prose(path)) if not (ROOT / p).exists())
    assert not missing, f"{path.relative_to(ROOT)} cites files that are not in the repository: {missing}"


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_and_links_in_the_docs_exist(page):
    text = page.read_text()
    links = {link for link in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in link}
    missing = sorted(p for p in cited(text) if not (ROOT / p).exists())
    missing += sorted(link for link in links if not (page.parent / link).exists())
    assert not missing, f"{page.relative_to(ROOT)} cites files that are not in the repository: {missing}"


def test_design_and_reliability_pages_exist_and_the_readme_links_them():
    readme = (ROOT / "README.md").read_text()
    assert "(docs/design.md)" in readme and "(docs/reliability.md)" in readme
