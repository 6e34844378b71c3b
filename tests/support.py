"""Test helpers shared by the test modules (import as ``from support import ...``).

A module of its own, not conftest.py: tests/ and tests/app/ each have a conftest.py, and
``from conftest import`` would pick whichever pytest imported last.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

# No test may touch the network: zoo weights resolve into an empty temporary cache.
os.environ.setdefault("TORCH_HOME", "/nonexistent-vizkit-test-torch-home")

from vizkit.methods.registry import MethodSpec, list_methods  # noqa: E402
from vizkit.models.base import LoadedModel, ModelSpec  # noqa: E402
from vizkit.models.registry import load_model  # noqa: E402


def make_tiny_cnn(seed: int = 0) -> nn.Module:
    """conv(3→4, 3×3) → ReLU → maxpool 2 → conv(4→6, 3×3) → ReLU → GAP → linear(6→3)."""
    torch.manual_seed(seed)
    net = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 4, 3, padding=1)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(4, 6, 3, padding=1)),
        ("relu2", nn.ReLU()),
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(6, 3)),
    ]))
    return net


TINY_SPEC = ModelSpec(
    name="tiny", title="tiny test CNN", input_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    cam_layer="relu2", classes=("a", "b", "c"), builder=make_tiny_cnn,
)


_ZOO_CACHE: dict[str, object] = {}


def zoo_model(name: str):
    """A registry model with seeded random weights (weights=None), shared within the session.

    Tests that share it must leave it as they found it; the hook-hygiene tests check that.
    """
    if name not in _ZOO_CACHE:
        torch.manual_seed(0)
        _ZOO_CACHE[name] = load_model(name, device="cpu", weights=None)
    return _ZOO_CACHE[name]


def random_image(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """A seeded random RGB uint8 image with some structure (smooth blobs plus noise)."""
    rng = np.random.default_rng(seed)
    low = rng.random((max(h // 8, 2), max(w // 8, 2), 3))
    img = np.kron(low, np.ones((8, 8, 1)))[:h, :w]
    img = np.pad(img, ((0, max(0, h - img.shape[0])), (0, max(0, w - img.shape[1])), (0, 0)), mode="edge")
    img = 0.8 * img + 0.2 * rng.random((h, w, 3))
    return (img * 255).astype(np.uint8)


# A hand-set CNN whose maps can be computed by hand (tests/test_backprop.py, tests/test_class_maps.py):
# conv(3→2, 2×2, integer weights) → maxpool(2, stride 1) → ReLU → GAP → linear(2→2), on a 4×4
# image fed unnormalized (std = 1/255, so the input tensor equals the uint8 pixel values).
HAND_CONV_W = np.array([
    [[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[0, 0], [0, 0]]],
    [[[-1, 1], [0, 0]], [[0, 0], [1, -1]], [[1, 0], [0, 0]]],
], dtype=np.float32)
HAND_CONV_B = np.array([0, -2], dtype=np.float32)
HAND_FC_W = np.array([[2, -1], [-1, 3]], dtype=np.float32)
HAND_FC_B = np.array([0, 1], dtype=np.float32)
HAND_IMAGE = np.array([
    [[1, 0, 2], [3, 1, 0], [0, 2, 1], [2, 2, 0]],
    [[0, 3, 1], [1, 0, 2], [4, 1, 0], [0, 0, 3]],
    [[2, 1, 0], [0, 0, 1], [1, 3, 2], [3, 0, 1]],
    [[1, 1, 1], [2, 0, 0], [0, 1, 3], [1, 4, 0]],
], dtype=np.uint8)


def make_hand_cnn() -> nn.Module:
    net = nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 2, 2)),
        ("pool", nn.MaxPool2d(2, stride=1)),
        ("relu", nn.ReLU(inplace=True)),
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(2, 2)),
    ]))
    with torch.no_grad():
        net.conv.weight.copy_(torch.from_numpy(HAND_CONV_W))
        net.conv.bias.copy_(torch.from_numpy(HAND_CONV_B))
        net.fc.weight.copy_(torch.from_numpy(HAND_FC_W))
        net.fc.bias.copy_(torch.from_numpy(HAND_FC_B))
    return net


HAND_SPEC = ModelSpec(
    name="hand", title="hand-set CNN", input_size=4, mean=(0.0, 0.0, 0.0),
    std=(1 / 255, 1 / 255, 1 / 255), cam_layer="relu", classes=("x", "y"), builder=make_hand_cnn,
)


def png_chunk_types(data: bytes) -> list[bytes]:
    """Chunk types of a PNG, parsed by hand (an oracle independent of Pillow)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kinds.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return kinds


def clip_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB frames of a moving, changing pattern (so consecutive frames differ)."""
    base = random_image(h, w, seed)
    return [np.roll(base, 3 * i, axis=1) // 2 + np.uint8((i * 37) % 128) for i in range(n)]


def write_clip(path, frames, fps: float = 10, codec: str = "libvpx", container: str | None = None,
               pix_fmt: str = "yuv420p") -> None:
    """Encodes RGB ``frames`` with PyAV (``codec`` in ``container``, guessed from the suffix)."""
    from fractions import Fraction

    import av

    out = av.open(str(path), mode="w", format=container)
    stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
    h, w = frames[0].shape[:2] if len(frames) else (16, 16)
    stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
    for img in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()


# ---------------------------------------------------------------- the generic tests' one method table
# captum's testing/attr/helpers/test_config.py, for vizkit: the hook, thread, interrupt and memory
# tests all iterate method_cases(), built from the method registry, so a registered method is
# tested by all of them with no list to edit.


@dataclasses.dataclass(frozen=True)
class MethodCase:
    """One way to call a registered method: its spec and the kind of target it explains.

    ``kind`` is one of ``vizkit.methods.registry.TARGET_KINDS``, or ``"model"`` for a method that
    explains the model itself. Callable targets are not a case of their own: they take the class
    form's path (tests/test_backprop.py and tests/test_class_maps.py check them against class indices).
    """

    spec: MethodSpec
    kind: str

    @property
    def id(self) -> str:
        return self.spec.name if self.kind in ("class", "model") else f"{self.spec.name}-{self.kind}"

    def call(self, m: LoadedModel, img, target: int | None = None, **kwargs: Any):
        """A cheap call (the spec's ``quick`` settings): ``target`` is the class of a class case and
        the channel of a unit case (``None``: the top prediction, channel 0)."""
        kwargs = {**self.spec.quick, **kwargs}
        if self.kind == "class":
            return self.spec.run(m, img, target=target, **kwargs)
        if self.kind == "unit":
            unit = (example_layer(self.spec, m), 0 if target is None else target)
            return self.spec.run(m, img, unit=unit, **kwargs)
        if self.kind == "layer":
            return self.spec.run(m, img, layer=example_layer(self.spec, m), **kwargs)
        return self.spec.run(m, img, **kwargs)


def method_cases() -> list[MethodCase]:
    """Every registered method in every target form it takes (see ``MethodCase``)."""
    return [MethodCase(spec, kind) for spec in list_methods()
            for kind in ([k for k in spec.targets if k != "callable"] or ["model"])]


def example_layer(spec: MethodSpec, m: LoadedModel) -> str:
    """The layer a generic test explains: the first of ``spec.layer_type``, else the CAM layer."""
    if spec.layer_type is None:
        return m.spec.cam_layer
    return next(name for name, sub in m.module.named_modules() if isinstance(sub, spec.layer_type))


# Wall-clock figures: equal results of two runs differ there.
_TIMING_FIELDS = {"timings", "speedup_over_full"}


def fingerprint(result: Any) -> Any:
    """A comparable picture of any method's result: arrays as bytes, timings left out."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return tuple((f.name, fingerprint(getattr(result, f.name))) for f in dataclasses.fields(result)
                     if f.name not in _TIMING_FIELDS)
    if isinstance(result, Mapping):
        return tuple(sorted((k, fingerprint(v)) for k, v in result.items() if k not in _TIMING_FIELDS))
    if isinstance(result, torch.Tensor):
        result = result.detach().cpu().numpy()
    if isinstance(result, np.ndarray):
        return result.shape, result.dtype.str, result.tobytes()
    if isinstance(result, (list, tuple)):
        return tuple(fingerprint(v) for v in result)
    if isinstance(result, float):
        return result.hex()  # NaN equals NaN here
    return result


def toy_method_spec(family: str = "class_maps", name: str = "toy_centre") -> MethodSpec:
    """A stand-in method to register in a test: a centred bump whatever the image, explaining a class.

    It checks and resolves its target like a real method (one forward under ``m.lock``).
    """
    from vizkit.core.results import Explanation
    from vizkit.core.targets import check_target_early, resolve_target

    def toy_centre(m: LoadedModel, img, target=None, layer=None) -> Explanation:
        check_target_early(m, target)
        with m.lock, torch.no_grad():
            logits = m.module(m.preprocess(img))
        resolved = resolve_target(m, logits, target)
        side = m.input_size
        yy, xx = np.mgrid[:side, :side]
        bump = np.exp(-((yy - side / 2) ** 2 + (xx - side / 2) ** 2) / (side * side / 8)).astype(np.float32)
        raw = torch.from_numpy(bump)[None, None].expand(1, 3, side, side).clone()
        return Explanation(method=name, target=resolved if isinstance(resolved, int) else None,
                           layer=layer, map=bump, raw=raw, info={})

    return MethodSpec(name=name, title="Toy centre", citation="nobody 2026",
                      summary="a centred bump, whatever the image.", family=family, fn=toy_centre)
