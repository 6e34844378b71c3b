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
def image():
    return random_image()


@pytest.fixture
def hand_cnn():
    """The hand-set CNN as a LoadedModel on the CPU; feed it ``HAND_IMAGE``."""
    return wrap_module(make_hand_cnn(), HAND_SPEC, device="cpu")


def pytest_collection_modifyitems(config, items):
    """``make test`` sets VIZKIT_SKIP_BROWSER=1 where Chromium is missing: only browser tests skip."""
    if not os.environ.get("VIZKIT_SKIP_BROWSER"):
        return
    skip = pytest.mark.skip(reason="VIZKIT_SKIP_BROWSER is set: Debian chromium is missing (see make test)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)
