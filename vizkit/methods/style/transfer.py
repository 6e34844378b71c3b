"""Neural style transfer (Gatys, Ecker & Bethge 2015, "A Neural Algorithm of Artistic Style").

``style_transfer`` optimizes an image so that its features match the content image's and its
Gram matrices the style image's (the objective and its closed-form gradient: ``losses.py``), with
the features of a registered extractor (``extractors.py``), as a generator of previews. L-BFGS
with the PyTorch tutorial's fixed step, or Adam; channels_last on every device, bfloat16 autocast
on CUDA.

From 256 px up, a run is coarse-to-fine by default (Gatys et al. 2017, "Controlling Perceptual
Factors in Neural Style Transfer"): the first half of the steps optimize the image at half the
size, where a step costs a quarter, and the rest refine it, upsampled, at full size. Not by
default for EfficientNet-Lite0: at full size its default run reaches a lower style distance at
the same content (bench/style_quality.py; ``extractors.LITE0_BETA``).

A run starts from the content image, from the content in the style's colours (``init="palette"``,
EfficientNet-Lite0's default) or from noise. ``preserve_color`` transfers luminance only (Gatys,
Bethge, Hertzmann & Shechtman 2016); both colour tools are in ``color.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from vizkit.core.assets import ASSETS
from vizkit.methods.style.color import luminance_pair, match_palette, with_chroma
from vizkit.methods.style.extractors import FeatureExtractor, get_extractor
from vizkit.methods.style.losses import LossSettings, Objective

STYLE_DIR = ASSETS / "styles"


@dataclass(frozen=True)
class StyleStep:
    """One preview of a running style transfer.

    Attributes:
        step: objective evaluations done so far.
        image: the current image, uint8 H×W×3 (with the content's chroma when preserving color).
        losses: weighted terms ``content``, ``style``, ``tv`` and their sum ``total``.
        done: whether this is the final result (last step reached or stopped).
        stopped: whether the run was stopped before its last step.
        work_size: (height, width) the step was computed at: half the output's in the coarse
            stage of a coarse-to-fine run (``image`` is always at the output's size).
    """

    step: int
    image: np.ndarray
    losses: dict[str, float]
    done: bool = False
    stopped: bool = False
    work_size: tuple[int, int] | None = None


def _resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 H×W×3 → ``size`` (an int scales the longer side), antialiased."""
    img = np.ascontiguousarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"Expected an RGB uint8 H×W×3 image, got shape {img.shape} {img.dtype}.")
    h, w = img.shape[:2]
    if isinstance(size, int):
        scale = size / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if (h, w) == tuple(size):
        return img
    tensor = torch.from_numpy(img.copy()).permute(2, 0, 1).float()
    out = F.interpolate(tensor[None], size=size, mode="bilinear", antialias=True, align_corners=False)
    return out[0].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def _to_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    # NCHW-contiguous: optimizers flatten the image and its gradient with .view(-1).
    return tensor.contiguous().float().div(255).to(device)


def _to_image(x: torch.Tensor) -> np.ndarray:
    return (x.detach()[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def style_images() -> dict[str, Path]:
    """The style images the project ships (``assets/styles/*.png``), by name."""
    return {p.stem: p for p in sorted(STYLE_DIR.glob("*.png"))}


# L-BFGS line search: None is the PyTorch tutorial's fixed step (one evaluation per iteration).
# Measured with bench/style_transfer.py (random VGG19, 40 evaluations): strong-Wolfe wins at 64×64
# (0.0665 vs the tutorial's 0.0687) but loses at 256×256 (0.134-0.144 vs 0.089; fixed step 0.108).
_LINE_SEARCH: str | None = None


class _BudgetSpent(Exception):
    """Raised by the closure when ``steps`` evaluations are done (ends a line search early)."""


# Coarse-to-fine: the first COARSE_FRACTION of the steps run at half the size when that half is
# at least COARSE_MIN_SIZE pixels, then the image is upsampled and refined at full size (Gatys,
# Ecker, Bethge, Hertzmann & Shechtman 2017, "Controlling Perceptual Factors in Neural Style
# Transfer", §5). A coarse step costs a quarter of a full one. Measured with
# bench/style_transfer.py at 256×256, 40 evaluations: see the README's "Speed" section.
COARSE_FRACTION = 0.5
COARSE_MIN_SIZE = 128
# The shorter side every extractor can take: random-multiscale's coarsest scale (1/8) needs 3 px
# for its reflection padding; VGG19 needs 16 px up to conv5_1.
MIN_SIDE = 24
# Where a run starts: the content image, the content in the style's colours, or uniform noise.
INITS = ("content", "palette", "noise")


def _stages(size: int, steps: int, coarse_to_fine: bool) -> list[tuple[int, int]]:
    """(size, evaluations) of each stage of a run: one stage, or a coarse one then the full one."""
    coarse = round(steps * COARSE_FRACTION)
    if not coarse_to_fine or size // 2 < COARSE_MIN_SIZE or coarse < 1 or coarse == steps:
        return [(size, steps)]
    return [(size // 2, coarse), (size, steps - coarse)]


def style_transfer(
    content: np.ndarray,
    style: np.ndarray,
    extractor: str | FeatureExtractor = "vgg19",
    *,
    content_layers: Sequence[str] | None = None,
    style_layers: Sequence[str] | None = None,
    content_weight: float | None = None,
    style_weight: float | None = None,
    tv_weight: float | None = None,
    optimizer: str | None = None,
    steps: int = 100,
    size: int = 256,
    init: str | None = None,
    preserve_color: bool = False,
    device: str | torch.device | None = None,
    preview_every: int = 10,
    lr: float | None = None,
    seed: int = 0,
    stop: Callable[[], bool] | None = None,
    coarse_to_fine: bool | None = None,
) -> Generator[StyleStep, None, StyleStep]:
    """Gatys et al. 2015 style transfer as a generator of previews.

    Yields a ``StyleStep`` every ``preview_every`` steps and a final one (``done=True``): the best
    image evaluated (or the last iterate, if better), also the generator's return value.
    Closing the generator (or ``stop()`` returning true, which is checked between steps) ends
    the run between two steps; with ``stop`` the last yield is the result so far. Each step is
    one evaluation of the objective and its gradient; L-BFGS takes the tutorial's fixed step
    (``_LINE_SEARCH = "strong_wolfe"`` adds a line search whose evaluations count as steps
    too: ``steps`` caps them all), and ``stop`` is checked between two L-BFGS iterations.

    Args:
        content, style: RGB uint8 H×W×3 images (any size; the style is resized to the output).
        extractor: a name from ``extractors.EXTRACTORS`` (``"vgg19"``, ``"efficientnet-lite0"``,
            ``"random-multiscale"``...) or a ``FeatureExtractor``.
        content_layers, style_layers: dotted layer names; ``None`` takes the extractor's.
        content_weight, style_weight: α and β; ``None`` takes the extractor's.
        tv_weight: γ, total-variation smoothing of the image; ``None`` takes the extractor's
            (0 except for ``efficientnet-lite0``).
        optimizer: ``"lbfgs"`` or ``"adam"``; ``None`` takes the extractor's (L-BFGS for VGG19
            and EfficientNet-Lite0, Adam for random-multiscale).
        steps: objective evaluations.
        size: the output's longer side in pixels (the content's aspect ratio is kept).
        init: start from the ``"content"`` image, from the content in the style's colours
            (``"palette"``: ``color.match_palette``), or from ``"noise"``; ``None`` takes the
            extractor's (``"content"`` with ``preserve_color``).
        preserve_color: transfer luminance only, keep the content's colors (Gatys et al. 2016).
        device: ``None`` picks cuda, mps, then cpu (ignored for a ``FeatureExtractor``).
        preview_every: steps between two previews.
        lr: step size; ``None`` is 1 for L-BFGS and the extractor's ``adam_lr`` for Adam.
        seed: seeds the noise initialization.
        stop: called between steps; returning true ends the run with the result so far.
        coarse_to_fine: ``None`` takes the extractor's (on, except for ``efficientnet-lite0``).
            When on and ``size // 2`` is at least ``COARSE_MIN_SIZE``, run the first
            ``COARSE_FRACTION`` of the steps at half the size, then upsample and finish at full
            size. Previews of the coarse stage are shown upsampled; the losses reported are
            those of the stage's own size, and the final ones are at full size.
    """
    if optimizer not in (None, "lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}.")
    if init not in (None, *INITS):
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}.")
    if not isinstance(size, int) or not 16 <= size <= 4096:
        raise ValueError(f"size must be an integer between 16 and 4096, got {size!r}.")
    if steps < 1 or preview_every < 1:
        raise ValueError("steps and preview_every must be at least 1.")
    ext = extractor if isinstance(extractor, FeatureExtractor) else get_extractor(extractor, device)
    optimizer = optimizer or ext.optimizer
    if init is None:  # the extractor's start, unless it would undo preserve_color
        init = "content" if preserve_color and ext.init == "palette" else ext.init
    elif init == "palette" and preserve_color:
        raise ValueError("init='palette' takes the style's colours and preserve_color keeps the "
                         "content's: choose one.")
    if lr is None:
        lr = ext.adam_lr if optimizer == "adam" else 1.0
    loss = LossSettings(
        content_layers=ext.check_layers(content_layers or ext.content_layers),
        style_layers=ext.check_layers(style_layers or ext.style_layers),
        content_weight=ext.content_weight if content_weight is None else float(content_weight),
        style_weight=ext.style_weight if style_weight is None else float(style_weight),
        tv_weight=ext.tv_weight if tv_weight is None else float(tv_weight),
    )
    device = ext.device

    content_img = _resize(content, size)
    out_shape = content_img.shape[:2]
    if min(out_shape) < MIN_SIDE:
        raise ValueError(
            f"At size {size} the content image becomes {out_shape[1]}×{out_shape[0]} px; its shorter "
            f"side must be at least {MIN_SIDE} px. Use a larger size or crop the image.")

    def picture(x: torch.Tensor) -> np.ndarray:
        if tuple(x.shape[-2:]) != out_shape:
            x = F.interpolate(x.detach(), size=out_shape, mode="bicubic", align_corners=False)
        out = _to_image(x)
        return with_chroma(out, content_img) if preserve_color else out

    run = _Run(optimizer=optimizer, lr=lr, steps=steps, preview_every=preview_every, stop=stop,
               picture=picture)
    image: torch.Tensor | None = None
    stopped = False
    objective: Objective | None = None
    if coarse_to_fine is None:
        coarse_to_fine = ext.coarse_to_fine
    coarse_to_fine = coarse_to_fine and min(out_shape) // 2 >= MIN_SIDE
    for stage_size, stage_steps in _stages(size, steps, coarse_to_fine):
        stage_content = _resize(content, stage_size)
        stage_style = _resize(style, stage_content.shape[:2])
        work_content, work_style = (
            luminance_pair(stage_content, stage_style) if preserve_color
            else (stage_content, stage_style)
        )
        objective = Objective(ext, _to_tensor(work_content, device), _to_tensor(work_style, device), loss)
        if image is not None:  # the coarse stage's best evaluated image, upsampled
            start = run.best["image"] if "image" in run.best else image.detach()
            image = F.interpolate(start, size=stage_content.shape[:2], mode="bicubic",
                                  align_corners=False).clamp_(0, 1).contiguous()
        elif init == "content":
            image = _to_tensor(work_content, device)
        elif init == "palette":
            image = _to_tensor(match_palette(work_content, work_style), device)
        else:
            g = torch.Generator().manual_seed(seed)
            image = torch.rand((1, 3, *stage_content.shape[:2]), generator=g).to(device)
        stopped = yield from run.stage(objective, image, stage_steps)
        if stopped:
            break
    assert objective is not None and image is not None
    best = run.best
    if optimizer == "adam" or _LINE_SEARCH is None or "image" not in best:
        # The last update (Adam's, or L-BFGS's fixed step) is not evaluated yet.
        with torch.no_grad():
            final = image.detach().clamp(0, 1)
            final_losses = objective.evaluate(final, backward=False)
        if final_losses["total"] <= best["total"]:
            best.update(losses=final_losses, image=final)
    result = StyleStep(step=run.evals, image=picture(best["image"]), losses=best["losses"],
                       done=True, stopped=stopped, work_size=tuple(best["image"].shape[-2:]))
    yield result
    return result


@dataclass
class _Run:
    """What the stages of one run share: the optimizer's settings, the previews' rhythm, the
    stop callback, and the count of objective evaluations so far."""

    optimizer: str
    lr: float
    steps: int
    preview_every: int
    stop: Callable[[], bool] | None
    picture: Callable[[torch.Tensor], np.ndarray]
    evals: int = 0
    best: dict[str, object] = field(default_factory=dict)

    def stage(self, objective: Objective, image: torch.Tensor, evaluations: int
              ) -> Generator[StyleStep, None, bool]:
        """Optimizes ``image`` in place for ``evaluations`` more evaluations.

        Keeps the stage's best evaluated image in ``best`` (losses at different sizes are not
        compared); yields previews; returns whether ``stop`` ended it.
        """
        self.best = {"total": math.inf}
        best, until = self.best, self.evals + evaluations
        image.requires_grad_(True)
        if self.optimizer == "lbfgs":
            # One L-BFGS iteration per opt.step() call; with _LINE_SEARCH = "strong_wolfe" (Nocedal
            # & Wright 2006, alg. 3.5) no accepted point raises the loss. The budget counts every
            # closure evaluation, line search included.
            opt: torch.optim.Optimizer = torch.optim.LBFGS(
                [image], lr=self.lr, max_iter=1, max_eval=evaluations + 1, tolerance_grad=1e-12,
                tolerance_change=1e-15, line_search_fn=_LINE_SEARCH,
            )
        else:
            opt = torch.optim.Adam([image], lr=self.lr)

        last: dict[str, float] = {}
        pending: list[StyleStep] = []  # previews taken inside the closure, yielded after the step
        # The last evaluation: each opt.step() starts by evaluating the point the previous line
        # search accepted, which it has already evaluated; that one is answered from here, free.
        cache: dict[str, object] = {}

        def closure() -> torch.Tensor:
            # Clamping before each evaluation keeps the image valid, as in the PyTorch tutorial.
            with torch.no_grad():
                image.clamp_(0, 1)
            if "image" in cache and torch.equal(cache["image"], image):
                image.grad.copy_(cache["grad"])
                return torch.tensor(cache["total"])
            if self.evals >= until:
                raise _BudgetSpent
            opt.zero_grad(set_to_none=False)
            last.update(objective.evaluate(image, backward=True))
            self.evals += 1
            if last["total"] < best["total"]:
                best.update(total=last["total"], losses=dict(last), image=image.detach().clone())
            if self.optimizer == "lbfgs":
                cache.update(image=image.detach().clone(), grad=image.grad.clone(), total=last["total"])
            if self.evals % self.preview_every == 0 and self.evals < self.steps:
                pending.append(StyleStep(step=self.evals, image=self.picture(image), losses=dict(last),
                                         work_size=tuple(image.shape[-2:])))
            return torch.tensor(last["total"])

        while self.evals < until:
            if self.stop is not None and self.stop():
                return True
            before = self.evals
            try:
                opt.step(closure)
            except _BudgetSpent:
                pass
            yield from pending
            pending.clear()
            if self.evals == before:  # converged: L-BFGS asks for nothing new
                break
        return False


def run_to_end(run: Generator[StyleStep, None, StyleStep]) -> StyleStep:
    """Drains a ``style_transfer`` generator and returns its final step."""
    last = None
    for last in run:  # noqa: B007 - the last yield is the result
        pass
    if last is None:
        raise RuntimeError("style transfer produced no result")
    return last
