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
- Residual add and concat take the union of their inputs' boxes.
- Anything else, or a box covering most of its map, materializes ``clean + delta`` and runs the
  rest of the graph in full, so every model is handled exactly, only less quickly.

Positions in one batch are congruent modulo the network's total stride, so every crop of the
batch needs the same padding: each op is one dense call on a B×C×h×w tensor.
"""

from __future__ import annotations

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

    @property
    def h(self) -> int:
        return self.delta.shape[-2]

    @property
    def w(self) -> int:
        return self.delta.shape[-1]


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


class IncrementalOcclusion:
    """Evaluates a model on many occluded copies of one image, recomputing only what changes.

    Args:
        module: the model (eval mode; it is never modified).
        x: the clean input, 1×C×H×W on the model's device.
        watch: node name whose value is also reported (layer activation drop), or ``None``.
        cap_fraction: approximate mode (projective-field thresholding): the change of a node is
            kept only on a centred box of at most this fraction of its map side; ``None`` is exact.
    """

    def __init__(
        self,
        module: nn.Module,
        x: torch.Tensor,
        watch: str | None = None,
        cap_fraction: float | None = None,
    ):
        self.module = module
        self.graph = traced_graph(module)
        self.nodes = list(self.graph.nodes)
        self.submodules = dict(module.named_modules())
        self.watch = watch
        self.cap_fraction = cap_fraction
        self.depends = self._input_dependence()
        self.clean: dict[fx.Node, torch.Tensor] = {}
        self._padded: dict[tuple[fx.Node, float], tuple[int, torch.Tensor]] = {}
        self.x = x
        with torch.inference_mode():
            self.output = self._run_full_graph(x, self.clean)
        self.total_stride = self._total_stride()

    # ------------------------------------------------------------------ graph helpers
    def _input_dependence(self) -> set[fx.Node]:
        dep: set[fx.Node] = set()
        for node in self.nodes:
            if node.op == "placeholder" or any(a in dep for a in node.all_input_nodes):
                dep.add(node)
        return dep

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
            cached = (margin, padded)
            self._padded[key] = cached
        return cached

    def _gather(self, node: fx.Node, fill: float, ys, xs, h: int, w: int) -> torch.Tensor:
        """Clean values of ``node`` on each position's box (``fill`` outside the map): B×C×h×w."""
        clean = self.clean[node]
        height, width = clean.shape[-2:]
        need = max(0, -int(ys.min()), -int(xs.min()), int(ys.max()) + h - height,
                   int(xs.max()) + w - width)
        margin, padded = self._padded_clean(node, fill, need)
        # H'×W'×C×h×w view: indexing its first two dims copies the windows once, batch first.
        windows = padded[0].unfold(1, h, 1).unfold(2, w, 1).permute(1, 2, 0, 3, 4)
        iy = torch.as_tensor(ys + margin, device=clean.device)
        ix = torch.as_tensor(xs + margin, device=clean.device)
        return windows[iy, ix]

    def _materialize(self, node: fx.Node, crop: Crop) -> torch.Tensor:
        clean = self.clean[node]
        full = clean.expand(crop.delta.shape[0], *clean.shape[1:]).clone()
        for b, (y, x) in enumerate(zip(crop.ys.tolist(), crop.xs.tolist(), strict=True)):
            y0, x0 = max(y, 0), max(x, 0)
            y1, x1 = min(y + crop.h, crop.height), min(x + crop.w, crop.width)
            if y1 > y0 and x1 > x0:
                full[b, :, y0:y1, x0:x1] += crop.delta[b, :, y0 - y:y1 - y, x0 - x:x1 - x]
        return full

    @staticmethod
    def _outside_mask(crop: Crop) -> torch.Tensor | None:
        """B×1×h×w mask of the box cells inside the map, or ``None`` when all are."""
        ys, xs = crop.ys, crop.xs
        if ys.min() >= 0 and xs.min() >= 0 and ys.max() + crop.h <= crop.height \
                and xs.max() + crop.w <= crop.width:
            return None
        ry = ys[:, None] + np.arange(crop.h)[None]
        rx = xs[:, None] + np.arange(crop.w)[None]
        my = (ry >= 0) & (ry < crop.height)
        mx = (rx >= 0) & (rx < crop.width)
        mask = my[:, :, None] & mx[:, None, :]
        return torch.as_tensor(mask[:, None], device=crop.delta.device)

    def _finish(self, node: fx.Node, crop: Crop, masked: bool = True) -> Crop | torch.Tensor:
        """Zeroes the change outside the map, caps it (approximate), or goes full."""
        if masked:
            mask = self._outside_mask(crop)
            if mask is not None:
                crop.delta = torch.where(mask, crop.delta, torch.zeros((), dtype=crop.delta.dtype,
                                                                        device=crop.delta.device))
        if self.cap_fraction is not None:
            crop = self._cap(crop)
        if crop.h * crop.w >= FULL_FRACTION * crop.height * crop.width:
            return self._materialize(node, crop)
        return crop

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
                delta = F.conv2d(crop.delta, mod.weight, None, mod.stride, (top, left),
                                 mod.dilation, mod.groups)
            else:
                window = F.pad(crop.delta, (left, right, top, bottom))
                delta = F.conv2d(window, mod.weight, None, mod.stride, 0, mod.dilation,
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
            out = Crop(pooled, oy, ox, out_h, out_w)
            mask = self._outside_mask(out)
            delta = pooled - clean_out
            if mask is not None:
                delta = torch.where(mask, delta, torch.zeros((), dtype=delta.dtype,
                                                             device=delta.device))
            out.delta = delta
            return self._finish(node, out, masked=False)
        return self._finish(node, Crop(delta, oy, ox, out_h, out_w))

    def _elementwise(self, node: fx.Node, crop: Crop, fn: Callable) -> Crop:
        """``fn(clean + delta) - fn(clean)`` on the box (ReLU in place on the gathered copy)."""
        source = node.all_input_nodes[0]
        clean = self._gather(source, 0.0, crop.ys, crop.xs, crop.h, crop.w)
        if fn is F.relu:
            before = F.relu(clean)
            delta = clean.add_(crop.delta).relu_().sub_(before)
        else:
            delta = fn(clean + crop.delta) - fn(clean)
        # f(0) may be non-zero (sigmoid); the change outside the map must stay zero.
        out = Crop(delta, crop.ys, crop.xs, crop.height, crop.width)
        return self._finish(node, out)

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

    def _incremental_op(self, node: fx.Node, env: dict) -> Crop | torch.Tensor | None:
        """The node's change from its inputs' changes, or ``None`` when it must run in full."""
        inputs = [env[a] for a in node.all_input_nodes]
        crops = [v for v in inputs if isinstance(v, Crop)]
        if not crops:
            return None
        if node.op == "call_module":
            mod = self.submodules[node.target]
            if len(node.all_input_nodes) != 1 or node.kwargs:
                return None
            crop = crops[0]
            if isinstance(mod, _PASS_THROUGH) and not mod.training:
                return crop
            if isinstance(mod, nn.BatchNorm2d):
                if mod.training or mod.running_var is None:
                    return None
                scale = torch.rsqrt(mod.running_var + mod.eps)
                if mod.weight is not None:
                    scale = scale * mod.weight
                return Crop(crop.delta * scale.view(1, -1, 1, 1), crop.ys, crop.xs,
                            crop.height, crop.width)
            if isinstance(mod, _ELEMENTWISE):
                fn = mod.forward
                if isinstance(mod, nn.ReLU):
                    fn = F.relu
                elif isinstance(mod, nn.Hardtanh):
                    fn = lambda t, m=mod: F.hardtanh(t, m.min_val, m.max_val)  # noqa: E731
                elif getattr(mod, "inplace", False):
                    return None
                return self._elementwise(node, crop, fn)
            if isinstance(mod, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
                if tuple(self.clean[node].shape[-2:]) == (crop.height, crop.width):
                    return crop
                return None
            return self._window_op(node, crop, mod)
        if node.op == "call_function":
            target = node.target
            if target in _ELEMENTWISE_FUNCTIONS and len(node.all_input_nodes) == 1 \
                    and node.args and isinstance(node.args[0], fx.Node):
                kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
                extra = node.args[1:] if target in (F.hardtanh,) else ()
                if target in (F.relu, F.relu6, F.silu) and len(node.args) > 1:
                    extra = ()  # the positional 'inplace' flag
                if target in (F.relu, torch.relu):
                    return self._elementwise(node, crops[0], F.relu)
                return self._elementwise(node, crops[0],
                                         lambda t: target(t, *extra, **kwargs))
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

    # ------------------------------------------------------------------ batch evaluation
    def input_crop(self, baseline: torch.Tensor, ys: np.ndarray, xs: np.ndarray,
                   patch: int) -> Crop:
        """The change of the input for patches at ``(ys, xs)``: ``baseline - x`` under each."""
        placeholder = self.nodes[0]
        diff = baseline.expand_as(self.x) - self.x
        key = (placeholder, "diff")
        if key not in self._padded:
            self._padded[key] = (patch, F.pad(diff, (patch,) * 4))
        margin, padded = self._padded[key]
        windows = padded[0].unfold(1, patch, 1).unfold(2, patch, 1).permute(1, 2, 0, 3, 4)
        iy = torch.as_tensor(ys + margin, device=diff.device)
        ix = torch.as_tensor(xs + margin, device=diff.device)
        delta = windows[iy, ix]
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
        for node in self.nodes:
            if node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: self._value(n, env))
                logits = out[0] if isinstance(out, (tuple, list)) else out
                return logits, watched, stats
            if node.op == "placeholder":
                value = self.input_crop(baseline, ys, xs, patch)
            elif node not in self.depends:
                value = self.clean[node]
            else:
                value = self._incremental_op(node, env)
                if value is None:
                    full_env = {a: self._value(a, env) for a in node.all_input_nodes}
                    value = self._full_op(node, full_env)
                    stats["full"] += 1
                else:
                    stats["incremental"] += 1
            env[node] = value
            if node.name == self.watch:
                watched = value
            for a in node.all_input_nodes:  # free values no later node reads
                if a in env and all(u in env for u in a.users):
                    env.pop(a)
        raise AssertionError("graph has no output")

    def _value(self, node: fx.Node, env: dict) -> object:
        value = env[node]
        if isinstance(value, Crop):
            return self._materialize(node, value)
        return value
