"""Shared fixtures: a seeded tiny CNN, seeded registry models (weights=None), images.

The helpers themselves live in support.py (importable from test modules).
"""

from __future__ import annotations

import os

import pytest

from support import (  # noqa: F401 - re-exported for fixtures
    HAND_SPEC,
    TINY_SPEC,
    make_hand_cnn,
    make_tiny_cnn,
    random_image,
    zoo_model,
)
from vizkit.models.registry import get_spec, list_models, load_model, wrap_module


@pytest.fixture
def tiny():
    """A seeded tiny CNN wrapped as a LoadedModel on the CPU (16×16 input, 3 classes)."""
    return wrap_module(make_tiny_cnn(), TINY_SPEC, device="cpu")


@pytest.fixture(params=list_models())
def registry_model(request):
    """Every registry model, seeded, weights=None (parametrized, timm-style)."""
    return zoo_model(request.param)


@pytest.fixture
def fashion():
    """The bundled fashion-zf with its shipped weights (they are part of the repository)."""
    spec = get_spec("fashion-zf")
    assert spec.weights_file.is_file(), f"bundled weights missing: {spec.weights_file}"
    return load_model("fashion-zf", device="cpu")


@pytest.fixture
def no_fashion_mnist(monkeypatch, tmp_path):
    """A machine without Fashion-MNIST: the loader looks only in an empty folder."""
    empty = tmp_path / "no-fashion-mnist"
    empty.mkdir()
    monkeypatch.setenv("VIZKIT_FASHION_MNIST", str(empty))
    return empty


@pytest.fixture
def image():
    return random_image()


@pytest.fixture
def hand_cnn():
    """The hand-set CNN as a LoadedModel on the CPU; feed it ``HAND_IMAGE``."""
    return wrap_module(make_hand_cnn(), HAND_SPEC, device="cpu")


def pytest_collection_modifyitems(config, items):
    """``make test`` sets VIZKIT_SKIP_BROWSER=1 where Chromium is missing, and
    VIZKIT_SKIP_FASHION_MNIST=1 where Fashion-MNIST is missing and could not be installed: only
    the browser tests, or only the tests that need the whole dataset, skip."""
    skips = {
        "browser": ("VIZKIT_SKIP_BROWSER",
                    "VIZKIT_SKIP_BROWSER is set: Debian chromium is missing (see make test)"),
        "fashion_mnist": ("VIZKIT_SKIP_FASHION_MNIST",
                          "VIZKIT_SKIP_FASHION_MNIST is set: Fashion-MNIST is missing "
                          "(sudo apt-get install dataset-fashion-mnist; see make test)"),
    }
    for keyword, (variable, reason) in skips.items():
        if not os.environ.get(variable):
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if keyword in item.keywords:
                item.add_marker(skip)
