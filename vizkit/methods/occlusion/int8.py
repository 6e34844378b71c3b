"""8-bit convolutions and matrix products of *changes*, for approximate occlusion on the CPU.

Incremental occlusion (``incremental.py``) runs linear layers on the change an occluding
patch makes, ``delta``, never on the activations themselves. A change quantizes well: each
position's change is scaled by its own largest magnitude to 127 levels, so a weak patch keeps
the same relative precision as a strong one, and the product comes back in float32. The
result's error is about 1.5% of each layer's change, where quantizing the activations would
bury a patch's small change under the rounding of the large clean values.

Convolutions use oneDNN's u8×s8 kernel (``torch.ops.onednn.qconv2d_pointwise``, the one
PyTorch's own x86 quantization lowers to), 2–3× the float32 convolution's throughput on CPUs
with VNNI; linear layers use ``torch._int_mm`` (s8×s8, int32 out). Where these are missing (no
oneDNN, a non-x86 build) :func:`available` says so; a layer they refuse is computed in
float32 by the caller.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

_ZERO_POINT = 128  # u8 activations: value = (q - 128) * scale, so -127..127 levels
_LEVELS = 127.0

# Packed weights per layer (quantizing and packing VGG16's first linear layer alone takes a
# second), dropped with the layer and redone when its weight is replaced or modified in place.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PACKED_LOCK = threading.Lock()


def available(device: torch.device) -> bool:
    """Whether 8-bit kernels can run here (CPU with oneDNN's quantized ops)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.onednn
    try:
        return hasattr(torch, "_int_mm") and all(
            hasattr(ops, name) for name in ("qconv_prepack", "qconv2d_pointwise"))
    except RuntimeError:  # the namespace itself is missing
        return False


def _signed_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (B×…) as s8 in -127..127 with one scale per row: ``x ≈ q * scale``."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        rows = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # a view
    else:
        rows = x.reshape(x.shape[0], -1)
    peak = torch.maximum(rows.amax(1), rows.amin(1).neg_())
    peak = peak.clamp_min_(torch.finfo(x.dtype).tiny).view(-1, *([1] * (x.dim() - 1)))
    return x.mul(_LEVELS / peak).round_().to(torch.int8), peak / _LEVELS


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (B×…) as u8 with one scale per row: returns ``(q, scale)``, ``x ≈ (q - 128) * scale``.

    ``q`` keeps ``x``'s memory format; ``scale`` has shape B×1×… (broadcasts against ``x``); an
    all-zero row gets a tiny scale.
    """
    q, scale = _signed_rows(x)
    # Shift s8 to u8 by flipping the sign bit (v ^ 0x80 == v + 128): converting float to u8
    # directly is twice as slow as to s8.
    return q.view(torch.uint8).bitwise_xor_(0x80), scale


def _weight_scales(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric s8 weights and their scales.

    Quantized a block of rows at a time, so no float copy of a large weight is ever made.
    """
    flat = w.detach().float().reshape(w.shape[0], -1)
    peak = torch.maximum(flat.amax(1), flat.amin(1).neg_())
    scale = peak.clamp_min_(torch.finfo(torch.float32).tiny) / _LEVELS
    inverse = (1.0 / scale).unsqueeze(1)
    q = torch.empty(flat.shape, dtype=torch.int8, device=w.device)
    rows = max(1, (1 << 20) // flat.shape[1])
    for start in range(0, flat.shape[0], rows):
        block = flat[start:start + rows]
        q[start:start + rows] = block.mul(inverse[start:start + rows]).round_()
    return q.view(w.shape), scale


def _packed(mod: nn.Module, key: tuple, pack) -> tuple:
    """``(pack(q_weight, w_scale), w_scale, w_zero_point)`` for ``mod.weight`` and ``key``, cached."""
    weight = mod.weight
    with _PACKED_LOCK:
        entry = _PACKED.get(mod)
        if entry is None or entry[0] is not weight or entry[1] != weight._version:
            entry = (weight, weight._version, {})
            _PACKED[mod] = entry
        cached = entry[2].get(key)
    if cached is None:
        with torch.no_grad():
            qw, w_scale = _weight_scales(weight)
            cached = (pack(qw, w_scale), w_scale, torch.zeros_like(w_scale, dtype=torch.long))
        with _PACKED_LOCK:
            entry[2][key] = cached
    return cached


# A convolution summing fewer products per output than this (VGG16's first layer: 3×3×3;
# depthwise layers: 3×3) runs at a few percent of the 8-bit kernel's throughput: float32.
MIN_REDUCTION = 64


def _reduction(mod: nn.Conv2d) -> int:
    return mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]


class Int8Kernels:
    """The change-only conv/linear with 8-bit operands, float32 out.

    A layer whose kernel fails (an unsupported shape) is remembered and gets ``None``, so the
    caller computes it in float32.
    """

    def __init__(self) -> None:
        self._refused: set = set()

    def conv2d(self, delta: torch.Tensor, mod: nn.Conv2d, padding: tuple[int, int]
               ) -> torch.Tensor | None:
        """``conv2d(delta, mod.weight, no bias)`` with 8-bit operands, float32 out (channels-last)."""
        key = ("conv", tuple(padding))
        if (id(mod), key) in self._refused or _reduction(mod) < MIN_REDUCTION:
            return None
        stride, dilation, padding = list(mod.stride), list(mod.dilation), list(padding)
        try:
            weight, w_scale, w_zero = _packed(mod, key, lambda qw, scale: (
                torch.ops.onednn.qconv_prepack(qw, scale, 1.0, _ZERO_POINT, stride, padding,
                                               dilation, mod.groups, None)))
            q, scale = quantize_rows(delta.contiguous(memory_format=torch.channels_last))
            out = torch.ops.onednn.qconv2d_pointwise(
                q, 1.0, _ZERO_POINT, weight, w_scale, w_zero, None, stride, padding,
                dilation, mod.groups, 1.0, 0, torch.float32, "none", [], "")
        except RuntimeError:
            self._refused.add((id(mod), key))
            return None
        return out.mul_(scale)

    def linear(self, delta: torch.Tensor, mod: nn.Linear) -> torch.Tensor | None:
        """``delta @ mod.weight.T`` (no bias) with 8-bit operands, float32 out; ``delta`` is B×N.

        ``torch._int_mm`` on the s8 weight as it is: as fast as oneDNN's packed linear here,
        without packing (half a second for VGG16's first linear layer).
        """
        key = ("linear",)
        if (id(mod), key) in self._refused:
            return None
        try:
            weight, w_scale, _ = _packed(mod, key, lambda qw, _scale: qw)
            q, scale = _signed_rows(delta.contiguous())
            out = torch._int_mm(q, weight.t())
        except RuntimeError:
            self._refused.add((id(mod), key))
            return None
        return out.float().mul_(scale).mul_(w_scale)
