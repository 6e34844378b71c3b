"""Incremental inference for occlusion (Krypton, Nakandala et al., SIGMOD 2019), in plain PyTorch.

An occluding patch changes only a box of each layer's output: its projective field. The model is
traced once with torch.fx; the clean image's value of every node is kept; a batch of patch
positions then carries, per node, only the *change* ``delta = occluded - clean`` on a box of the
same size for every position of the batch.

- Linear ops act on the change alone: ``conv(x + d) = conv(x) + conv(d)`` (no bias), eval
  BatchNorm scales it, count-including-pad average pooling averages it. The change is zero
  outside its box and outside the map, so zero padding of the crop is exact.
- Non-linear ops read the clean values under the box: ``f(c + d) - f(c)`` for element-wise
  activations, ``maxpool(c + d) - maxpool(c)`` with ``-inf`` beyond the map.
- Zero padding modules (``nn.ZeroPad2d``: TF "SAME" padding) only move the box.
- Residual add and concat take the union of their inputs' boxes.
- Global average pooling and ``flatten`` turn the box into a whole change (:class:`Dense`),
  which linear layers, activations, add and concat carry on.
- Anything else, or a box covering most of its map, materializes ``clean + delta`` and runs the
  rest of the graph in full, so every model is handled exactly, only less quickly.
- Approximate mode (``quantized``) runs convolutions and linear layers on the change in 8 bits
  (:mod:`vizkit.methods.occlusion.int8`) and, where 8 bits are fast enough (``never_full``),
  never goes full: there, a whole-map change in 8 bits is cheaper than the float32 layer.

Positions in one batch are congruent modulo the network's total stride, so every crop of the
batch needs the same padding: each op is one dense call on a B×C×h×w tensor.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from vizkit.methods.occlusion.int8 import Int8Kernels, available, conv_in_8_bits
from vizkit.models.base import batchnorm_affine

# A node's box covering at least this fraction of its map is cheaper to compute in full.
FULL_FRACTION = 0.55

_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU,
    nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.Mish,
)
_PASS_THROUGH = (nn.Dropout, nn.Dropout2d, nn.Identity)
_ADD = (operator.add, operator.iadd, torch.add)
_ELEMENTWISE_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.hardtanh, F.silu, torch.sigmoid, F.gelu)

_TRACE_LOCK = threading.Lock()
_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class NotTraceable(RuntimeError):
    """The model cannot be traced with torch.fx; callers fall back to full inference."""


def traced_graph(module: nn.Module) -> fx.Graph:
    """The torch.fx graph of ``module`` in its current train/eval state, cached per module.

    Tracing patches ``nn.Module.__call__`` process-wide for its duration, so it happens once
    per model and under a lock.
    """
    key = module.training
    with _TRACE_LOCK:
        cached = _TRACES.get(module)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            graph = fx.Tracer().trace(module)
        except Exception as error:  # noqa: BLE001 - any tracing failure means "not traceable"
            raise NotTraceable(f"{type(module).__name__} cannot be traced: {error}") from error
        _TRACES[module] = (key, graph)
        return graph


@dataclass
class Crop:
    """The change of one node for a batch: ``delta`` on per-position boxes of one size.

    ``ys``/``xs`` are the boxes' top-left corners in the node's map (may lie outside it);
    ``delta`` is zero wherever the box leaves the map.
    """

    delta: torch.Tensor
    ys: np.ndarray
    xs: np.ndarray
    height: int
    width: int
    # False when ``delta`` is another node's too (passed through unchanged): not to be
    # modified in place.
    owned: bool = True

    @property
    def h(self) -> int:
        return self.delta.shape[-2]

    @property
    def w(self) -> int:
        return self.delta.shape[-1]


@dataclass
class Dense:
    """The change of one node for a batch, whole: ``delta`` is B× the clean value's shape
    (past global pooling or ``flatten``, where no box is left to track)."""

    delta: torch.Tensor


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _axis_window(starts: np.ndarray, size: int, k: int, s: int, p: int, d: int):
    """Output box and input padding of a window op along one axis (same for every position).

    Returns ``(out_starts, out_size, pad_before, pad_after)``: the op applied without padding
    to the crop padded by ``pad_before``/``pad_after`` (negative crops) gives exactly the
    outputs ``out_starts .. out_starts + out_size`` of every position.
    """
    keff = d * (k - 1) + 1
    first = -((-(starts + p - keff + 1)) // s)  # ceil division
    last = (starts + size - 1 + p) // s
    n = last - first + 1
    before = starts - (first * s - p)
    if len(set(n.tolist())) != 1 or len(set(before.tolist())) != 1:
        raise AssertionError("positions of one batch must share their crop geometry")
    n, before = int(n[0]), int(before[0])
    after = (n - 1) * s + keff - before - size
    return first, n, before, after


def _windows(padded: torch.Tensor, ys: np.ndarray, xs: np.ndarray, h: int, w: int
             ) -> torch.Tensor:
    """The h×w windows of ``padded`` (1×C×H×W, channels-last) at ``(ys, xs)``: B×C×h×w.

    Changes are kept channels-last throughout: oneDNN's convolutions and max-pooling are
    fastest there (NCHW max-pooling is ~10× slower), and mixing layouts makes element-wise
    ops strided. Each window's rows are runs of w×C contiguous values, copied one position
    at a time into a channels-last batch: 2–3× faster than advanced indexing from 128
    channels up, a little slower below.
    """
    channels = padded.shape[1]
    hwc = padded[0].permute(1, 2, 0)  # H×W×C view, contiguous
    if channels < 128:
        windows = hwc.unfold(0, h, 1).unfold(1, w, 1).permute(0, 1, 3, 4, 2)  # H'×W'×h×w×C
        iy = torch.as_tensor(ys, device=padded.device)
        ix = torch.as_tensor(xs, device=padded.device)
        return windows[iy, ix].permute(0, 3, 1, 2)
    out = torch.empty((len(ys), h, w, channels), dtype=padded.dtype, device=padded.device)
    for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist(), strict=True)):
        out[i] = hwc[y:y + h, x:x + w]
    return out.permute(0, 3, 1, 2)


class IncrementalOcclusion:
    """Evaluates a model on many occluded copies of one image, recomputing only what changes.

    Args:
        module: the model (eval mode; it is never modified).
        x: the clean input, 1×C×H×W on the model's device.
        watch: node name whose value is also reported (layer activation drop), or ``None``.
        cap_fraction: approximate mode (projective-field thresholding): the change of a node is
            kept only on a centred box of at most this fraction of its map side; ``None`` is exact.
        quantized: approximate mode: convolutions and linear layers act on the change with
            8-bit operands (:mod:`vizkit.methods.occlusion.int8`, CPU only; ignored where unavailable).
        weight_levels: with ``quantized``, weights in ``-levels..levels``: 127, or 63 where the
            CPU sums pairs of products in 16 bits (``int8.exact_weight_levels``).
        never_full: with ``quantized``, no node is ever recomputed in full, so every layer runs
            on the change (a whole-map change in 8 bits is cheaper than the float32 layer where
            8 bits run at 2× or more), unless a depthwise convolution (left to float32,
            ``int8.conv_in_8_bits``) would see it; otherwise nodes go full as in exact mode.
    """

    def __init__(
        self,
        module: nn.Module,
        x: torch.Tensor,
        watch: str | None = None,
        cap_fraction: float | None = None,
        quantized: bool = False,
        weight_levels: int = 127,
        never_full: bool = True,
    ):
        self.module = module
        self.graph = traced_graph(module)
        self.nodes = list(self.graph.nodes)
        self.submodules = dict(module.named_modules())
        self.watch = watch
        self.cap_fraction = cap_fraction
        self.int8 = Int8Kernels(weight_levels) if quantized and available(x.device) else None
        self.depends = self._input_dependence()
        never_full = never_full and self.int8 is not None and self._no_depthwise_in_float()
        self.full_fraction = math.inf if never_full else FULL_FRACTION
        self.clean: dict[fx.Node, torch.Tensor] = {}
        self._padded: dict[tuple[fx.Node, float], tuple[int, torch.Tensor]] = {}
        self.x = x
        with torch.inference_mode():
            # Channels-last from the input on: the clean values keep that layout, and so do
            # the batches materialized from them for nodes run in full, where oneDNN's
            # convolutions run 1.3-8x faster than on NCHW batches (one thread, EfficientNet-
            # Lite0's late 1x1 and depthwise layers at batch 64).
            self.output = self._run_full_graph(
                x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x, self.clean)
        self.total_stride = self._total_stride()
        self._fusions = self._find_fusions()

    # ------------------------------------------------------------------ graph helpers
    def _input_dependence(self) -> set[fx.Node]:
        dep: set[fx.Node] = set()
        for node in self.nodes:
            if node.op == "placeholder" or any(a in dep for a in node.all_input_nodes):
                dep.add(node)
        return dep

    def _no_depthwise_in_float(self) -> bool:
        """Whether no grouped convolution past the first is left to float32 (depthwise ones are).

        Through a depthwise layer a whole-map change costs more than the layer run in full.
        Approximate mode's CPU seconds never going full / going full / exact (random weights,
        224 px, patch 16 stride 8, one thread, VNNI): EfficientNet-Lite0 36.7 / 7.0 / 9.6,
        MobileNetV2 5.7 / 2.7 / 6.3 (342 of 729 positions evaluated). Small dense convolutions
        do not hurt: SqueezeNet 1.1 (1×1 expands of 16 channels) 2.2 / 3.3 / 4.1. A first
        convolution sees only the patch, never a whole map.
        """
        past_conv: set[fx.Node] = set()  # nodes downstream of a convolution
        for node in self.nodes:
            if node not in self.depends:
                continue
            upstream = any(a in past_conv for a in node.all_input_nodes)
            mod = self.submodules.get(node.target) if node.op == "call_module" else None
            if isinstance(mod, nn.Conv2d):
                if upstream and mod.groups > 1 and not conv_in_8_bits(mod):
                    return False
                past_conv.add(node)
            elif upstream:
                past_conv.add(node)
        return True

    def _find_fusions(self) -> dict[fx.Node, tuple[list[fx.Node], torch.Tensor, torch.Tensor,
                                                    tuple[float, float] | None]]:
        """Convolutions followed by eval BatchNorm (and ReLU/ReLU6), each the only reader of
        the one before: run in full, the three are one convolution with BatchNorm folded into
        its weight and bias, clamped in place (Ioffe & Szegedy 2015: in eval mode BatchNorm is
        a per-channel affine map). Where a network's late layers run in full (a box covering
        most of the map), memory traffic, not multiply-adds, dominates them at batch size:
        EfficientNet-Lite0's late BatchNorm and ReLU6 nodes cost as much as its 1x1 convolutions.

        Maps each such convolution to ``(nodes it absorbs, weight, bias, clamp range or None)``.
        """
        fusions = {}
        for node in self.nodes:
            conv = self.submodules.get(node.target) if node.op == "call_module" else None
            if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" \
                    or isinstance(conv.padding, str) or len(node.users) != 1:
                continue
            bn_node = next(iter(node.users))
            bn = self.submodules.get(bn_node.target) if bn_node.op == "call_module" else None
            if not isinstance(bn, nn.BatchNorm2d) or bn.training or bn.running_var is None \
                    or bn_node.kwargs or len(bn_node.all_input_nodes) != 1:
                continue
            scale, shift = batchnorm_affine(bn)
            with torch.no_grad():
                if conv.bias is not None:
                    shift = shift + conv.bias * scale
                weight = (conv.weight * scale.view(-1, 1, 1, 1)).detach().to(conv.weight.dtype)
            absorbed, clamp = [bn_node], None
            act_node = next(iter(bn_node.users)) if len(bn_node.users) == 1 else None
            act = self.submodules.get(act_node.target) \
                if act_node is not None and act_node.op == "call_module" else None
            if isinstance(act, nn.ReLU):
                absorbed, clamp = [bn_node, act_node], (0.0, math.inf)
            elif isinstance(act, nn.Hardtanh):  # ReLU6 included
                absorbed, clamp = [bn_node, act_node], (float(act.min_val), float(act.max_val))
            fusions[node] = (absorbed, weight, shift.detach().to(conv.weight.dtype), clamp)
        return fusions

    def _fused_full(self, node: fx.Node, x: torch.Tensor, absorbed: set[fx.Node]
                    ) -> torch.Tensor | None:
        """``node`` (a convolution) run in full with the BatchNorm and activation after it
        (``_find_fusions``); the nodes absorbed join ``absorbed``. ``None`` where none follow,
        or where one of them is watched."""
        fusion = self._fusions.get(node)
        if fusion is None or not isinstance(x, torch.Tensor) or any(
                n.name == self.watch for n in (node, *fusion[0][:-1])):
            return None
        nodes, weight, bias, clamp = fusion
        conv = self.submodules[node.target]
        out = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if clamp is not None:
            out = out.clamp_(clamp[0], None if math.isinf(clamp[1]) else clamp[1])
        absorbed.update(nodes)
        return out

    def _total_stride(self) -> int:
        """Least common multiple of every node's cumulative stride w.r.t. the input."""
        stride: dict[fx.Node, int] = {}
        total = 1
        for node in self.nodes:
            inputs = [stride[a] for a in node.all_input_nodes if a in stride]
            here = math.lcm(*inputs) if inputs else 1
            if node.op == "call_module":
                mod = self.submodules[node.target]
                if isinstance(mod, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                    s = mod.stride if mod.stride is not None else mod.kernel_size
                    sy, sx = _pair(s)
                    here *= math.lcm(sy, sx)
            stride[node] = here
            total = math.lcm(total, here)
        return total

    def _run_full_graph(self, x: torch.Tensor, store: dict | None) -> torch.Tensor:
        env: dict[fx.Node, object] = {}
        for node in self.nodes:
            if node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: env[n])
                return out[0] if isinstance(out, (tuple, list)) else out
            value = x if node.op == "placeholder" else self._full_op(node, env)
            env[node] = value
            if store is not None:
                store[node] = value
        raise AssertionError("graph has no output")

    def _full_op(self, node: fx.Node, env: dict) -> object:
        """Runs one node on full values, never in place (clean values are kept)."""
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = dict(fx.node.map_arg(node.kwargs, lambda n: env[n]))
        if node.op == "get_attr":
            obj = self.module
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        if node.op == "call_module":
            mod = self.submodules[node.target]
            if isinstance(mod, nn.ReLU):
                return F.relu(args[0])
            if isinstance(mod, nn.Hardtanh):  # ReLU6 included
                return F.hardtanh(args[0], mod.min_val, mod.max_val)
            if getattr(mod, "inplace", False):
                args = (args[0].clone(), *args[1:])
            return mod(*args, **kwargs)
        if node.op == "call_function":
            if "inplace" in kwargs:
                kwargs["inplace"] = False
            target = operator.add if node.target is operator.iadd else node.target
            return target(*args, **kwargs)
        if node.op == "call_method":
            self_arg, *rest = args
            if node.target.endswith("_") and isinstance(self_arg, torch.Tensor):
                self_arg = self_arg.clone()
            return getattr(self_arg, node.target)(*rest, **kwargs)
        raise AssertionError(f"unexpected node {node.op}")

    # ------------------------------------------------------------------ clean-value access
    def _padded_clean(self, node: fx.Node, fill: float, margin: int) -> tuple[int, torch.Tensor]:
        key = (node, fill)
        cached = self._padded.get(key)
        if cached is None or cached[0] < margin:
            margin = max(margin, 8)
            padded = F.pad(self.clean[node], (margin,) * 4, value=fill)
            cached = (margin, padded.contiguous(memory_format=torch.channels_last))
            self._padded[key] = cached
        return cached

    def _gather(self, node: fx.Node, fill: float, ys, xs, h: int, w: int) -> torch.Tensor:
        """Clean values of ``node`` on each position's box (``fill`` outside the map): B×C×h×w."""
        clean = self.clean[node]
        height, width = clean.shape[-2:]
        need = max(0, -int(ys.min()), -int(xs.min()), int(ys.max()) + h - height,
                   int(xs.max()) + w - width)
        margin, padded = self._padded_clean(node, fill, need)
        return _windows(padded, ys + margin, xs + margin, h, w)

    def _materialize(self, node: fx.Node, crop: Crop) -> torch.Tensor:
        clean = self.clean[node]
        full = clean.expand(crop.delta.shape[0], *clean.shape[1:])
        return self._scatter(full.clone(memory_format=torch.channels_last) if full.dim() == 4
                             else full.clone(), crop)

    @staticmethod
    def _scatter(full: torch.Tensor, crop: Crop) -> torch.Tensor:
        """Adds each position's box of ``crop`` into ``full`` (B×C×H×W), in place."""
        for b, (y, x) in enumerate(zip(crop.ys.tolist(), crop.xs.tolist(), strict=True)):
            y0, x0 = max(y, 0), max(x, 0)
            y1, x1 = min(y + crop.h, crop.height), min(x + crop.w, crop.width)
            if y1 > y0 and x1 > x0:
                full[b, :, y0:y1, x0:x1] += crop.delta[b, :, y0 - y:y1 - y, x0 - x:x1 - x]
        return full

    @staticmethod
    def _zero_outside(crop: Crop) -> None:
        """Zeroes, in place, the box cells that lie outside the map.

        Only the border strips are touched: positions are grouped by how many of their
        leading (trailing) rows or columns are outside, one ``index_fill_`` per group.
        """
        delta = crop.delta
        for dim, starts, size, length in ((2, crop.ys, crop.h, crop.height),
                                          (3, crop.xs, crop.w, crop.width)):
            before = np.clip(-starts, 0, size)
            after = np.clip(starts + size - length, 0, size)
            for counts, at_end in ((before, False), (after, True)):
                for k in np.unique(counts[counts > 0]).tolist():
                    rows = torch.as_tensor(np.nonzero(counts == k)[0], device=delta.device)
                    strip = delta.narrow(dim, size - k if at_end else 0, k)
                    strip.index_fill_(0, rows, 0.0)

    def _finish(self, node: fx.Node, crop: Crop, masked: bool = True) -> Crop | torch.Tensor:
        """Zeroes the change outside the map, caps it (approximate), or goes full."""
        if masked:
            self._zero_outside(crop)
        crop = self._trim(crop)
        if self.cap_fraction is not None:
            crop = self._cap(crop)
        if crop.h * crop.w >= self.full_fraction * crop.height * crop.width:
            return self._materialize(node, crop)
        return crop

    @staticmethod
    def _trim(crop: Crop) -> Crop:
        """Drops the box's rows and columns that lie outside the map for every position.

        Exact: the change is zero there. It keeps a box that has grown past the map's edges
        (a whole-map change, whose halo would otherwise grow with every convolution) at the
        map's size.
        """
        top, left = max(0, -int(crop.ys.max())), max(0, -int(crop.xs.max()))
        bottom = max(0, int(crop.ys.min()) + crop.h - crop.height)
        right = max(0, int(crop.xs.min()) + crop.w - crop.width)
        if not (top or left or bottom or right) or top + bottom >= crop.h \
                or left + right >= crop.w:
            return crop
        delta = crop.delta[:, :, top:crop.h - bottom, left:crop.w - right]
        return Crop(delta, crop.ys + top, crop.xs + left, crop.height, crop.width)

    def _cap(self, crop: Crop) -> Crop:
        """Projective-field thresholding: keep the change on a centred box only (approximate)."""
        cap_h = max(1, math.ceil(self.cap_fraction * crop.height))
        cap_w = max(1, math.ceil(self.cap_fraction * crop.width))
        if crop.h <= cap_h and crop.w <= cap_w:
            return crop
        top = max(0, (crop.h - cap_h) // 2)
        left = max(0, (crop.w - cap_w) // 2)
        h, w = min(crop.h, cap_h), min(crop.w, cap_w)
        return Crop(crop.delta[:, :, top:top + h, left:left + w].contiguous(), crop.ys + top,
                    crop.xs + left, crop.height, crop.width)

    # ------------------------------------------------------------------ incremental ops
    def _window_op(self, node: fx.Node, crop: Crop, mod: nn.Module) -> Crop | torch.Tensor | None:
        out_h, out_w = self.clean[node].shape[-2:]
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                return None
            k, s, p, d = mod.kernel_size, mod.stride, mod.padding, mod.dilation
        elif isinstance(mod, nn.MaxPool2d):
            k, s, p, d = (_pair(v) for v in (mod.kernel_size, mod.stride or mod.kernel_size,
                                             mod.padding, mod.dilation))
        elif isinstance(mod, nn.AvgPool2d):
            if not mod.count_include_pad or mod.divisor_override is not None or mod.ceil_mode:
                return None
            k, s, p = (_pair(v) for v in (mod.kernel_size, mod.stride or mod.kernel_size,
                                          mod.padding))
            d = (1, 1)
        else:
            return None
        oy, nh, top, bottom = _axis_window(crop.ys, crop.h, k[0], s[0], p[0], d[0])
        ox, nw, left, right = _axis_window(crop.xs, crop.w, k[1], s[1], p[1], d[1])
        if isinstance(mod, nn.Conv2d):
            if top == bottom >= 0 and left == right >= 0:  # the convolution pads, no copy
                window, padding = crop.delta, (top, left)
            else:
                window, padding = F.pad(crop.delta, (left, right, top, bottom)), (0, 0)
            delta = None if self.int8 is None else self.int8.conv2d(window, mod, padding)
            if delta is None:
                delta = F.conv2d(window, mod.weight, None, mod.stride, padding, mod.dilation,
                                 mod.groups)
        elif isinstance(mod, nn.AvgPool2d):
            window = F.pad(crop.delta, (left, right, top, bottom))
            delta = F.avg_pool2d(window, k, s, 0)
        else:
            source = node.all_input_nodes[0]
            h, w = crop.h + top + bottom, crop.w + left + right
            window = self._gather(source, float("-inf"), crop.ys - top, crop.xs - left, h, w)
            if min(top, bottom, left, right) >= 0:  # add the change in place, no padded copy
                window[:, :, top:top + crop.h, left:left + crop.w] += crop.delta
            else:
                window += F.pad(crop.delta, (left, right, top, bottom))
            pooled = F.max_pool2d(window, k, s, 0, d)
            clean_out = self._gather(node, 0.0, oy, ox, nh, nw)
            # Cells outside the map pooled -inf (or a value) against a clean 0: zeroed.
            return self._finish(node, Crop(pooled.sub_(clean_out), oy, ox, out_h, out_w))
        return self._finish(node, Crop(delta, oy, ox, out_h, out_w))

    def _elementwise(self, node: fx.Node, crop: Crop, fn: Callable) -> Crop:
        """``fn(clean + delta) - fn(clean)`` on the box (ReLU in place on the gathered copy)."""
        source = node.all_input_nodes[0]
        clean = self._gather(source, 0.0, crop.ys, crop.xs, crop.h, crop.w)
        if fn is F.relu:
            if crop.owned and len(source.users) == 1 and source.name != self.watch:
                # Nothing else reads the input's change: no new tensor at all.
                delta = crop.delta.add_(clean).relu_().sub_(clean.relu_())
            else:
                before = F.relu(clean)
                delta = clean.add_(crop.delta).relu_().sub_(before)
        elif isinstance(fn, functools.partial) and fn.func is F.hardtanh:
            # A clamp (ReLU6), on a new sum and in place on the gathered copy: two tensors
            # fewer than the generic form, on a memory-bound op.
            low, high = fn.keywords["min_val"], fn.keywords["max_val"]
            delta = clean.add(crop.delta).clamp_(low, high).sub_(clean.clamp_(low, high))
        else:
            delta = fn(clean + crop.delta) - fn(clean)
        # Outside the map both the change and the gathered clean value are 0, and
        # f(0 + 0) - f(0) = 0: no mask needed.
        out = Crop(delta, crop.ys, crop.xs, crop.height, crop.width)
        return self._finish(node, out, masked=False)

    def _union(self, crops: list[Crop]) -> list[Crop]:
        """Pads every crop to the union of their boxes (same geometry for the whole batch)."""
        y0 = min(int(c.ys[0]) for c in crops)
        x0 = min(int(c.xs[0]) for c in crops)
        y1 = max(int(c.ys[0]) + c.h for c in crops)
        x1 = max(int(c.xs[0]) + c.w for c in crops)
        shift_y, shift_x = crops[0].ys - crops[0].ys[0], crops[0].xs - crops[0].xs[0]
        out = []
        for c in crops:
            if not (np.array_equal(c.ys - c.ys[0], shift_y)
                    and np.array_equal(c.xs - c.xs[0], shift_x)):
                raise AssertionError("merged crops must move together")
            top, left = int(c.ys[0]) - y0, int(c.xs[0]) - x0
            pads = (left, x1 - x0 - left - c.w, top, y1 - y0 - top - c.h)
            out.append(Crop(F.pad(c.delta, pads), c.ys - top, c.xs - left, c.height, c.width))
        return out

    @staticmethod
    def _module_fn(mod: nn.Module) -> Callable | None:
        """The element-wise function of an activation module, or ``None`` (in-place ones)."""
        if isinstance(mod, nn.ReLU):
            return F.relu
        if isinstance(mod, nn.Hardtanh):  # ReLU6 included
            return functools.partial(F.hardtanh, min_val=mod.min_val, max_val=mod.max_val)
        if getattr(mod, "inplace", False):
            return None
        return mod.forward

    @staticmethod
    def _function_fn(node: fx.Node) -> Callable | None:
        """The element-wise function a ``call_function`` node applies to its one input."""
        target = node.target
        if target not in _ELEMENTWISE_FUNCTIONS or len(node.all_input_nodes) != 1 \
                or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        if target in (F.relu, torch.relu):
            return F.relu
        kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
        extra = node.args[1:] if target in (F.hardtanh,) else ()
        if target in (F.relu6, F.silu) and len(node.args) > 1:
            extra = ()  # the positional 'inplace' flag
        return lambda t: target(t, *extra, **kwargs)

    def _elementwise_fn(self, node: fx.Node, mod: nn.Module | None) -> Callable | None:
        """The element-wise function ``node`` applies (a module or a function), or ``None``."""
        if mod is not None:
            return self._module_fn(mod) if isinstance(mod, _ELEMENTWISE) else None
        return self._function_fn(node) if node.op == "call_function" else None

    @staticmethod
    def _flatten_dims(node: fx.Node, mod: nn.Module | None) -> tuple[int, int] | None:
        """``(start, end)`` of a flatten that keeps the batch dimension, else ``None``."""
        if isinstance(mod, nn.Flatten):
            start, end = mod.start_dim, mod.end_dim
        elif node.op == "call_function" and node.target is torch.flatten:
            start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
        else:
            return None
        return (start, end) if isinstance(start, int) and start >= 1 else None

    def _global_average(self, node: fx.Node, mod: nn.Module | None) -> bool:
        """Whether the node averages each channel over its whole map (to 1×1)."""
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            size = mod.output_size
        elif node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
            size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
        else:
            return False
        return size in (1, (1, 1), [1, 1]) and tuple(self.clean[node].shape[-2:]) == (1, 1)

    def _incremental_op(self, node: fx.Node, env: dict) -> Crop | Dense | torch.Tensor | None:
        """The node's change from its inputs' changes, or ``None`` when it must run in full."""
        inputs = [env[a] for a in node.all_input_nodes]
        if any(isinstance(v, Dense) for v in inputs):
            return self._dense_op(node, inputs)
        crops = [v for v in inputs if isinstance(v, Crop)]
        if not crops:
            return None
        mod = self.submodules[node.target] if node.op == "call_module" else None
        if len(inputs) == 1 and (mod is None or not node.kwargs):
            crop = crops[0]
            flatten = self._flatten_dims(node, mod)
            if flatten is not None:
                return Dense(self._scatter(torch.zeros(
                    crop.delta.shape[0], *self.clean[node.all_input_nodes[0]].shape[1:],
                    dtype=crop.delta.dtype, device=crop.delta.device), crop).flatten(*flatten))
            if self._global_average(node, mod):
                return Dense(crop.delta.sum((-2, -1), keepdim=True) / (crop.height * crop.width))
        if mod is not None:
            if len(node.all_input_nodes) != 1 or node.kwargs:
                return None
            crop = crops[0]
            if isinstance(mod, _PASS_THROUGH) and not mod.training:
                return dataclasses.replace(crop, owned=False)
            if isinstance(mod, nn.ConstantPad2d) and mod.value == 0 and len(mod.padding) == 4 \
                    and min(mod.padding) >= 0:
                # Zero padding (TF "SAME", asymmetric): the padded cells are 0 occluded or not,
                # so the change keeps its values and moves by the leading pad.
                left, right, top, bottom = mod.padding
                return Crop(crop.delta, crop.ys + top, crop.xs + left, crop.height + top + bottom,
                            crop.width + left + right, owned=False)
            if isinstance(mod, nn.BatchNorm2d):
                if mod.training or mod.running_var is None:
                    return None
                scale, _ = batchnorm_affine(mod)  # the shift cancels in a change
                return Crop(crop.delta * scale.view(1, -1, 1, 1), crop.ys, crop.xs,
                            crop.height, crop.width)
            if isinstance(mod, _ELEMENTWISE):
                fn = self._elementwise_fn(node, mod)
                return None if fn is None else self._elementwise(node, crop, fn)
            if isinstance(mod, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
                if tuple(self.clean[node].shape[-2:]) == (crop.height, crop.width):
                    return dataclasses.replace(crop, owned=False)
                return None
            return self._window_op(node, crop, mod)
        if node.op == "call_function":
            target = node.target
            fn = self._elementwise_fn(node, None)
            if fn is not None:
                return self._elementwise(node, crops[0], fn)
            if target in _ADD and len(node.args) == 2 and not node.kwargs \
                    and len(crops) == 2 and len(inputs) == 2:
                a, b = self._union(crops)
                return Crop(a.delta + b.delta, a.ys, a.xs, a.height, a.width)
            if target is torch.cat and len(crops) == len(inputs) and len(crops) >= 1:
                dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
                if dim not in (1, -3) or not isinstance(node.args[0], (list, tuple)) \
                        or len(node.args[0]) != len(crops):
                    return None
                parts = self._union(crops)
                return Crop(torch.cat([c.delta for c in parts], 1), parts[0].ys, parts[0].xs,
                            parts[0].height, parts[0].width)
        return None

    def _dense_op(self, node: fx.Node, inputs: list) -> Dense | None:
        """A whole change through linear layers, activations, flatten, add and concat."""
        if not all(isinstance(v, Dense) for v in inputs):
            return None
        deltas = [v.delta for v in inputs]
        mod = self.submodules[node.target] if node.op == "call_module" else None
        if mod is not None and (len(deltas) != 1 or node.kwargs):
            return None
        if len(deltas) == 1:
            delta = deltas[0]
            if isinstance(mod, _PASS_THROUGH) and not mod.training:
                return inputs[0]
            if isinstance(mod, nn.Linear):
                out = None
                if self.int8 is not None and delta.dim() == 2:
                    out = self.int8.linear(delta, mod)
                return Dense(F.linear(delta, mod.weight) if out is None else out)
            fn = self._elementwise_fn(node, mod)
            if fn is not None:
                clean = self.clean[node.all_input_nodes[0]]
                return Dense(fn(clean + delta) - fn(clean))
            flatten = self._flatten_dims(node, mod)
            if flatten is not None:
                return Dense(delta.flatten(*flatten))
        if node.op == "call_function":
            if node.target in _ADD and len(node.args) == 2 and not node.kwargs \
                    and len(deltas) == 2:
                return Dense(deltas[0] + deltas[1])
            if node.target is torch.cat and isinstance(node.args[0], (list, tuple)) \
                    and len(node.args[0]) == len(deltas):
                dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
                if isinstance(dim, int) and dim % deltas[0].dim() != 0:
                    return Dense(torch.cat(deltas, dim))
        return None

    # ------------------------------------------------------------------ batch evaluation
    def input_crop(self, baseline: torch.Tensor, ys: np.ndarray, xs: np.ndarray,
                   patch: int) -> Crop:
        """The change of the input for patches at ``(ys, xs)``: ``baseline - x`` under each."""
        placeholder = self.nodes[0]
        diff = baseline.expand_as(self.x) - self.x
        key = (placeholder, "diff")
        if key not in self._padded:
            padded = F.pad(diff, (patch,) * 4).contiguous(memory_format=torch.channels_last)
            self._padded[key] = (patch, padded)
        margin, padded = self._padded[key]
        delta = _windows(padded, ys + margin, xs + margin, patch, patch)
        return Crop(delta, ys.copy(), xs.copy(), diff.shape[-2], diff.shape[-1])

    def run_batch(self, baseline: torch.Tensor, ys: np.ndarray, xs: np.ndarray, patch: int
                  ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """Logits (and the watched node's value) for patches at ``(ys, xs)``.

        Returns ``(logits B×K, watched, stats)``; ``watched`` is a :class:`Crop` or a full
        tensor (``None`` without a watched node); ``stats`` counts incremental and full nodes.
        """
        env: dict[fx.Node, object] = {}
        watched = None
        stats = {"incremental": 0, "full": 0}
        absorbed: set[fx.Node] = set()  # computed by a fused convolution before them
        for node in self.nodes:
            if node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: self._value(n, env))
                logits = out[0] if isinstance(out, (tuple, list)) else out
                return logits, watched, stats
            if node.op == "placeholder":
                value = self.input_crop(baseline, ys, xs, patch)
            elif node not in self.depends:
                value = self.clean[node]
            elif node in absorbed:  # its value is its input's, already computed
                value = env[node.all_input_nodes[0]]
                stats["full"] += 1
            else:
                value = self._incremental_op(node, env)
                if value is None:
                    full_env = {a: self._value(a, env) for a in node.all_input_nodes}
                    if node in self._fusions:  # value is None here
                        value = self._fused_full(node, full_env[node.all_input_nodes[0]],
                                                 absorbed)
                    if value is None:
                        value = self._full_op(node, full_env)
                    stats["full"] += 1
                else:
                    stats["incremental"] += 1
            env[node] = value
            if node.name == self.watch:
                watched = self._value(node, env) if isinstance(value, Dense) else value
            for a in node.all_input_nodes:  # free values no later node reads
                if a in env and all(u in env for u in a.users):
                    env.pop(a)
        raise AssertionError("graph has no output")

    def _value(self, node: fx.Node, env: dict) -> object:
        value = env[node]
        if isinstance(value, Crop):
            return self._materialize(node, value)
        if isinstance(value, Dense):
            return self.clean[node] + value.delta
        return value
