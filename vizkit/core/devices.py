"""Device choice: cuda, then mps, then cpu; ``VIZKIT_DEVICE`` overrides."""

from __future__ import annotations

import os

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """Returns the device to run on.

    Args:
        device: an explicit choice; ``None`` reads ``VIZKIT_DEVICE``, else picks the best present.
    """
    if device is None:
        device = os.environ.get("VIZKIT_DEVICE") or None
    if device is not None:
        chosen = torch.device(device)
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"Device {chosen} was asked for, but CUDA is not available here.")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"Device {chosen} was asked for, but MPS is not available here.")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device out-of-memory error (CUDA, MPS or CPU allocator)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
