"""Receptive fields and a per-layer model summary (output shape, parameters, MACs).

The receptive field is computed analytically by walking the model's ``torch.fx`` graph
(Araujo et al. 2019, "Computing receptive fields of convolutional neural networks"): a window
of kernel ``k``, stride ``s``, padding ``p`` and dilation ``d`` maps a field of size ``r``,
stride ``j`` and offset ``L`` (input coordinate of the first pixel of unit 0's field) to

    r' = r + d (k - 1) j,    j' = s j,    L' = L - p j.

Where branches meet (residual add, concat) the field is the union of the incoming fields.
Shapes come from a shape propagation on fake tensors, so nothing runs on the model's weights.
Models that ``torch.fx`` cannot trace fall back to the module order (right for Sequential-like
models) and are marked ``exact=False``.
"""

from __future__ import annotations

import math
import operator
import threading
import weakref
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from vizkit.core.hooks import find_layer
from vizkit.models.base import LoadedModel

Pair = tuple[int, int]


@dataclass(frozen=True)
class ReceptiveField:
    """The input region that one unit of a layer sees.

    Attributes:
        layer: dotted ``named_modules()`` name.
        size: field size in input pixels, (height, width).
        stride: input pixels between neighbouring units, (y, x).
        offset: input coordinate of the first pixel of unit (0, 0)'s field, (y, x); negative
            where the field starts in the padding.
        input_size: side of the square input the field was computed for.
        output_shape: (h, w) of the layer's output map, ``None`` for non-spatial outputs
            (after flatten / linear: every unit sees the whole input).
        coverage: the input pixels any unit of the layer sees, ``(x0, y0, x1, y1)`` clipped to
            the image; smaller than the image where a strided layer drops the last rows.
        exact: ``False`` where an operation was approximated (uneven adaptive pooling, an
            unknown resampling op, or the module-order fallback).
    """

    layer: str
    size: Pair
    stride: Pair
    offset: Pair
    input_size: int
    output_shape: Pair | None
    coverage: tuple[int, int, int, int]
    exact: bool = True

    def box(self, y: int = 0, x: int = 0, clip: bool = True) -> tuple[int, int, int, int]:
        """The field of unit ``(y, x)`` as ``(x0, y0, x1, y1)`` input pixels, x1/y1 exclusive.

        Same convention as ``Scenes.boxes``; clipped to the pixels the layer can see (the image,
        less rows a strided layer drops) unless ``clip=False``.
        """
        y0 = self.offset[0] + y * self.stride[0]
        x0 = self.offset[1] + x * self.stride[1]
        y1, x1 = y0 + self.size[0], x0 + self.size[1]
        if clip:
            cx0, cy0, cx1, cy1 = self.coverage
            y0, x0, y1, x1 = max(cy0, y0), max(cx0, x0), min(cy1, y1), min(cx1, x1)
        return x0, y0, x1, y1

    def center(self, y: int = 0, x: int = 0) -> tuple[float, float]:
        """Centre of unit ``(y, x)``'s field in input pixels, (y, x)."""
        return (self.offset[0] + y * self.stride[0] + (self.size[0] - 1) / 2,
                self.offset[1] + x * self.stride[1] + (self.size[1] - 1) / 2)


@dataclass(frozen=True)
class LayerSummary:
    """One row of ``summarize``.

    Attributes:
        name: dotted module name.
        kind: the module's class name.
        output_shape: output shape without the batch dimension (C, h, w) or (F,).
        params: number of parameters the module owns.
        macs: multiply-accumulates of one forward pass for one image (Conv2d with groups,
            ConvTranspose2d, Linear; 0 for other modules).
        receptive_field: the field of one output unit, ``None`` for non-tensor outputs.
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    receptive_field: ReceptiveField | None


@dataclass(frozen=True)
class _Field:
    size: Pair
    stride: Pair
    offset: Pair
    spatial: Pair | None  # h, w of the tensor this field belongs to
    exact: bool = True
    # Input pixels any unit of this tensor sees, [lo, hi) per axis: a window dropped by an
    # earlier layer's floor division (a stride-2 conv leaving the last column) is never seen.
    cover_lo: Pair = (-(2**31), -(2**31))
    cover_hi: Pair = (2**31, 2**31)


def _pair(v: Any) -> Pair:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _window(f: _Field, kernel: Any, stride: Any, padding: Any, dilation: Any, out: Pair | None) -> _Field:
    """One sliding window (conv or pool): r' = r + d(k-1)j, j' = sj, L' = L - pj."""
    k, s, d = _pair(kernel), _pair(stride if stride not in (None, ()) else kernel), _pair(dilation)
    if isinstance(padding, str):  # "same" / "valid" convolutions
        p = tuple(d[i] * (k[i] - 1) // 2 for i in range(2)) if padding == "same" else (0, 0)
    else:
        p = _pair(padding)
    size = tuple(f.size[i] + d[i] * (k[i] - 1) * f.stride[i] for i in range(2))
    step = tuple(s[i] * f.stride[i] for i in range(2))
    offset = tuple(f.offset[i] - p[i] * f.stride[i] for i in range(2))
    lo, hi = f.cover_lo, f.cover_hi
    if out is not None:
        lo = tuple(max(lo[i], offset[i]) for i in range(2))
        hi = tuple(min(hi[i], offset[i] + (out[i] - 1) * step[i] + size[i]) for i in range(2))
    return _Field(size, step, offset, out, f.exact, lo, hi)


def _pad(f: _Field, padding: Any, out: Pair | None) -> _Field:
    """Zero padding (left, right, top, bottom): unit i of the output is unit i - before of the
    input, so L' = L - before·j; size, stride and coverage stay (TF "SAME" pads are asymmetric)."""
    left, _, top, _ = (padding,) * 4 if isinstance(padding, int) else padding
    offset = (f.offset[0] - top * f.stride[0], f.offset[1] - left * f.stride[1])
    return replace(f, offset=offset, spatial=out)


def _global(f: _Field) -> _Field:
    """Every output depends on every input unit: the union of all units' fields."""
    if f.spatial is None:
        return f
    n = f.spatial
    return replace(
        f, size=tuple(f.size[i] + (n[i] - 1) * f.stride[i] for i in range(2)),
        stride=tuple(f.stride[i] * n[i] for i in range(2)), spatial=None,
    )


def _adaptive(f: _Field, out: Pair | None) -> _Field:
    """Adaptive pooling: window i spans [floor(i n/o), ceil((i+1) n/o)); uneven splits are approximate."""
    if f.spatial is None or out is None:
        return _global(f)
    if out == (1, 1):
        return _global(f)
    kernel, stride, exact = [], [], f.exact
    for n, o in zip(f.spatial, out, strict=True):
        starts = [math.floor(i * n / o) for i in range(o)]
        ends = [math.ceil((i + 1) * n / o) for i in range(o)]
        kernel.append(max(e - s for s, e in zip(starts, ends, strict=True)))
        stride.append(max(n // o, 1))
        exact = exact and (n % o == 0)
    g = _window(f, tuple(kernel), tuple(stride), 0, 1, out)
    return replace(g, exact=exact)


def _union(fields: list[_Field]) -> _Field:
    """Where branches meet (add, concat): the box covering every incoming field."""
    if len(fields) == 1:
        return fields[0]
    offset = tuple(min(f.offset[i] for f in fields) for i in range(2))
    end = tuple(max(f.offset[i] + f.size[i] for f in fields) for i in range(2))
    strides = {f.stride for f in fields}
    stride = tuple(max(f.stride[i] for f in fields) for i in range(2))
    spatials = {f.spatial for f in fields}
    return _Field(
        size=tuple(end[i] - offset[i] for i in range(2)), stride=stride, offset=offset,
        spatial=fields[0].spatial if len(spatials) == 1 else None,
        exact=all(f.exact for f in fields) and len(strides) == 1,
        cover_lo=tuple(min(f.cover_lo[i] for f in fields) for i in range(2)),
        cover_hi=tuple(max(f.cover_hi[i] for f in fields) for i in range(2)),
    )


_WINDOW_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_PAD_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d)
_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_WINDOW_FUNCTIONS = {F.conv2d: 3, torch.conv2d: 3, F.max_pool2d: 1, F.avg_pool2d: 1,
                     torch.max_pool2d: 1}
_ADAPTIVE_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}


def _spatial_of(meta: Any) -> Pair | None:
    shape = getattr(meta, "shape", None)
    if shape is not None and len(shape) == 4:
        return (int(shape[2]), int(shape[3]))
    return None


def _functional_window(fn: Any, node: fx.Node) -> tuple:
    """(kernel, stride, padding, dilation) of a functional conv / pool call."""
    args, kw = list(node.args), dict(node.kwargs)
    if _WINDOW_FUNCTIONS[fn] == 3:  # conv2d(input, weight, bias, stride, padding, dilation)
        weight = args[1] if len(args) > 1 else kw["weight"]
        shape = weight.meta["tensor_meta"].shape
        names = ["stride", "padding", "dilation"]
        vals = dict(zip(names, args[3:6], strict=False))
        vals.update({n: kw[n] for n in names if n in kw})
        return ((shape[2], shape[3]), vals.get("stride", 1), vals.get("padding", 0), vals.get("dilation", 1))
    names = ["kernel_size", "stride", "padding"]
    vals = dict(zip(names, args[1:4], strict=False))
    vals.update({n: kw[n] for n in names if n in kw})
    dilation = kw.get("dilation", args[4] if fn in (F.max_pool2d, torch.max_pool2d) and len(args) > 4 else 1)
    return (vals["kernel_size"], vals.get("stride"), vals.get("padding", 0), dilation)


@dataclass(frozen=True)
class _Graph:
    fields: dict[str, _Field]  # module name → field of its (last) output
    shapes: dict[str, tuple[int, ...]]  # module name → output shape without batch
    order: list[str]  # leaf modules, in order of first call
    macs: dict[str, int]
    exact_graph: bool


def _shape(meta: Any) -> tuple[int, ...] | None:
    """Shape without the batch dimension, ``None`` for non-tensor outputs."""
    shape = getattr(meta, "shape", None)
    return tuple(int(v) for v in shape[1:]) if shape is not None else None


def _leaf_macs(module: nn.Module, in_shape: tuple[int, ...] | None, out_shape: tuple[int, ...] | None) -> int:
    """Multiply-accumulates for one image: Conv2d k_h k_w C_in/groups per output, Linear in_features."""
    if out_shape is None:
        return 0
    out_numel = math.prod(out_shape)
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out_numel * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d) and in_shape is not None:
        kh, kw = module.kernel_size
        return math.prod(in_shape) * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out_numel * module.in_features
    return 0


def _trace(m: LoadedModel, input_size: int) -> _Graph:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.shape_prop import ShapeProp

    gm = fx.symbolic_trace(m.module)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    x = mode.from_tensor(torch.zeros(1, 3, input_size, input_size))
    ShapeProp(gm, mode).propagate(x)
    modules = dict(m.module.named_modules())

    def meta_of(n: Any) -> Any:
        return n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None

    node_fields: dict[fx.Node, _Field] = {}
    fields: dict[str, _Field] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    macs: dict[str, int] = {}
    order: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            node_fields[node] = _Field((1, 1), (1, 1), (0, 0), (input_size, input_size))
            continue
        if node.op in ("get_attr", "output"):
            continue
        inputs = [node_fields[a] for a in node.all_input_nodes if a in node_fields]
        if not inputs:
            continue
        meta = meta_of(node)
        out_spatial = _spatial_of(meta)
        first = next(a for a in node.all_input_nodes if a in node_fields)
        in_meta = meta_of(first)
        joined = _union(inputs)
        target = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(target, _WINDOW_MODULES):
            field = _window(joined, target.kernel_size, target.stride, target.padding,
                            getattr(target, "dilation", 1), out_spatial)
        elif isinstance(target, _PAD_MODULES) and len(target.padding) == 4:
            field = _pad(joined, target.padding, out_spatial)
        elif isinstance(target, _ADAPTIVE_MODULES) or (
                node.op == "call_function" and node.target in _ADAPTIVE_FUNCTIONS):
            field = _adaptive(joined, out_spatial)
        elif node.op == "call_function" and node.target in _WINDOW_FUNCTIONS:
            field = _window(joined, *_functional_window(node.target, node), out_spatial)
        elif node.op == "call_function" and node.target is operator.getitem and meta is None:
            field = joined  # picking from a tuple of tensors
        elif isinstance(target, nn.Linear) or (meta is not None and out_spatial is None):
            field = _global(joined)  # flatten, linear, reductions: every unit sees everything
        elif out_spatial is not None and out_spatial == joined.spatial:
            field = joined  # elementwise, normalization, activation, channel concat
        elif meta is None:
            field = joined
        else:  # a resampling op we do not know (interpolate, ...): approximate as global
            g = _global(joined)
            field = replace(g, spatial=out_spatial, exact=False)
        node_fields[node] = field

        stack = node.meta.get("nn_module_stack") or {}
        for name in stack:
            if name:
                fields[name] = field
                if _shape(meta) is not None:
                    shapes[name] = _shape(meta)
        if node.op == "call_module" and node.target in modules:
            name = node.target
            fields[name] = field
            out_shape, in_shape = _shape(meta), _shape(in_meta)
            if out_shape is not None:
                shapes[name] = out_shape
            macs[name] = macs.get(name, 0) + _leaf_macs(modules[name], in_shape, out_shape)
            if name not in order:
                order.append(name)
    return _Graph(fields, shapes, order, macs, exact_graph=True)


def _module_order(m: LoadedModel, input_size: int) -> _Graph:
    """Fallback for untraceable models: leaf modules in registration order, as a chain."""
    field = _Field((1, 1), (1, 1), (0, 0), (input_size, input_size), exact=False)
    fields, order = {}, []
    for name, module in m.module.named_modules():
        if not name or any(True for _ in module.children()):
            continue
        if isinstance(module, _WINDOW_MODULES):
            out = None
            if field.spatial is not None:
                k, s, d = _pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(
                    getattr(module, "dilation", 1))
                p = _pair(module.padding) if not isinstance(module.padding, str) else (0, 0)
                out = tuple((field.spatial[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1
                            for i in range(2))
            field = _window(field, module.kernel_size, module.stride, module.padding,
                            getattr(module, "dilation", 1), out)
        elif isinstance(module, _PAD_MODULES) and len(module.padding) == 4 and field.spatial is not None:
            left, right, top, bottom = module.padding
            field = _pad(field, module.padding, (field.spatial[0] + top + bottom,
                                                 field.spatial[1] + left + right))
        elif isinstance(module, _ADAPTIVE_MODULES):
            field = _adaptive(field, _pair(module.output_size) if module.output_size is not None else None)
        elif isinstance(module, (nn.Linear, nn.Flatten)):
            field = _global(field)
        fields[name] = field
        order.append(name)
    return _Graph(fields, {}, order, {}, exact_graph=False)


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[int, _Graph]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _analyse(m: LoadedModel, input_size: int | None) -> tuple[_Graph, int]:
    """The traced graph of ``m`` at ``input_size``; cached per module (its structure is fixed)."""
    size = int(input_size or m.input_size)
    with _CACHE_LOCK:
        cached = _CACHE.get(m.module, {}).get(size)
    if cached is not None:
        return cached, size
    try:
        graph = _trace(m, size)
    except Exception:  # noqa: BLE001 - fx cannot trace every model; the fallback says so (exact=False)
        graph = _module_order(m, size)
    with _CACHE_LOCK:
        _CACHE.setdefault(m.module, {})[size] = graph
    return graph, size


def _as_public(layer: str, f: _Field, input_size: int) -> ReceptiveField:
    s = input_size
    lo = tuple(min(max(0, v), s) for v in f.cover_lo)
    hi = tuple(max(min(s, v), 0) for v in f.cover_hi)
    return ReceptiveField(layer=layer, size=f.size, stride=f.stride, offset=f.offset,
                          input_size=input_size, output_shape=f.spatial,
                          coverage=(lo[1], lo[0], hi[1], hi[0]), exact=f.exact)


def receptive_field(m: LoadedModel, layer: str, input_size: int | None = None) -> ReceptiveField:
    """The receptive field of one unit of ``layer`` (Araujo et al. 2019).

    Args:
        m: the model.
        layer: dotted ``named_modules()`` name (a leaf or a block such as ``layer4``).
        input_size: square input side; defaults to the model's ``input_size``.

    Raises:
        ValueError: unknown layer (the message lists valid ones) or a layer the forward never uses.
    """
    find_layer(m.module, layer)
    graph, size = _analyse(m, input_size)
    if layer not in graph.fields:
        raise ValueError(f"Layer {layer!r} is not used in the forward pass, so it has no receptive field.")
    return _as_public(layer, graph.fields[layer], size)


def summarize(m: LoadedModel, input_size: int | None = None) -> list[LayerSummary]:
    """Per leaf module, in call order: output shape, parameters, MACs and receptive field.

    MACs count one image: Conv2d ``h w C_out k_h k_w C_in / groups``, Linear ``in × out``;
    their sum is the figure torchvision publishes as GFLOPS (``_ops``).
    """
    graph, size = _analyse(m, input_size)
    modules = dict(m.module.named_modules())
    rows = []
    for name in graph.order:
        module = modules[name]
        field = graph.fields.get(name)
        rows.append(LayerSummary(
            name=name, kind=type(module).__name__, output_shape=graph.shapes.get(name, ()),
            params=sum(p.numel() for p in module.parameters()), macs=graph.macs.get(name, 0),
            receptive_field=_as_public(name, field, size) if field is not None else None,
        ))
    return rows


def summary_table(rows: list[LayerSummary], total: bool = True) -> list[dict[str, Any]]:
    """``summarize`` rows as plain dicts (for ``st.dataframe`` or CSV), with a total row."""
    table = []
    for r in rows:
        rf = r.receptive_field
        table.append({
            "layer": r.name, "type": r.kind,
            "output shape": "×".join(str(s) for s in r.output_shape),
            "params": r.params, "MACs": r.macs,
            "RF size": f"{rf.size[0]}×{rf.size[1]}" if rf else "",
            "RF stride": f"{rf.stride[0]}×{rf.stride[1]}" if rf else "",
        })
    if total:
        table.append({"layer": "total", "type": "", "output shape": "",
                      "params": sum(r.params for r in rows), "MACs": sum(r.macs for r in rows),
                      "RF size": "", "RF stride": ""})
    return table
