"""Device choice: VIZKIT_DEVICE override, cuda → mps → cpu fallback, out-of-memory detection."""

from __future__ import annotations

import pytest
import torch

from vizkit.core.devices import is_out_of_memory, pick_device


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.delenv("VIZKIT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_cpu_fallback_without_accelerators(no_accelerator):
    assert pick_device() == torch.device("cpu")


def test_prefers_cuda_then_mps(no_accelerator, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")


def test_env_override(no_accelerator, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("VIZKIT_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.setenv("VIZKIT_DEVICE", "cuda:1")
    assert pick_device() == torch.device("cuda:1")
    assert pick_device("cpu") == torch.device("cpu")  # an explicit argument beats the variable


def test_empty_env_means_auto(no_accelerator, monkeypatch):
    monkeypatch.setenv("VIZKIT_DEVICE", "")
    assert pick_device() == torch.device("cpu")


@pytest.mark.parametrize("asked", ["cuda", "mps"])
def test_unavailable_device_is_a_clear_error(no_accelerator, monkeypatch, asked):
    monkeypatch.setenv("VIZKIT_DEVICE", asked)
    with pytest.raises(ValueError, match=f"{asked}.*not available"):
        pick_device()


def test_nonsense_device_rejected(no_accelerator):
    with pytest.raises((ValueError, RuntimeError)):
        pick_device("gpu-please")


def test_models_run_on_the_chosen_device(tiny):
    assert tiny.device == torch.device("cpu")
    assert next(tiny.module.parameters()).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_when_available(monkeypatch):
    from vizkit.models.registry import load_model

    monkeypatch.setenv("VIZKIT_DEVICE", "cuda")
    torch.manual_seed(0)
    m = load_model("fashion-zf", weights=None)
    assert m.device.type == "cuda" and next(m.module.parameters()).is_cuda
    assert m.preprocess(torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()).is_cuda


def test_out_of_memory_detection():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
