"""Filter visualizations: the weights of a convolution as images, and activation maximization.

``filter_weights`` shows kernels directly (Zeiler & Fergus 2013, Fig. 2 layer 1): first-layer
kernels as RGB, deeper ones per input channel, centred on zero. ``maximize_activation``
synthesizes, for many channels at once, the image each channel responds to most (Olah et al.
2017, "Feature Visualization"): gradient ascent on a decorrelated Fourier parameterization with
transformation robustness (jitter, scale, rotation) and optional L2 / total-variation penalties.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vizkit import render
from vizkit.core.devices import is_out_of_memory
from vizkit.core.hooks import (
    FunctionalReLUError,
    capture_outputs,
    find_layer,
    preserve_state,
    rectifier_override,
)
from vizkit.models.base import LoadedModel

# Square root of ImageNet's colour covariance (Olah et al. 2017, lucid's color_correlation_svd_sqrt):
# optimizing in this basis decorrelates the colour channels.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


@dataclass(frozen=True)
class FilterWeights:
    """The kernels of one convolution, ready to show.

    Attributes:
        layer: dotted module name.
        weights: the raw kernels, C_out×C_in×k_h×k_w float32 (C_in per group).
        maps: kernels scaled to [-1, 1] by the largest magnitude, zero kept at zero. RGB
            layers: N×k_h×k_w×3; deeper layers: N×C_in×k_h×k_w (one map per input channel).
        tiles: ``maps`` as uint8, ``128 + 127·map``, so zero is mid-grey.
        rgb: whether each kernel is shown as one colour image (a first layer on RGB input).
        channels: the output channels shown, index-aligned with ``maps``.
    """

    layer: str
    weights: np.ndarray
    maps: np.ndarray
    tiles: np.ndarray
    rgb: bool
    channels: tuple[int, ...]


def _conv(m: LoadedModel, layer: str) -> nn.Conv2d:
    module = find_layer(m.module, layer)
    if not isinstance(module, nn.Conv2d):
        raise ValueError(
            f"Layer {layer!r} is a {type(module).__name__}, not a convolution. "
            f"Convolutions: {', '.join(m.conv_layers())}."
        )
    return module


def filter_weights(
    m: LoadedModel, layer: str, channels: Sequence[int] | None = None, scale: str = "filter"
) -> FilterWeights:
    """The kernels of convolution ``layer`` as images, normalized symmetrically around zero.

    Args:
        m: the model.
        layer: a Conv2d's dotted name.
        channels: output channels to show (default all).
        scale: ``"filter"`` divides each kernel by its own max |w| (shows every kernel's
            structure); ``"layer"`` by the layer's max |w| (keeps relative strengths).
    """
    if scale not in ("filter", "layer"):
        raise ValueError(f"scale must be 'filter' or 'layer', got {scale!r}.")
    conv = _conv(m, layer)
    w = conv.weight.detach().float().cpu().numpy()
    chosen = tuple(range(w.shape[0])) if channels is None else tuple(int(c) for c in channels)
    bad = [c for c in chosen if not 0 <= c < w.shape[0]]
    if bad:
        raise ValueError(f"Channels {bad} are outside {layer!r}'s {w.shape[0]} output channels.")
    w = w[list(chosen)]
    axes = (1, 2, 3) if scale == "filter" else (0, 1, 2, 3)
    peak = np.abs(w).max(axis=axes, keepdims=True)
    maps = (w / np.where(peak > 0, peak, 1.0)).astype(np.float32)
    rgb = w.shape[1] == 3
    if rgb:
        maps = maps.transpose(0, 2, 3, 1)
    tiles = np.clip(np.round(128 + 127 * maps), 0, 255).astype(np.uint8)
    return FilterWeights(layer=layer, weights=w, maps=maps, tiles=tiles, rgb=rgb, channels=chosen)


def filter_grid(fw: FilterWeights, zoom: int | None = None, max_inputs: int = 32, pad: int = 1) -> np.ndarray:
    """One RGB picture of ``fw``: RGB kernels in a square grid; deeper kernels one row each.

    Args:
        fw: result of ``filter_weights``.
        zoom: pixels per weight (default: enough for ~24 px tiles).
        max_inputs: input channels shown per row for deeper layers.
        pad: pixels between tiles.
    """
    k = fw.tiles.shape[1] if fw.rgb else fw.tiles.shape[2]
    zoom = zoom or max(1, math.ceil(24 / k))

    def big(t: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(t, zoom, axis=0), zoom, axis=1)

    if fw.rgb:
        return render.tile([big(t) for t in fw.tiles], pad=pad, fill=255)
    n_in = min(fw.tiles.shape[1], max_inputs)
    pics = [big(fw.tiles[i, j]) for i in range(fw.tiles.shape[0]) for j in range(n_in)]
    return render.tile(pics, cols=n_in, pad=pad, fill=255)


@dataclass(frozen=True)
class MaximizeSettings:
    """How ``maximize_activation`` synthesizes its images (Olah et al. 2017).

    Attributes:
        steps: Adam steps per batch.
        size: side of the synthesized images.
        lr: Adam learning rate.
        fourier, decorrelate: the parameterization (pixels in the plain RGB basis when both off).
        jitter, scale, degrees: transformation robustness (``jitter=0, scale=(1, 1),
            degrees=0`` turns it off).
        l2, tv: weights of the L2 and total-variation penalties.
        redirect: first steps (at most half) with redirected rectifiers, so silent channels
            get a gradient.
        seed: seeds initialization and transformations.
    """

    steps: int = 256
    size: int = 128
    lr: float = 0.05
    fourier: bool = True
    decorrelate: bool = True
    jitter: int = 4
    scale: tuple[float, float] = (0.92, 1.08)
    degrees: float = 10.0
    l2: float = 0.0
    tv: float = 0.0
    redirect: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.size < 8:
            raise ValueError("steps must be ≥ 1 and size ≥ 8.")

    @property
    def robust(self) -> bool:
        """Whether each step sees a randomly transformed image."""
        return self.jitter > 0 or tuple(self.scale) != (1.0, 1.0) or self.degrees > 0


@dataclass(frozen=True)
class Maximization:
    """Images that maximize channels of one layer (Olah et al. 2017).

    Attributes:
        layer: dotted module name.
        channels: the channels optimized, index-aligned with ``images`` (fewer than asked
            for when stopped early).
        images: N×size×size×3 uint8.
        scores: each channel's spatially averaged activation on its final uint8 image.
        steps: optimization steps done for the last batch.
        stopped: ``True`` when ``progress`` returned ``False``.
        batch_size: images optimized together in the end (halved on out-of-memory).
        settings: the settings used.
    """

    layer: str
    channels: tuple[int, ...]
    images: np.ndarray
    scores: np.ndarray
    steps: int
    stopped: bool
    batch_size: int
    settings: MaximizeSettings = field(default_factory=MaximizeSettings)


def _default_batch(device: torch.device, size: int) -> int:
    """Images per batch: memory scales with pixels; on CUDA read what is free."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(1, min(64, free / (600 * size * size * 4))))
    return 16 if device.type == "mps" else 8


class _Image(nn.Module):
    """A batch of images parameterized in decorrelated Fourier space (Olah et al. 2017).

    ``x = sigmoid(C · irfft2(w ⊙ S))``: spectrum ``S`` scaled by ``w = 1 / max(f, 1/size)``
    (so every frequency learns at a similar rate), colour basis ``C`` (ImageNet's colour
    covariance square root). ``fourier=False`` optimizes pixels (logits) directly.
    """

    def __init__(self, n: int, size: int, fourier: bool, decorrelate: bool, generator: torch.Generator):
        super().__init__()
        self.size, self.fourier, self.decorrelate = size, fourier, decorrelate
        if fourier:
            fy = torch.fft.fftfreq(size)[:, None]
            fx = torch.fft.rfftfreq(size)[None, :]
            freq = torch.sqrt(fx * fx + fy * fy)
            self.register_buffer("scale", 1.0 / torch.clamp(freq, min=1.0 / size), persistent=False)
            shape = (n, 3, size, size // 2 + 1, 2)
            self.param = nn.Parameter(0.01 * torch.randn(shape, generator=generator))
        else:
            self.param = nn.Parameter(0.01 * torch.randn((n, 3, size, size), generator=generator))
        self.register_buffer("color", _COLOR_SQRT.clone(), persistent=False)

    def forward(self) -> torch.Tensor:
        if self.fourier:
            spectrum = torch.view_as_complex(self.param) * self.scale
            x = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
            x = x / 4.0  # lucid's normalization keeps the initial image near mid-grey
        else:
            x = self.param
        if self.decorrelate:
            x = torch.einsum("bchw,dc->bdhw", x, self.color)
        return torch.sigmoid(x)


def _robustness(x: torch.Tensor, jitter: int, scale: tuple[float, float], degrees: float,
                generator: torch.Generator) -> torch.Tensor:
    """One random affine per image: shift by ±jitter px, scale, rotate by ±degrees (reflect edges)."""
    n, _, h, w = x.shape
    u = lambda: torch.rand(n, generator=generator).to(x.device)  # noqa: E731
    angle = (u() * 2 - 1) * math.radians(degrees)
    zoom = scale[0] + u() * (scale[1] - scale[0])
    tx = (u() * 2 - 1) * jitter * 2 / w
    ty = (u() * 2 - 1) * jitter * 2 / h
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute difference of neighbouring pixels (anisotropic TV)."""
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean((1, 2, 3))
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean((1, 2, 3))
    return dx + dy


def _channel_means(m: LoadedModel, layer: str, x01: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Spatial mean of ``channels[b]`` of ``layer`` for each image ``b`` of a [0, 1] batch."""
    mean = torch.tensor(m.spec.mean, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(m.spec.std, device=x01.device).view(1, 3, 1, 1)
    with capture_outputs(m.module, [layer], stop=True) as out:
        m.module((x01 - mean) / std)
    act = out[layer]
    if act.dim() == 2:
        act = act[:, :, None, None]
    if act.dim() != 4:
        raise ValueError(f"Layer {layer!r} gives a {act.dim()}-d output; need N×C×h×w or N×C.")
    picked = act[torch.arange(act.shape[0], device=act.device), channels]
    return picked.flatten(1).mean(1)


def maximize_activation(
    m: LoadedModel,
    layer: str,
    channels: Sequence[int],
    progress: Callable[[int, int], bool | None] | None = None,
    *,
    batch_size: int | None = None,
    **options: Any,
) -> Maximization:
    """For each channel, the image that maximizes its spatially averaged activation.

    Gradient ascent on ``mean_hw a_c(T(x)) - l2·mean (x-½)² - tv·TV(x)`` with a random
    transformation ``T`` each step (Olah et al. 2017). One optimization runs a batch of
    images, one per channel; the batch adapts to the device and halves on out-of-memory.

    Args:
        m: the model (its lock is held throughout; its parameters get no gradient).
        layer: dotted name of the layer whose channels to maximize.
        channels: channel indices.
        progress: ``progress(step, total)`` after each step; returning ``False`` stops early
            and returns the images so far (channels of batches not started are left out).
            An exception it raises propagates, with the model restored.
        batch_size: images per batch (default: from the device).
        **options: fields of ``MaximizeSettings`` (``steps``, ``size``, ``lr``, ``fourier``,
            ``decorrelate``, ``jitter``, ``scale``, ``degrees``, ``l2``, ``tv``, ``redirect``,
            ``seed``); the others keep their defaults.
    """
    find_layer(m.module, layer)
    chans = [int(c) for c in channels]
    if not chans:
        raise ValueError("Give at least one channel to maximize.")
    settings = MaximizeSettings(**options)
    steps, size = settings.steps, settings.size
    batch = int(batch_size or _default_batch(m.device, size))
    generator = torch.Generator().manual_seed(settings.seed)
    images, scores, done_channels = [], [], []
    stopped, steps_done = False, 0
    with m.lock, preserve_state(m.module):
        for p in m.module.parameters():
            p.requires_grad_(False)
        n_channels = _count_channels(m, layer, size)
        bad = [c for c in chans if not 0 <= c < n_channels]
        if bad:
            raise ValueError(f"Channels {bad} are outside {layer!r}'s {n_channels} channels.")
        pending = list(chans)
        done_steps_before = 0
        while pending and not stopped:
            chunk = pending[:batch]
            total = done_steps_before + steps * math.ceil(len(pending) / batch)
            out_of_memory = False
            rng_state = generator.get_state()  # a retried batch must draw what this one drew

            def report(done: int, before: int = done_steps_before, total: int = total) -> bool:
                return progress is None or progress(before + done, total) is not False

            try:
                imgs, steps_done, stopped = _optimize(m, layer, chunk, settings, generator, report)
            except (RuntimeError, torch.OutOfMemoryError) as error:
                if not is_out_of_memory(error) or batch == 1:
                    raise
                out_of_memory = True
            if out_of_memory:  # retry outside the except block, so its frames are freed
                generator.set_state(rng_state)
                batch //= 2
                if m.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            done_steps_before += steps_done
            uint8 = (imgs.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
            with torch.no_grad():
                final = torch.from_numpy(uint8).permute(0, 3, 1, 2).float().div(255).to(m.device)
                score = _channel_means(m, layer, final, torch.tensor(chunk, device=m.device))
            images.append(uint8)
            scores.append(score.cpu().numpy())
            done_channels.extend(chunk)
            pending = pending[len(chunk):]
    return Maximization(
        layer=layer, channels=tuple(done_channels), images=np.concatenate(images),
        scores=np.concatenate(scores).astype(np.float32), steps=steps_done, stopped=stopped,
        batch_size=batch, settings=settings,
    )


def _count_channels(m: LoadedModel, layer: str, size: int) -> int:
    with torch.no_grad():
        x = torch.full((1, 3, size, size), 0.5, device=m.device)
        with capture_outputs(m.module, [layer], stop=True, detach=True) as out:
            m.module(x)
    return int(out[layer].shape[1])


def _optimize(m: LoadedModel, layer: str, chunk: list[int], settings: MaximizeSettings,
              generator: torch.Generator, report: Callable[[int], bool]) -> tuple[torch.Tensor, int, bool]:
    """Runs one batch, one image per channel of ``chunk``; ``report(steps done)`` returning False
    stops it. Returns its [0, 1] images, the steps done, and whether it was stopped."""
    s = settings
    image = _Image(len(chunk), s.size, s.fourier, s.decorrelate, generator).to(m.device)
    optimizer = torch.optim.Adam(image.parameters(), lr=s.lr)
    target = torch.tensor(chunk, device=m.device)
    params = list(image.parameters())
    redirect = min(s.redirect, s.steps // 2)
    done, stopped = 0, False
    for step in range(s.steps):
        x = image()
        seen = _robustness(x, s.jitter, s.scale, s.degrees, generator) if s.robust else x
        objective = None
        if step < redirect:
            # Olah et al. 2017's redirected ReLU, here the deconvnet rule max(g, 0): rectifiers
            # pass positive gradients even where they are off, so a channel silent on the first
            # grey image still gets a signal. Models rectifying with F.relu cannot; they skip it.
            try:
                with rectifier_override(m.module, "deconvnet"):
                    objective = _channel_means(m, layer, seen, target)
            except FunctionalReLUError:
                redirect = 0
        if objective is None:
            objective = _channel_means(m, layer, seen, target)
        if s.l2:
            objective = objective - s.l2 * (x - 0.5).pow(2).mean((1, 2, 3))
        if s.tv:
            objective = objective - s.tv * _total_variation(x)
        # Ascent: the gradient of the objective itself, so a redirected rectifier's max(g, 0)
        # keeps exactly the directions that raise it.
        grads = torch.autograd.grad(objective.sum(), params)
        for p, g in zip(params, grads, strict=True):
            p.grad = -g
        optimizer.step()
        done = step + 1
        if not report(done):
            stopped = True
            break
    with torch.no_grad():
        return image().detach(), done, stopped
