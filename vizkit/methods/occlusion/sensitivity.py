"""Occlusion sensitivity (Zeiler & Fergus 2013, section 4.2), exact and fast.

A patch of ``baseline`` colour slides over the image; for each position the target class
probability is recorded. The map follows captum's ``Occlusion``: each pixel gets the mean of
``p_clean - p_occluded`` over the patch positions that cover it. Positions start every
``stride`` pixels; the last one is clipped at the image border, so every pixel is covered.

Three modes compute the same thing:

- ``"exact"`` (default): incremental inference (Krypton, Nakandala et al. 2019, see
  :mod:`vizkit.methods.occlusion.incremental`): only the patch's projective field is recomputed per position.
- ``"full"``: one full forward pass per position (batched), the reference.
- ``"approximate"``: convolutions and linear layers act on the change in 8 bits where that is
  exact and pays on this CPU, in float32 otherwise (:mod:`vizkit.methods.occlusion.int8`;
  ``info.arithmetic`` and ``info.arithmetic_reason`` say which and why), and a self-checking
  adaptive drill-down (every other position plus a sample of the rest first; if interpolating
  the coarse grid predicts the sample, only the most sensitive positions are evaluated and the
  rest interpolated, otherwise all are); ``info.approximate`` is True.

The result's ``info`` is an ``OcclusionRun``: how the map was made, in typed fields.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from vizkit.core.devices import is_out_of_memory
from vizkit.core.results import Explanation, InfoRecord
from vizkit.core.targets import Target, check_target_early, resolve_target, target_score
from vizkit.methods.occlusion.incremental import IncrementalOcclusion, NotTraceable
from vizkit.methods.occlusion.int8 import Arithmetic, choose_arithmetic
from vizkit.models.base import LoadedModel

Baseline = str | float | tuple[float, float, float]
MODES = ("exact", "approximate", "full")

# Approximate mode: coarse grid step (in positions), share of the remaining positions then
# evaluated (the most sensitive by the interpolated map).
COARSE_STEP = 2
REFINE_FRACTION = 0.2
# Projective-field thresholding (Krypton): keep a node's change on a centred box of at most
# this share of its map side. Off by default: once changes run in 8 bits it saves no
# measurable time (random-weight VGG16 at 224, patch 16 stride 8: 9.3 CPU-s with a 0.75 cap
# or none), and it costs the picture: SSIM against exact, cap 0.75 vs none, VGG16 at 96 px
# 0.44 vs 0.96, ResNet18 at 96 px 0.39 vs 0.96, AlexNet at 224 0.84 vs 0.99.
CAP_FRACTION: float | None = None
# Drill-down checks itself: beside the coarse grid, a sample of the positions it would
# interpolate is evaluated, and compared with what interpolating the coarse grid predicts. If
# that error's RMS exceeds this share of the scores' span, the map is too rough to interpolate
# (a random-weight net's map is speckle) and every remaining position is evaluated.
# Additive noise of 1.5% of the span on every position costs about 0.06 of SSIM.
INTERPOLATION_TOLERANCE = 0.015
# Arithmetic of approximate mode's convolutions and linear layers on the change: "auto" (8 bits
# where oneDNN's products are exact and a probe shows they pay, vizkit.methods.occlusion.int8's
# choose_arithmetic), "8-bit" (wherever exact) or "float32".
ARITHMETIC = "auto"
# Grids with fewer positions per side than this are evaluated whole (interpolating a coarse
# sub-grid of a few cells loses the picture).
DRILL_DOWN_MIN = 12
# Positions run through the unmodified model to estimate full inference's time (the speed-up shown).
FULL_PROBE = 8


@dataclass(frozen=True, eq=False)
class OcclusionTimings(InfoRecord):
    """Seconds spent by one occlusion run.

    Attributes:
        clean_s: the clean forward pass (and the engine's set-up).
        positions_s: evaluating the patch positions.
        total_s: the whole call (wall time).
        cpu_s: the whole call (process CPU time).
        full_estimate_s: what plain full inference would take on every position, timed on a
            few (only with ``time_full``).
    """

    OPTIONAL = frozenset({"full_estimate_s"})

    clean_s: float
    positions_s: float
    total_s: float
    cpu_s: float
    full_estimate_s: float | None = None


@dataclass(frozen=True, eq=False)
class OcclusionRun(InfoRecord):
    """How an occlusion map was made: the ``info`` of its ``Explanation``.

    Attributes:
        probability_grid: occluded score per patch position (NaN where not evaluated).
        clean_probability: the score without occlusion.
        score: ``"probability"`` (softmax of the class) or ``"callable"`` (a callable target's value).
        box: ``(x0, y0, x1, y1)`` of the most damaging patch.
        positions: top-left offsets of the patch positions along y and along x.
        patch, stride, baseline: the settings used.
        mode: the mode that ran (``"full"`` where an untraceable model fell back to it).
        approximate: whether the map is approximate (mode ``"approximate"``).
        drill_down: whether the adaptive drill-down ran (approximate mode on a grid of at least
            ``DRILL_DOWN_MIN`` positions per side).
        interpolated: positions interpolated rather than evaluated.
        interpolation_error: the drill-down's checked interpolation error, a share of the
            scores' range (``None`` without drill-down).
        arithmetic: ``"8-bit"`` where convolutions and linear layers ran on each patch's change
            with 8-bit operands, else ``"float32"``.
        arithmetic_reason: why that arithmetic, in words.
        evaluated: positions evaluated.
        total_positions: positions on the grid.
        complete: False when ``progress`` stopped the run.
        batch_size: positions per batch in the end (halved on out-of-memory).
        out_of_memory_retries: how often the batch was halved.
        timings: seconds spent (``OcclusionTimings``).
        speedup_over_full: estimated full-inference time over the time spent on positions
            (only with ``time_full``, for a complete incremental run).
        fallback: why full inference ran instead of the mode asked for, if it did.
        nodes: graph nodes computed incrementally and in full, summed over batches (not for
            mode ``"full"``).
        channel: with a layer, the feature map whose drop is mapped.
        feature_clean: its total activation without occlusion.
        feature_grid: its total activation per patch position.
        feature_map: the drop of its total activation, per pixel like ``map``.
    """

    OPTIONAL = frozenset({"speedup_over_full", "fallback", "nodes", "channel", "feature_clean",
                          "feature_grid", "feature_map"})
    DERIVED = ("quantized", "stopped")

    probability_grid: np.ndarray
    clean_probability: float
    score: str
    box: tuple[int, int, int, int]
    positions: tuple[tuple[int, ...], tuple[int, ...]]
    patch: int
    stride: int
    baseline: Baseline
    mode: str
    approximate: bool
    drill_down: bool
    interpolated: int
    interpolation_error: float | None
    arithmetic: str
    arithmetic_reason: str
    evaluated: int
    total_positions: int
    complete: bool
    batch_size: int
    out_of_memory_retries: int
    timings: OcclusionTimings
    speedup_over_full: float | None = None
    fallback: str | None = None
    nodes: dict[str, int] | None = None
    channel: int | None = None
    feature_clean: float | None = None
    feature_grid: np.ndarray | None = None
    feature_map: np.ndarray | None = None

    @property
    def quantized(self) -> bool:
        """Whether 8-bit arithmetic ran (``arithmetic == "8-bit"``)."""
        return self.arithmetic == "8-bit"

    @property
    def stopped(self) -> bool:
        """Whether ``progress`` stopped the run before every position was done."""
        return not self.complete


@dataclass(frozen=True)
class _Grid:
    """Patch positions: top-left offsets along each axis, patch side, image side."""

    ys: np.ndarray
    xs: np.ndarray
    patch: int
    size: int

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)

    def box(self, iy: int, ix: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of the patch at grid cell ``(iy, ix)``, clipped to the image."""
        y0, x0 = int(self.ys[iy]), int(self.xs[ix])
        return x0, y0, min(x0 + self.patch, self.size), min(y0 + self.patch, self.size)


def patch_grid(size: int, patch: int, stride: int) -> _Grid:
    """Captum's positions: ``i * stride`` for ``i = 0 .. ceil((size - patch) / stride)``."""
    if not (isinstance(patch, int) and isinstance(stride, int)) or patch < 1 or stride < 1:
        raise ValueError(f"patch and stride must be positive integers, got {patch}, {stride}.")
    if patch > size:
        raise ValueError(f"patch {patch} is larger than the model's {size}×{size} input.")
    if stride > patch and patch < size:
        raise ValueError(f"stride {stride} larger than patch {patch} would leave pixels unseen.")
    count = math.ceil((size - patch) / stride) + 1
    offsets = np.arange(count) * stride
    return _Grid(offsets, offsets.copy(), patch, size)


def default_stride(patch: int) -> int:
    """The largest power of two not above half of ``patch`` (1 for patches under 4)."""
    return 1 << max(0, (max(1, patch // 2)).bit_length() - 1)


def default_patch(size: int) -> tuple[int, int]:
    """A patch and stride for an S×S input that batch well: ``(patch, stride)``.

    The patch is the power of two nearest to an eighth of the side (at most half the side), the
    stride :func:`default_stride`, half the patch. CNNs' total strides are powers of two
    (EfficientNet-Lite0's is 32), and the incremental engine batches positions congruent modulo
    it (``_Evaluator.evaluate``): a power-of-two stride puts a few dozen positions in each batch,
    where a patch of 224 / 8 = 28 and a stride of 14 put each of 15 × 15 positions in a batch of
    its own.
    """
    if not isinstance(size, int) or size < 2:
        raise ValueError(f"input side must be an integer of at least 2, got {size!r}.")
    patch = min(2 ** max(1, round(math.log2(size / 8))), max(2, size // 2))
    return patch, default_stride(patch)


def baseline_value(m: LoadedModel, baseline: Baseline) -> torch.Tensor:
    """The patch colour as a normalized 1×3×1×1 tensor on the model's device.

    ``"mean"`` is the training data's mean colour (0 after normalization), ``"grey"`` is RGB
    0.5, ``"zero"`` is black; a float is a grey level and a tuple an RGB colour, in [0, 1]
    (values above 1 are read as 0–255).
    """
    named = {"mean": m.spec.mean, "grey": (0.5,) * 3, "gray": (0.5,) * 3, "zero": (0.0,) * 3}
    if isinstance(baseline, str):
        if baseline not in named:
            raise ValueError(f"Unknown baseline {baseline!r}: use one of {', '.join(named)}, "
                             "a grey level or an RGB tuple.")
        rgb = named[baseline]
    elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        rgb = (float(baseline),) * 3
    elif isinstance(baseline, (tuple, list)) and len(baseline) == 3:
        rgb = tuple(float(v) for v in baseline)
    else:
        raise ValueError(f"Baseline must be a name, a number or an RGB triple, got {baseline!r}.")
    values = np.asarray(rgb, dtype=np.float64)
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255:
        raise ValueError(f"Baseline colour {baseline!r} must lie in [0, 1] (or 0–255).")
    if values.max() > 1:
        values = values / 255.0
    normalized = (values - np.asarray(m.spec.mean)) / np.asarray(m.spec.std)
    return torch.tensor(normalized, dtype=torch.float32, device=m.device).view(1, 3, 1, 1)


def _scores(logits: torch.Tensor, target: int | Callable) -> torch.Tensor:
    """Target class probability (softmax) for an index; the callable's value otherwise."""
    if callable(target):
        return target_score(logits, target).float()
    return torch.softmax(logits.float(), dim=1)[:, target]


def _average_over_patches(grid: _Grid, values: np.ndarray) -> np.ndarray:
    """Captum's map: each pixel gets the mean of ``values`` over the positions covering it.

    NaN values (positions not evaluated) are left out; pixels no evaluated patch covers get 0.
    """
    total = np.zeros((grid.size, grid.size), dtype=np.float64)
    count = np.zeros_like(total)
    for iy in range(grid.shape[0]):
        for ix in range(grid.shape[1]):
            v = values[iy, ix]
            if np.isnan(v):
                continue
            x0, y0, x1, y1 = grid.box(iy, ix)
            total[y0:y1, x0:x1] += v
            count[y0:y1, x0:x1] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0).astype(np.float32)


def _default_batch_size(m: LoadedModel, mode: str) -> int:
    side = m.input_size
    if m.device.type == "cpu":
        budget = 64 if mode != "full" else 16
    else:
        budget = 256 if mode != "full" else 64
    # Scale down for inputs larger than 224 (activation memory grows with the area).
    return max(1, int(budget * min(1.0, (224 / side) ** 2)))


def _layer_node(graph: fx.Graph, module: torch.nn.Module, layer: str) -> fx.Node:
    """The fx node giving ``layer``'s output (a leaf call, or a container's last node)."""
    from vizkit.core.hooks import find_layer

    find_layer(module, layer)  # a wrong name lists the valid ones
    found = None
    for node in graph.nodes:
        if node.op == "call_module" and node.target == layer:
            found = node
            continue
        stack = node.meta.get("nn_module_stack") or {}
        paths = set(stack) | {v[0] for v in stack.values() if isinstance(v, tuple) and v}
        if layer in paths and node.op != "output":
            found = node
    if found is None:
        raise ValueError(f"Layer {layer!r} is not used by the model's forward pass.")
    return found


class _Evaluator:
    """Scores patch positions in batches, halving the batch on out-of-memory."""

    def __init__(self, m: LoadedModel, x: torch.Tensor, base: torch.Tensor, grid: _Grid, *, mode: str,
                 watch: str | None, batch_size: int):
        self.m, self.x, self.base, self.grid = m, x, base, grid
        self.mode, self.batch_size = mode, batch_size
        # Set once the clean pass has resolved them: the class (or callable) scored, and the
        # channel of ``watch`` whose total activation is mapped.
        self.target: int | Callable | None = None
        self.channel: int | None = None
        self.inc: IncrementalOcclusion | None = None
        self.watch_node = None
        self.stats = {"incremental": 0, "full": 0}
        self.out_of_memory = 0
        self.fallback: str | None = None
        approximate = mode == "approximate"
        self.arithmetic = (choose_arithmetic(x.device, ARITHMETIC) if approximate else
                           Arithmetic("float32", f"{mode} mode computes in float32"))
        if mode != "full" or watch is not None:
            try:
                self.inc = IncrementalOcclusion(
                    m.module, x, cap_fraction=CAP_FRACTION if approximate else None,
                    quantized=self.arithmetic.name == "8-bit",
                    weight_levels=self.arithmetic.weight_levels or 127,
                    never_full=self.arithmetic.never_full)
            except NotTraceable as error:
                if watch is not None:
                    raise ValueError(f"{error}; a layer's activation drop needs a traceable "
                                     "model.") from error
                self.fallback = str(error)
                self.mode = "full"
                self.arithmetic = Arithmetic("float32", f"full inference in float32: {error}")
        if self.arithmetic.name == "8-bit" and (self.inc is None or self.inc.int8 is None):
            self.arithmetic = Arithmetic("float32", "oneDNN's 8-bit kernels are not available")
        if watch is not None:
            self.watch_node = _layer_node(self.inc.graph, m.module, watch)
            self.inc.watch = self.watch_node.name

    def clean(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.inc is not None:
            logits = self.inc.output
            feature = self.inc.clean[self.watch_node] if self.watch_node is not None else None
            return logits, feature
        return self.m.module(self.x), None

    def occluded_inputs(self, ys: np.ndarray, xs: np.ndarray) -> torch.Tensor:
        batch = self.x.expand(len(ys), *self.x.shape[1:]).clone()
        p = self.grid.patch
        for b, (y, x) in enumerate(zip(ys.tolist(), xs.tolist(), strict=True)):
            batch[b, :, y:y + p, x:x + p] = self.base[0]
        return batch

    def run_batch(self, ys: np.ndarray, xs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores (and watched feature totals) of the patches at ``(ys, xs)``."""
        feature = None
        if self.mode == "full":
            batch = self.occluded_inputs(ys, xs)
            if self.watch_node is None:
                logits = self.m.module(batch)
            else:
                store: dict = {}
                logits = self.inc._run_full_graph(batch, store)
                feature = store[self.watch_node][:, self.channel].sum((-2, -1))
        else:
            logits, watched, stats = self.inc.run_batch(self.base, ys, xs, self.grid.patch)
            for k, v in stats.items():
                self.stats[k] += v
            if self.watch_node is not None:
                clean_total = self.inc.clean[self.watch_node][0, self.channel].sum()
                if isinstance(watched, torch.Tensor):
                    feature = watched[:, self.channel].sum((-2, -1))
                else:
                    feature = clean_total + watched.delta[:, self.channel].sum((-2, -1))
        return _scores(logits, self.target), feature

    def evaluate(self, cells: list[tuple[int, int]], on_batch) -> bool:
        """Scores ``cells`` (grid indices), in batches of positions congruent modulo the
        network's stride; returns False when ``on_batch`` asked to stop."""
        period = 1
        if self.mode != "full":
            stride = int(self.grid.ys[1] - self.grid.ys[0]) if len(self.grid.ys) > 1 else 1
            period = self.inc.total_stride // math.gcd(stride, self.inc.total_stride)
        classes: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for iy, ix in cells:
            classes.setdefault((iy % period, ix % period), []).append((iy, ix))
        for members in classes.values():
            start = 0
            while start < len(members):
                chunk = members[start:start + self.batch_size]
                ys = np.array([self.grid.ys[iy] for iy, _ in chunk])
                xs = np.array([self.grid.xs[ix] for _, ix in chunk])
                failed = False
                try:
                    scores, feature = self.run_batch(ys, xs)
                except Exception as error:
                    if not is_out_of_memory(error) or self.batch_size == 1:
                        raise
                    failed = True
                if failed:  # retried outside the except block, so the failed batch is freed
                    self.out_of_memory += 1
                    self.batch_size = max(1, self.batch_size // 2)
                    if self.m.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                start += len(chunk)
                if on_batch(chunk, scores, feature) is False:
                    return False
        return True


def occlusion(
    m: LoadedModel,
    img: np.ndarray,
    target: Target = None,
    *,
    patch: int = 16,
    stride: int = 8,
    baseline: Baseline = "mean",
    layer: str | None = None,
    channel: int | None = None,
    mode: str = "exact",
    progress: Callable[[int, int], bool | None] | None = None,
    batch_size: int | None = None,
    time_full: bool = False,
) -> Explanation:
    """Occlusion sensitivity map (Zeiler & Fergus 2013, section 4.2; Krypton for speed).

    ``map[y, x] = mean over patches P covering (y, x) of p(target | img) - p(target | img with
    P set to baseline)``, exactly captum's ``Occlusion`` with a forward returning the softmax
    probability (for a callable target: the callable's value instead of the probability).

    Args:
        m: the model.
        img: RGB uint8 H×W×3; occlusion runs on the model's S×S view of it.
        target: class index, ``None`` for the top prediction, or a callable on the logits.
        patch: square patch side in input pixels.
        stride: step between patch positions (``<= patch``).
        baseline: the patch colour: ``"mean"``, ``"grey"``, ``"zero"``, a level or RGB in [0, 1].
        layer: with a layer, also map the drop of one feature map's total activation
            (Zeiler & Fergus Fig. 7).
        channel: that feature map; ``None`` takes the one with the highest clean activation.
        mode: ``"exact"`` (incremental inference), ``"full"`` or ``"approximate"``.
        progress: called as ``progress(done, total)`` after each batch; returning False stops,
            and the partial result says so (``info.complete`` False).
        batch_size: positions per batch; ``None`` sizes it to the device. Halved on
            out-of-memory.
        time_full: afterwards, also time plain full inference on ``FULL_PROBE`` positions and
            report ``info.speedup_over_full`` (estimated full time / time spent on positions).

    Returns:
        Explanation with ``map`` S×S float32, ``raw`` the per-position drop grid, and ``info``
        an ``OcclusionRun`` (probability grid, clean probability, most damaging box, timings,
        how an approximate map was made; with ``layer`` the feature map's drop).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}: use one of {', '.join(MODES)}.")
    check_target_early(m, target)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    grid = patch_grid(m.input_size, patch, stride)
    started, started_cpu = time.perf_counter(), time.process_time()
    with m.lock, torch.inference_mode():
        x = m.preprocess(img)
        base = baseline_value(m, baseline)
        size = batch_size or _default_batch_size(m, mode)
        evaluator = _Evaluator(m, x, base, grid, mode=mode, watch=layer, batch_size=size)
        clean_logits, clean_feature = evaluator.clean()
        resolved = resolve_target(m, clean_logits, target)
        evaluator.target = resolved
        clean_score = float(_scores(clean_logits, resolved)[0])
        if clean_feature is not None:
            peaks = clean_feature[0].flatten(1).amax(1)
            if channel is None:
                channel = int(peaks.argmax())
            elif not 0 <= int(channel) < peaks.numel():
                raise ValueError(f"Channel {channel} is outside layer {layer!r}'s "
                                 f"{peaks.numel()} channels.")
            evaluator.channel = int(channel)
            clean_total = float(clean_feature[0, int(channel)].sum())
        clean_s = time.perf_counter() - started

        scores = np.full(grid.shape, np.nan)
        features = np.full(grid.shape, np.nan)
        all_cells = [(iy, ix) for iy in range(grid.shape[0]) for ix in range(grid.shape[1])]
        drill_down = evaluator.mode == "approximate" and min(grid.shape) >= DRILL_DOWN_MIN
        plan = _DrillDown(grid) if drill_down else None
        stages = plan.stages if plan is not None else [lambda _scores: all_cells]
        done = 0

        def on_batch(chunk, batch_scores, batch_features) -> bool:
            nonlocal done
            values = batch_scores.cpu().double().numpy()
            for i, (iy, ix) in enumerate(chunk):
                scores[iy, ix] = values[i]
                if batch_features is not None:
                    features[iy, ix] = float(batch_features[i])
            done += len(chunk)
            if progress is not None:
                return progress(done, plan.planned if plan is not None else len(all_cells)) \
                    is not False
            return True

        complete = True
        for stage in stages:
            cells = stage(scores)
            if cells and not evaluator.evaluate(cells, on_batch):
                complete = False
                break
        positions_s = time.perf_counter() - started - clean_s
        full_estimate_s = None
        if time_full and evaluator.mode != "full" and complete:
            full_estimate_s = _full_time_estimate(evaluator, grid, all_cells)

    evaluated = ~np.isnan(scores)
    interpolated = drill_down and complete and not evaluated.all()
    if interpolated:
        estimated = _interpolate(scores, evaluated)
    else:
        estimated = scores
    drop = clean_score - estimated
    occlusion_map = _average_over_patches(grid, drop)
    best = np.nanargmax(drop) if np.any(~np.isnan(drop)) else 0
    feature: dict = {}
    if layer is not None:
        feature_est = _interpolate(features, evaluated) if interpolated else features
        feature = dict(channel=int(channel), feature_clean=clean_total,
                       feature_grid=feature_est.astype(np.float32),
                       feature_map=_average_over_patches(grid, clean_total - feature_est))
    arithmetic, arithmetic_reason = _arithmetic(evaluator)
    timings = OcclusionTimings(clean_s=clean_s, positions_s=positions_s,
                               total_s=time.perf_counter() - started,
                               cpu_s=time.process_time() - started_cpu, full_estimate_s=full_estimate_s)
    run = OcclusionRun(
        probability_grid=estimated.astype(np.float32),
        clean_probability=clean_score,
        score="callable" if callable(resolved) else "probability",
        box=grid.box(*np.unravel_index(best, grid.shape)),
        positions=(tuple(grid.ys.tolist()), tuple(grid.xs.tolist())),
        patch=patch, stride=stride, baseline=baseline,
        mode=evaluator.mode,
        approximate=evaluator.mode == "approximate",
        drill_down=drill_down,
        interpolated=int((~evaluated).sum()) if interpolated else 0,
        interpolation_error=plan.interpolation_error if plan is not None else None,
        arithmetic=arithmetic, arithmetic_reason=arithmetic_reason,
        evaluated=int(evaluated.sum()),
        total_positions=int(scores.size),
        complete=complete,
        batch_size=evaluator.batch_size,
        out_of_memory_retries=evaluator.out_of_memory,
        timings=timings,
        speedup_over_full=None if full_estimate_s is None else full_estimate_s / max(positions_s, 1e-9),
        fallback=f"full inference: {evaluator.fallback}" if evaluator.fallback else None,
        nodes=dict(evaluator.stats) if mode != "full" else None,
        **feature,
    )
    return Explanation(
        method="occlusion", target=None if callable(resolved) else int(resolved), layer=layer,
        map=occlusion_map, raw=torch.from_numpy(drop.astype(np.float32)), info=run,
    )


def _arithmetic(evaluator: _Evaluator) -> tuple[str, str]:
    """The arithmetic the positions ran in (``"8-bit"`` or ``"float32"``) and why."""
    if evaluator.fallback:
        return "float32", f"full inference ran instead ({evaluator.fallback})"
    return evaluator.arithmetic.name, evaluator.arithmetic.reason


def _full_time_estimate(evaluator: _Evaluator, grid: _Grid, cells: list[tuple[int, int]]) -> float:
    """Seconds plain full inference would take on ``cells``, timed on ``FULL_PROBE`` of them."""
    sample = cells[:: max(1, len(cells) // FULL_PROBE)][:FULL_PROBE]
    ys = np.array([grid.ys[iy] for iy, _ in sample])
    xs = np.array([grid.xs[ix] for _, ix in sample])
    batch = evaluator.occluded_inputs(ys, xs)
    device = evaluator.m.device
    start = time.perf_counter()
    evaluator.m.module(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * len(cells) / len(sample)


class _DrillDown:
    """Adaptive drill-down that checks itself.

    First a coarse sub-grid, together with a sample of the other positions. Then, if
    interpolating the coarse grid predicted that sample well (see ``INTERPOLATION_TOLERANCE``),
    only the most sensitive remaining positions are evaluated and the rest interpolated;
    otherwise every remaining position is.

    ``stages`` map the scores so far to the cells to evaluate next; ``planned`` is the number
    of positions to evaluate, as far as known.
    """

    def __init__(self, grid: _Grid):
        ny, nx = self.shape = grid.shape

        def coarse_axis(n: int) -> list[int]:
            idx = list(range(0, n, COARSE_STEP))
            return idx if idx[-1] == n - 1 else [*idx, n - 1]

        self.lattice = (coarse_axis(ny), coarse_axis(nx))
        coarse = [(iy, ix) for iy in self.lattice[0] for ix in self.lattice[1]]
        # The check sample: the centres of every other coarse square, the positions farthest
        # from the coarse grid (a strict check); being one residue class of the grid, they
        # batch together with no batch fragmentation.
        step = 2 * COARSE_STEP
        self.checked = [(iy, ix) for iy in range(COARSE_STEP // 2, ny - 1, step)
                        for ix in range(COARSE_STEP // 2, nx - 1, step)]
        self.first = coarse + self.checked
        left = ny * nx - len(self.first)
        self.planned = len(self.first) + math.ceil(REFINE_FRACTION * left)
        self.interpolation_error: float | None = None
        self.stages = [lambda _scores: self.first, self._then]

    def _then(self, scores: np.ndarray) -> list[tuple[int, int]]:
        predicted = _bilinear(scores, *self.lattice)  # the sample from the coarse grid alone
        error = np.array([scores[c] - predicted[c] for c in self.checked])
        span = float(np.ptp(scores[~np.isnan(scores)])) or 1.0
        self.interpolation_error = float(np.sqrt(np.mean(error ** 2))) / span if len(error) else 0.0
        evaluated = ~np.isnan(scores)
        left = [(int(iy), int(ix)) for iy, ix in zip(*np.nonzero(~evaluated), strict=True)]
        if self.interpolation_error > INTERPOLATION_TOLERANCE:
            self.planned = len(self.first) + len(left)
            return left
        estimate = _interpolate(scores, evaluated)
        # Sensitive: far from the typical (median) score, or where neighbouring estimates
        # disagree (the interpolation is least trustworthy there).
        padded = np.pad(estimate, 1, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
        spread = windows.max((-2, -1)) - windows.min((-2, -1))
        sensitivity = np.abs(estimate - np.median(estimate[evaluated])) + spread
        left.sort(key=lambda c: -sensitivity[c])
        return left[:math.ceil(REFINE_FRACTION * len(left))]


def _bilinear(values: np.ndarray, ys: list[int], xs: list[int]) -> np.ndarray:
    """Bilinear interpolation of ``values`` from the lattice of rows ``ys`` × columns ``xs``.

    The drill-down's check: exact for a plane, like :func:`_interpolate`, without a
    triangulation. Qhull's Delaunay triangulation of a regular lattice (its cells cocircular four
    by four) took anywhere from 0.002 to 4 CPU seconds for the same 14×14 lattice, more than a
    third of a whole EfficientNet-Lite0 run.
    """
    ny, nx = values.shape
    lattice = values[np.ix_(ys, xs)]
    rows = np.stack([np.interp(np.arange(nx), xs, row) for row in lattice])
    return np.stack([np.interp(np.arange(ny), ys, column) for column in rows.T], axis=1)


def _interpolate(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fills unknown grid cells by piecewise-linear interpolation over all known cells.

    Linear on the Delaunay triangles of the known cells (scipy's ``griddata``), so the positions
    refined off the coarse lattice count where they are, and a plane is reproduced exactly.
    Cells outside the known cells' hull (or all, when the known cells are collinear) take the
    nearest known value.
    """
    # Imported here: scipy.interpolate costs about as much to import as the rest of occlusion,
    # and only approximate mode's drill-down interpolates (``import vizkit`` stays fast).
    from scipy.interpolate import griddata
    from scipy.spatial import QhullError

    out = values.copy()
    ky, kx = np.nonzero(known)
    uy, ux = np.nonzero(~known)
    if len(uy) == 0 or len(ky) == 0:
        return out
    points, samples = np.column_stack([ky, kx]).astype(float), values[ky, kx]
    wanted = np.column_stack([uy, ux]).astype(float)
    try:
        filled = griddata(points, samples, wanted, method="linear")
    except QhullError:  # fewer than three points, or all on one line
        filled = np.full(len(uy), np.nan)
    outside = np.isnan(filled)
    if outside.any():
        filled[outside] = griddata(points, samples, wanted[outside], method="nearest")
    out[uy, ux] = filled
    return out


def approximation_summary(run: OcclusionRun) -> str | None:
    """How an approximate map was made, in words (``None`` for an exact or full one)."""
    if not run.approximate:
        return None
    how = []
    if run.arithmetic:  # "8-bit" or "float32", and why (int8.choose_arithmetic)
        how.append(f"{run.arithmetic} arithmetic on the changes ({run.arithmetic_reason})")
    if run.interpolated:
        how.append(f"{run.interpolated} positions interpolated (checked error "
                   f"{100 * run.interpolation_error:.1f}% of the range)")
    elif run.drill_down and run.complete:
        how.append("every position evaluated (the map was too irregular to interpolate)")
    return ", ".join(how) or "approximate"
