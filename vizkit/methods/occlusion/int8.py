"""8-bit convolutions and matrix products of *changes*, for approximate occlusion on the CPU.

Incremental occlusion (``incremental.py``) runs linear layers on the change an occluding
patch makes, ``delta``, never on the activations themselves. A change quantizes well: each
position's change is scaled by its own largest magnitude to 127 levels (for a 1×1 convolution,
each pixel's channels by theirs: :func:`quantize_pixels`), so a weak patch keeps the same
relative precision as a strong one, and the product comes back in float32. The
result's error is about 1% of each layer's change (1.3% with 7-bit weights), where quantizing
the activations would bury a patch's small change under the rounding of the large clean values.

Convolutions use oneDNN's u8×s8 kernel (``torch.ops.onednn.qconv2d_pointwise``, the one
PyTorch's own x86 quantization lowers to), 2–3× the float32 convolution's throughput on CPUs
with VNNI; linear layers use ``torch._int_mm`` (s8×s8, int32 out, run by oneDNN as u8×s8 with
the activations shifted by 128). Where these are missing (no oneDNN, a non-x86 build)
:func:`available` says so; a layer they refuse is computed in float32 by the caller.

Whether 8 bits are right *here* is measured, not assumed (:func:`choose_arithmetic`). Without
VNNI (AVX2, AVX-512 without VNNI, SSE4.1) oneDNN multiplies with ``vpmaddubsw``, which adds each
pair of u8×s8 products into an int16 and saturates: activations at +127 (u8 255) against weights
at +127 give 2·255·127 = 64,770 > 32,767, and a layer's change is off by 10–20%. 7-bit
activations do not help here (u8 191: 2·191·127 = 48,514), 7-bit weights do (2·255·63 =
32,130). A probe multiplies such worst-case pairs through both kernels against exact integer
sums, at 127 and at 63 weight levels, so it sees what oneDNN dispatches to under any
``ONEDNN_MAX_CPU_ISA``; a probe convolution then times 8 bits against float32.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
    return _signed(x, peak.view(-1, *([1] * (x.dim() - 1))))


def _signed(x: torch.Tensor, peak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as s8 in -127..127 with ``peak`` (broadcasting against ``x``) at 127: ``(q, scale)``;
    a zero peak gets a tiny scale."""
    peak = peak.clamp_min(torch.finfo(x.dtype).tiny)
    return x.mul(_LEVELS / peak).round_().to(torch.int8), peak / _LEVELS


def _unsigned(q: torch.Tensor) -> torch.Tensor:
    """s8 → u8 shifted by 128, by flipping the sign bit (v ^ 0x80 == v + 128): converting float
    to u8 directly is twice as slow as to s8."""
    return q.view(torch.uint8).bitwise_xor_(0x80)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (B×…) as u8 with one scale per row: returns ``(q, scale)``, ``x ≈ (q - 128) * scale``.

    ``q`` keeps ``x``'s memory format; ``scale`` has shape B×1×… (broadcasts against ``x``); an
    all-zero row gets a tiny scale.
    """
    q, scale = _signed_rows(x)
    return _unsigned(q), scale


def quantize_pixels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (B×C×H×W) as channels-last u8 with one scale per pixel: ``x ≈ (q - 128) * scale``.

    ``scale`` is B×1×H×W. A 1×1 convolution mixes channels at one pixel only, so each output
    pixel takes its input pixel's scale exactly; a change fading out over its box keeps 127 levels
    at every pixel, where one scale per position leaves the faint edges of the box a few.
    """
    x = x.contiguous(memory_format=torch.channels_last)
    q, scale = _signed(x, torch.maximum(x.amax(1, keepdim=True), x.amin(1, keepdim=True).neg_()))
    return _unsigned(q), scale


def _weight_scales(w: torch.Tensor, levels: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric s8 weights in ``-levels..levels`` and their scales.

    Quantized a block of rows at a time, so no float copy of a large weight is ever made.
    """
    flat = w.detach().float().reshape(w.shape[0], -1)
    peak = torch.maximum(flat.amax(1), flat.amin(1).neg_())
    scale = peak.clamp_min_(torch.finfo(torch.float32).tiny) / levels
    inverse = (1.0 / scale).unsqueeze(1)
    q = torch.empty(flat.shape, dtype=torch.int8, device=w.device)
    rows = max(1, (1 << 20) // flat.shape[1])
    for start in range(0, flat.shape[0], rows):
        block = flat[start:start + rows]
        q[start:start + rows] = block.mul(inverse[start:start + rows]).round_()
    return q.view(w.shape), scale


def _packed(mod: nn.Module, key: tuple, pack, levels: int = 127) -> tuple:
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
            qw, w_scale = _weight_scales(weight, levels)
            cached = (pack(qw, w_scale), w_scale, torch.zeros_like(w_scale, dtype=torch.long))
        with _PACKED_LOCK:
            entry[2][key] = cached
    return cached


# A convolution summing fewer products per output than this (VGG16's first layer: 3×3×3;
# depthwise layers: 3×3) runs at a few percent of the 8-bit kernel's throughput: float32.
MIN_REDUCTION = 64


def conv_in_8_bits(mod: nn.Conv2d) -> bool:
    """Whether :class:`Int8Kernels` computes this convolution (it sums ``MIN_REDUCTION`` or
    more products per output); smaller ones are left to float32."""
    return mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1] >= MIN_REDUCTION


class Int8Kernels:
    """The change-only conv/linear with 8-bit operands, float32 out.

    A layer whose kernel fails (an unsupported shape) is remembered and gets ``None``, so the
    caller computes it in float32.
    """

    def __init__(self, weight_levels: int = 127) -> None:
        self._refused: set = set()
        self.weight_levels = weight_levels

    def conv2d(self, delta: torch.Tensor, mod: nn.Conv2d, padding: tuple[int, int]
               ) -> torch.Tensor | None:
        """``conv2d(delta, mod.weight, no bias)`` with 8-bit operands, float32 out (channels-last)."""
        key = ("conv", tuple(padding), self.weight_levels)
        if (id(mod), key) in self._refused or not conv_in_8_bits(mod):
            return None
        stride, dilation, padding = list(mod.stride), list(mod.dilation), list(padding)
        try:
            weight, w_scale, w_zero = _packed(mod, key, lambda qw, scale: (
                torch.ops.onednn.qconv_prepack(qw, scale, 1.0, _ZERO_POINT, stride, padding,
                                               dilation, mod.groups, None)), self.weight_levels)
            pointwise = mod.kernel_size == (1, 1) and mod.stride == (1, 1) and mod.groups == 1 \
                and tuple(padding) == (0, 0)
            # Per pixel where that is exact for the product (see quantize_pixels), per position
            # otherwise.
            q, scale = (quantize_pixels if pointwise else quantize_rows)(
                delta.contiguous(memory_format=torch.channels_last))
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
        key = ("linear", self.weight_levels)
        if (id(mod), key) in self._refused:
            return None
        try:
            weight, w_scale, _ = _packed(mod, key, lambda qw, _scale: qw, self.weight_levels)
            q, scale = _signed_rows(delta.contiguous())
            out = torch._int_mm(q, weight.t())
        except RuntimeError:
            self._refused.add((id(mod), key))
            return None
        return out.float().mul_(scale).mul_(w_scale)


# ---------------------------------------------------------------------- which arithmetic, here

ARITHMETICS = ("auto", "8-bit", "float32")
# Weight levels tried, widest first: 127 (8 bits); 63 keeps a pair of u8×s8 products within
# int16 (2·255·63 = 32,130), so it is exact where oneDNN sums pairs in 16 bits (no VNNI).
WEIGHT_LEVELS = (127, 63)
# 8 bits run where the probe convolution runs at least MIN_SPEEDUP times as fast as float32, and
# keep whole-map changes in 8 bits (never going full) from NEVER_FULL_SPEEDUP. Measured, one
# thread, CPU seconds of approximate mode on speckle maps (every position evaluated), random
# weights at 224, patch 16 stride 8, float32 changes → 8 bits going full → 8 bits never full:
# - VNNI (probe 2.7–2.9×): never full 3.2× (VGG16), 2.6× (AlexNet), 1.5× (ResNet18) float32;
# - ONEDNN_MAX_CPU_ISA=AVX2, 7-bit weights (probe 1.3–1.6×): VGG16 36.3 → 26.7 → 21.2 s,
#   AlexNet 5.0 → 4.35 → 3.03 s, ResNet18 13.35 → 12.1 → 15.2 s: going full, 8 bits pay
#   1.1–1.4× on all three; never full loses on ResNet18.
MIN_SPEEDUP = 1.3
NEVER_FULL_SPEEDUP = 2.0
# The probe convolution: a VGG-like middle layer on a batch of changes (about 0.1 s in all).
_PROBE_CHANNELS, _PROBE_SIDE, _PROBE_BATCH, _PROBE_REPEATS = 128, 20, 16, 5


@dataclass(frozen=True)
class Arithmetic:
    """The arithmetic of approximate occlusion's changes on one device, and why.

    Attributes:
        name: ``"8-bit"`` or ``"float32"``.
        reason: why, in words: what the probes found and measured.
        weight_levels: 8-bit only: weights in ``-levels..levels`` (127, or 63 where the CPU
            sums pairs of products in 16 bits); 0 for float32.
        speedup: the probe convolution's float32 time over its 8-bit time, where measured.
        never_full: 8-bit only: whole-map changes stay in 8 bits, no node is recomputed in
            full (where 8 bits run at ``NEVER_FULL_SPEEDUP`` or more, or were asked for).
    """

    name: str
    reason: str
    weight_levels: int = 0
    speedup: float | None = None
    never_full: bool = False


def _integer_weight(shape: tuple[int, ...], levels: int, g: torch.Generator) -> torch.Tensor:
    """Random integer weights in ±levels, every output channel reaching +levels (scale 1);
    channel 0 all +levels and channel 1 all -levels: the pairs that saturate int16."""
    weight = torch.randint(-levels, levels + 1, shape, generator=g).float()
    weight[0], weight[1] = levels, -levels
    weight.view(shape[0], -1)[:, 0] = levels
    return weight


def products_exact(levels: int) -> bool:
    """Whether both 8-bit kernels sum worst-case u8×s8 products exactly, weights in ±``levels``.

    Runs :class:`Int8Kernels` itself, so whatever oneDNN dispatches to under this CPU and
    ``ONEDNN_MAX_CPU_ISA``, on integers whose 8-bit scales are exactly 1 (every row of the change
    reaches 127, every weight channel ``levels``): quantizing keeps every value, and the kernels'
    float32 output must equal the float64 sum. Row 0 of the change is +127 throughout (u8 255
    once shifted by 128), the worst case for the 16-bit pair sums of CPUs without VNNI.
    """
    g = torch.Generator().manual_seed(0)
    # Ordinary tensors even when called under inference mode (occlusion's): the kernels' weight
    # cache reads a version counter, which inference tensors lack.
    with torch.inference_mode(False), torch.no_grad():
        delta = torch.randint(-127, 128, (4, 16, 5, 5), generator=g).float()
        delta[0] = 127.0
        delta.view(4, -1)[:, 0] = 127.0
        conv = nn.Conv2d(16, 8, 3, padding=1, bias=False)
        fc = nn.Linear(delta[0].numel(), 8, bias=False)
        conv.weight.copy_(_integer_weight(conv.weight.shape, levels, g))
        fc.weight.copy_(_integer_weight(fc.weight.shape, levels, g))
    kernels = Int8Kernels(levels)
    with torch.inference_mode():
        outputs = (kernels.conv2d(delta, conv, (1, 1)), kernels.linear(delta.flatten(1), fc))
        references = (F.conv2d(delta.double(), conv.weight.double(), None, 1, 1),
                      delta.flatten(1).double() @ fc.weight.double().T)
    return all(out is not None and torch.equal(out.double(), ref)
               for out, ref in zip(outputs, references, strict=True))


def measure_speedup(levels: int) -> float:
    """Float32 time over 8-bit time (quantizing included) of one probe convolution.

    Timed on one thread, the least CPU time of a few interleaved runs each: on a busy machine
    two threads wait on each other at every barrier, and the ratio swung from 0.3 to 4.4 where
    one thread gave 2.8–2.9 (VNNI) and 1.6 (AVX2) every time.
    """
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode(False):  # ordinary tensors, as in products_exact
        conv = nn.Conv2d(_PROBE_CHANNELS, _PROBE_CHANNELS, 3, padding=1, bias=False)
        delta = torch.randn(_PROBE_BATCH, _PROBE_CHANNELS, _PROBE_SIDE, _PROBE_SIDE, generator=g)
        delta = delta.contiguous(memory_format=torch.channels_last)
    kernels = Int8Kernels(levels)
    calls = {"8-bit": lambda: kernels.conv2d(delta, conv, (1, 1)),
             "float32": lambda: F.conv2d(delta, conv.weight, None, 1, 1)}
    runs: dict[str, list[float]] = {name: [] for name in calls}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for call in calls.values():  # warm-up: packing, oneDNN's kernel generation
                if call() is None:
                    return 0.0
            for _ in range(_PROBE_REPEATS):
                for name, call in calls.items():
                    start = time.process_time()
                    call()
                    runs[name].append(time.process_time() - start)
    finally:
        torch.set_num_threads(threads)
    return min(runs["float32"]) / max(min(runs["8-bit"]), 1e-9)


_CHOSEN: dict[tuple[str, str], Arithmetic] = {}
_CHOSEN_LOCK = threading.Lock()


def choose_arithmetic(device: torch.device, prefer: str = "auto") -> Arithmetic:
    """The arithmetic approximate occlusion's changes use on ``device``, probed once per process.

    ``"auto"``: 8 bits where both kernels sum products exactly (at 127 weight levels, else 63)
    and the probe convolution runs at least ``MIN_SPEEDUP`` times as fast as float32 (never
    going full from ``NEVER_FULL_SPEEDUP``); float32 otherwise. ``"8-bit"``: 8 bits wherever
    exact, however fast, never going full. ``"float32"``: float32.
    """
    if prefer not in ARITHMETICS:
        raise ValueError(f"Unknown arithmetic {prefer!r}: use one of {', '.join(ARITHMETICS)}.")
    device = torch.device(device)
    if prefer == "float32":
        return Arithmetic("float32", "float32 was asked for")
    if device.type != "cpu":
        return Arithmetic("float32", f"the 8-bit kernels are CPU-only (oneDNN), this runs on "
                                     f"{device.type}")
    if not available(device):
        return Arithmetic("float32", "this PyTorch build lacks oneDNN's 8-bit kernels "
                                     "(torch.ops.onednn.qconv2d_pointwise, torch._int_mm)")
    with _CHOSEN_LOCK:
        key = (device.type, prefer)
        if key not in _CHOSEN:
            _CHOSEN[key] = _probe(prefer)
        return _CHOSEN[key]


@functools.cache
def exact_weight_levels() -> int | None:
    """The widest of ``WEIGHT_LEVELS`` whose products both kernels sum exactly here (probed
    once per process), or ``None``; needs :func:`available`."""
    return next((n for n in WEIGHT_LEVELS if products_exact(n)), None)


def _probe(prefer: str) -> Arithmetic:
    levels = exact_weight_levels()
    if levels is None:
        return Arithmetic("float32", "oneDNN's 8-bit products are not exact on this CPU, even "
                                     f"with weights in ±{WEIGHT_LEVELS[-1]}")
    how = ("oneDNN sums u8×s8 products exactly here (a VNNI/AMX-class CPU)" if levels == 127 else
           "this CPU's oneDNN adds pairs of u8×s8 products in 16 bits (no VNNI), which saturates "
           f"with 8-bit weights; with 7-bit weights (±{levels}) the products are exact")
    if prefer == "8-bit":
        return Arithmetic("8-bit", f"8-bit was asked for: {how}", levels, never_full=True)
    speedup = measure_speedup(levels)
    timed = f"a probe convolution ran {speedup:.1f}× as fast as float32"
    if speedup >= MIN_SPEEDUP:
        return Arithmetic("8-bit", f"{how}, and {timed}", levels, speedup,
                          never_full=speedup >= NEVER_FULL_SPEEDUP)
    return Arithmetic("float32", f"{how}, but {timed} (8 bits pay from {MIN_SPEEDUP:.1f}×)",
                      0, speedup)
