"""Where weights come from, and loading them safely.

Only safetensors or ``torch.load(weights_only=True)``: a pickle payload is refused, never
retried with ``weights_only=False``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from vizkit.models import ModelSpec


class WeightsError(Exception):
    """Weights are missing or unusable; the message says what to do."""


def torch_home() -> Path:
    """torchvision's cache root (``TORCH_HOME``, else ~/.cache/torch)."""
    return Path(torch.hub.get_dir()).parent if "TORCH_HOME" not in os.environ else Path(
        os.environ["TORCH_HOME"]
    )


def checkpoints_dir() -> Path:
    """The folder torchvision reads and downloads zoo weights into."""
    return torch_home() / "hub" / "checkpoints"


def zoo_checkpoint_path(spec: ModelSpec) -> Path:
    """Where torchvision keeps ``spec``'s weight file (its name carries a hash prefix)."""
    return checkpoints_dir() / Path(spec.weights_enum.url).name


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads a state dict from safetensors or a ``weights_only`` torch file.

    Raises:
        WeightsError: missing file, pickle payload, not a state dict, NaN/Inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    try:
        if path.suffix == ".safetensors" or (len(head) == 8 and not head.startswith(b"PK")
                                              and not head.startswith(b"\x80")):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"{path.name} is not a plain state dict: it contains pickled code, which vizkit "
            f"refuses to run. Save weights with safetensors or torch.save(model.state_dict())."
        ) from error
    except Exception as error:  # noqa: BLE001 - any decoder failure is the user's file
        raise WeightsError(f"{path.name} could not be read as weights: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path.name} does not hold a state dict (name → tensor).")
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise WeightsError(f"{path.name}: tensor {key!r} contains NaN or Inf values.")
    return state


def apply_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` into ``module`` strictly, with an error that names bad keys and shapes."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")
            )
        if wrong:
            parts.append(f"wrong shapes: {'; '.join(wrong[:5])}")
        raise WeightsError(f"Weights from {source} do not fit this architecture ({' | '.join(parts)}).")
    module.load_state_dict(state, strict=True)


def zoo_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """torchvision weights from the cache, else downloaded; offline, an error naming the file."""
    path = zoo_checkpoint_path(spec)
    if not path.is_file():
        try:
            torch.hub.download_url_to_file(spec.weights_enum.url, str(path), progress=False)
        except Exception as error:  # noqa: BLE001 - no network, DNS, HTTP: all mean "missing"
            path.unlink(missing_ok=True)
            raise WeightsError(
                f"Weights for {spec.name} are not available offline: the file {path.name} is "
                f"missing from {path.parent}. Download it from {spec.weights_enum.url} on a "
                f"machine with network, then run: python -m vizkit weights import FILE "
                f"--model {spec.name}"
            ) from error
    return read_state_dict(path)
