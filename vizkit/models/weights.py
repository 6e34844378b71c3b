"""Where weights come from, and loading them safely.

Only safetensors or ``torch.load(weights_only=True)``: a pickle payload is refused, never
retried in the unsafe (full pickle) mode. Zoo weights live where torchvision keeps them
(``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``) under torchvision's
file name, whose part after the last ``-`` is a prefix of the file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from vizkit.models.base import ModelSpec

_ZIP_MAGIC = b"PK\x03\x04"
_HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")


class WeightsError(Exception):
    """Weights are missing or unusable; the message says what to do."""


def checkpoints_dir() -> Path:
    """The folder torchvision reads and downloads zoo weights into (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def zoo_checkpoint_path(spec: ModelSpec) -> Path:
    """Where torchvision keeps ``spec``'s weight file (its name carries a hash prefix)."""
    if spec.weights_enum is None:
        raise WeightsError(f"{spec.name} is not a torchvision zoo model; it has no checkpoint file.")
    return checkpoints_dir() / Path(spec.weights_enum.url).name


def expected_hash_prefix(file_name: str) -> str:
    """torchvision's sha256 prefix in a checkpoint name: ``alexnet-owt-7be5be79.pth`` → ``7be5be79``."""
    matches = _HASH_PREFIX.findall(file_name)
    if not matches:
        raise WeightsError(f"{file_name} carries no hash prefix (8+ hex digits after its last '-').")
    return matches[-1]


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _safetensors_header_ok(path: Path, head: bytes) -> bool:
    """Whether the file starts like safetensors: u64 header length, then a JSON object."""
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= path.stat().st_size - 8 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, json.JSONDecodeError, ValueError, OSError) as error:
        raise WeightsError(
            f"{path.name} is a truncated or corrupt safetensors file ({error}). Copy or download it again."
        ) from None


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" in str(error) or "global" in str(error):
            found = re.search(r"GLOBAL (\S+)", str(error))
            what = f" ({found.group(1)})" if found else ""
            raise WeightsError(
                f"{path.name} contains pickled Python objects{what}, which could run code when "
                "loaded; vizkit refuses it. Save plain weights instead: "
                "torch.save(model.state_dict(), FILE) or safetensors.torch.save_file(...)."
            ) from None
        raise WeightsError(f"{path.name} is not a readable PyTorch weights file ({_first_line(error)}).") \
            from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as error:
        raise WeightsError(
            f"{path.name} is a truncated or corrupt PyTorch file ({_first_line(error)}). "
            "Copy or download it again."
        ) from None


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


def _unwrap_checkpoint(state: object) -> object:
    """The state dict inside common checkpoint layouts, without a DataParallel ``module.`` prefix."""
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a state dict from safetensors or a ``torch.load(weights_only=True)`` file.

    Raises:
        WeightsError: missing file, pickle payload, not a state dict, truncated, NaN/Inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise WeightsError(f"{path.name} is empty.")
    if _safetensors_header_ok(path, head):
        state: object = _read_safetensors(path)
    elif path.suffix == ".safetensors":
        raise WeightsError(f"{path.name} is not a valid safetensors file (truncated or corrupt header).")
    elif head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":
        state = _read_torch(path)
    else:
        raise WeightsError(
            f"{path.name} is neither a safetensors file nor a torch.save file; vizkit reads weights "
            "saved with safetensors or torch.save(model.state_dict(), FILE)."
        )
    state = _unwrap_checkpoint(state)
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{path.name} does not hold a state dict (parameter name → tensor).")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{path.name} does not hold a plain state dict: {', '.join(not_tensors[:5])} "
            "are not tensors."
        )
    for key, value in state.items():
        if (value.is_floating_point() or value.is_complex()) and not torch.isfinite(value).all():
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

    def some(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" ... ({len(names)} in all)" if len(names) > 5 else "")

    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {some(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {some(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes: {'; '.join(wrong[:5])}")
        raise WeightsError(f"Weights from {source} do not fit this architecture ({' | '.join(parts)}).")
    module.load_state_dict(state, strict=True)


def _offline_message(spec: ModelSpec, path: Path) -> str:
    return (
        f"Weights for {spec.name} are not available offline: the file {path.name} is missing "
        f"from the folder {path.parent}. Download {spec.weights_enum.url} on a machine with "
        f"network, then run: python -m vizkit weights import {path.name} --model {spec.name}"
    )


def zoo_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """torchvision weights from the cache, else downloaded (hash-checked); offline, a clear error."""
    path = zoo_checkpoint_path(spec)
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                spec.weights_enum.url, str(path), hash_prefix=expected_hash_prefix(path.name), progress=False
            )
        except Exception as error:  # noqa: BLE001 - no network, DNS, HTTP, bad hash: all mean "missing"
            path.unlink(missing_ok=True)
            raise WeightsError(_offline_message(spec, path)) from error
    return read_state_dict(path)


# Module → (fingerprint of its tensors' storage and in-place versions, hash). Hashing VGG16's
# 528 MB takes about a second, and the app asks on every rerun; the versions change whenever a
# tensor is modified in place (a training step, ``load_state_dict``), so a stale hash is never served.
_WEIGHTS_HASHES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def weights_hash(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and values, buffers included), hex.

    Ties a result computed from weights, such as a mining index, to exactly those weights: any
    retraining, fine-tuning or import gives another hash. Independent of the device.
    """
    state = module.state_dict(keep_vars=True)
    tensors = [(name, t) for name, t in sorted(state.items()) if isinstance(t, torch.Tensor)]
    fingerprint = tuple((name, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype)) for name, t in tensors)
    cached = _WEIGHTS_HASHES.get(module)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    digest = hashlib.sha256()
    for name, t in tensors:
        data = t.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}\n".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    value = digest.hexdigest()
    _WEIGHTS_HASHES[module] = (fingerprint, value)
    return value
