"""Background families for FashionScenes: named procedural textures and crops of real photos.

Every family is a function ``draw(n, size, g) -> N×3×S×S`` float tensor in [0, 1] that takes all
its randomness from the ``torch.Generator`` ``g``, so scenes stay a pure function of their seed.
``FAMILIES`` names them; training draws from ``TRAINING_FAMILIES`` (every family but
``HELD_OUT``), so the accuracy on scenes drawn from the held-out family alone measures how the
model does on backgrounds of a kind it never saw, not on more of its own textures.

On top of every family, ``draw_backgrounds`` changes the colour statistics of half the canvases
(gamma, contrast, saturation, channel order, inversion, a colour cast), so that no family has one
typical palette a model could learn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from vizkit.core.registry import Registry

Draw = Callable[[int, int, torch.Generator], torch.Tensor]


def _u(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(ys, xs)`` in [0, 1), each S×S."""
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return torch.meshgrid(t, t, indexing="ij")


def _palette(t: torch.Tensor, g: torch.Generator, stops: int = 4) -> torch.Tensor:
    """Maps N×S×S values in [0, 1] through a random piecewise-linear palette of ``stops`` colours."""
    n = t.shape[0]
    colours = _u(g, n, stops, 3)
    pos = t.clamp(0, 1) * (stops - 1)
    lo = pos.floor().long().clamp(max=stops - 2)
    frac = (pos - lo).unsqueeze(-1)
    rows = torch.arange(n).view(n, 1, 1)
    out = (1 - frac) * colours[rows, lo] + frac * colours[rows, lo + 1]
    return out.permute(0, 3, 1, 2)


def _two_colour(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """N×1×S×S values in [0, 1] between two random colours per sample."""
    c1, c2 = _u(g, t.shape[0], 3, 1, 1), _u(g, t.shape[0], 3, 1, 1)
    return c1 + (c2 - c1) * t


def _normalized(field: torch.Tensor) -> torch.Tensor:
    """Each sample's field stretched to [0, 1] (min to max)."""
    flat = field.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    shape = (-1,) + (1,) * (field.dim() - 1)
    return (field - lo.view(shape)) / (hi - lo).clamp_min(1e-6).view(shape)


# --- the textures FashionScenes always had --------------------------------------------------------

def value_noise(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Smooth colour value noise at a random scale: per channel a random grid of 2..24 cells,
    upsampled bicubically."""
    noise = torch.zeros(n, 3, size, size)
    cells = torch.randint(2, 25, (n,), generator=g)
    for c in cells.unique().tolist():
        sel = cells == c
        low = _u(g, int(sel.sum()), 3, c, c)
        noise[sel] = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return noise.clamp(0, 1)


def _waves(n: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random plane wave per sample: its phase argument's projection, the wave, the wave at 90°."""
    ys, xs = _grid(size)
    angle = _u(g, n, 1, 1) * math.pi
    freq = 1 + _u(g, n, 1, 1) * 9
    phase = _u(g, n, 1, 1) * 2 * math.pi
    proj = xs * torch.cos(angle) + ys * torch.sin(angle)
    wave = torch.sin(2 * math.pi * freq * proj + phase)
    across = xs * torch.cos(angle + math.pi / 2) + ys * torch.sin(angle + math.pi / 2)
    return proj, wave, torch.sin(2 * math.pi * freq * across + phase)


def gratings(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Sinusoidal two-colour gratings, 1..10 cycles, any orientation and phase."""
    _, wave, _ = _waves(n, size, g)
    return _two_colour((0.5 + 0.5 * wave).unsqueeze(1), g)


def stripes_checks(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Square-wave stripes (random duty cycle) or checkerboards, at random frequency and angle."""
    _, wave, across = _waves(n, size, g)
    duty = (_u(g, n, 1, 1) - 0.5) * 1.2  # threshold on the sine: duty cycle 30..70%
    stripes = (wave > duty).float()
    checks = ((wave > 0) ^ (across > 0)).float()
    pick = (_u(g, n, 1, 1) < 0.5)
    return _two_colour(torch.where(pick, stripes, checks).unsqueeze(1), g)


def gradients(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Linear or radial gradients through two to four colours."""
    ys, xs = _grid(size)
    proj, _, _ = _waves(n, size, g)
    linear = _normalized(proj)
    cx, cy = _u(g, n, 1, 1) * 1.4 - 0.2, _u(g, n, 1, 1) * 1.4 - 0.2
    radial = _normalized(torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2))
    t = torch.where(_u(g, n, 1, 1) < 0.5, linear, radial)
    return _palette(t, g, stops=int(torch.randint(2, 5, (1,), generator=g)))


def blends(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Colour noise blended with a grating: textured and structured at once."""
    noise = value_noise(n, size, g)
    grating = gratings(n, size, g)
    base = _u(g, n, 3, 1, 1)
    return (base + (0.5 * noise + 0.5 * grating - 0.5) * 1.2).clamp(0, 1)


# --- new procedural families ----------------------------------------------------------------------

def spectral_noise(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Gaussian noise with power spectrum 1/f^β, β uniform in [0, 3]: white (0), pink (1), brown (2).

    Shaped in the Fourier domain; the channels are mixed from one shared and three own fields, so
    colourfulness varies from grey-scale noise to independent colour noise.
    """
    beta = _u(g, n, 1, 1, 1) * 3
    fy = torch.fft.fftfreq(size).view(-1, 1)
    fx = torch.fft.rfftfreq(size).view(1, -1)
    f = torch.sqrt(fy ** 2 + fx ** 2)
    f[0, 0] = 1.0
    amp = f.pow(-beta / 2)
    spectrum = torch.complex(torch.randn(n, 4, size, size // 2 + 1, generator=g),
                             torch.randn(n, 4, size, size // 2 + 1, generator=g)) * amp
    spectrum[..., 0, 0] = 0
    field = torch.fft.irfft2(spectrum, s=(size, size))
    field = field / field.flatten(2).std(2).clamp_min(1e-6).view(n, 4, 1, 1)
    shared = _u(g, n, 1, 1, 1)
    mixed = shared * field[:, :1] + (1 - shared) * field[:, 1:]
    contrast = 0.08 + _u(g, n, 1, 1, 1) * 0.25
    return (_u(g, n, 3, 1, 1) * 0.6 + 0.2 + contrast * mixed).clamp(0, 1)


def _perlin(n: int, size: int, cells: int, g: torch.Generator) -> torch.Tensor:
    """Perlin gradient noise (Perlin 2002, quintic fade) on a ``cells``×``cells`` lattice, N×S×S."""
    angles = _u(g, n, cells + 1, cells + 1) * 2 * math.pi
    gx, gy = torch.cos(angles), torch.sin(angles)
    pos = (torch.arange(size, dtype=torch.float32) + 0.5) * cells / size
    i = pos.floor().long()
    f = pos - i
    fade = f * f * f * (f * (f * 6 - 15) + 10)
    iy, ix = i.view(-1, 1), i.view(1, -1)
    fy, fx = f.view(-1, 1), f.view(1, -1)

    def corner(dy: int, dx: int) -> torch.Tensor:
        return gx[:, iy + dy, ix + dx] * (fx - dx) + gy[:, iy + dy, ix + dx] * (fy - dy)

    wy, wx = fade.view(-1, 1), fade.view(1, -1)
    top = corner(0, 0) + wx * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + wx * (corner(1, 1) - corner(1, 0))
    return top + wy * (bottom - top)


def perlin(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Fractal Perlin noise through a random palette: fBm, turbulence, ridges, marble or wood.

    Octaves double the lattice from 2..6 cells up to half the canvas, each weighted by a random
    persistence^k (Perlin 1985's turbulence and marble, ``sin(x + a·turbulence)``).
    """
    ys, xs = _grid(size)
    out = torch.zeros(n, 3, size, size)
    base_cells = torch.randint(2, 7, (n,), generator=g)
    for c in base_cells.unique().tolist():
        sel = (base_cells == c).nonzero().flatten()
        k = len(sel)
        persistence = (0.35 + _u(g, k, 1, 1) * 0.35)
        fbm, turb, total = torch.zeros(k, size, size), torch.zeros(k, size, size), 0.0
        cells, octave = c, 0
        while cells <= size // 2:
            layer = _perlin(k, size, cells, g)
            w = persistence ** octave
            fbm += w * layer
            turb += w * layer.abs()
            total = total + w
            cells, octave = cells * 2, octave + 1
        fbm, turb = fbm / total, turb / total
        angle = _u(g, k, 1, 1) * math.pi
        freq = 2 + _u(g, k, 1, 1) * 8
        proj = xs * torch.cos(angle) + ys * torch.sin(angle)
        cx, cy = _u(g, k, 1, 1), _u(g, k, 1, 1)
        radius = torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
        kinds = torch.stack([
            _normalized(fbm),
            _normalized(turb),
            1 - _normalized(turb),
            0.5 + 0.5 * torch.sin(2 * math.pi * freq * proj + 8 * turb),
            0.5 + 0.5 * torch.sin(2 * math.pi * freq * radius + 6 * fbm),
        ])
        kind = torch.randint(0, len(kinds), (k,), generator=g)
        out[sel] = _palette(kinds[kind, torch.arange(k)], g)
    return out


def cellular(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Voronoi cells of 4..48 random sites (Worley 1996): flat colours with or without borders,
    or shaded by the distance to the nearest site (F1) or by F2 − F1 (cracks)."""
    ys, xs = _grid(size)
    most = 48
    count = torch.randint(4, most + 1, (n,), generator=g)
    sites = _u(g, n, most, 2)
    colours = _u(g, n, most, 3)
    d1 = torch.full((n, size, size), float("inf"))
    d2 = torch.full((n, size, size), float("inf"))
    nearest = torch.zeros(n, size, size, dtype=torch.long)
    for j in range(most):
        d = (xs - sites[:, j, 0].view(n, 1, 1)) ** 2 + (ys - sites[:, j, 1].view(n, 1, 1)) ** 2
        d = torch.where((j < count).view(n, 1, 1), d, torch.inf)
        closer = d < d1
        d2 = torch.where(closer, d1, torch.minimum(d2, d))
        nearest = torch.where(closer, j, nearest)
        d1 = torch.where(closer, d, d1)
    d1, d2 = d1.sqrt(), d2.sqrt()
    flat = colours[torch.arange(n).view(n, 1, 1), nearest].permute(0, 3, 1, 2)
    width = _u(g, n, 1, 1) * 2.5 / size
    border = ((d2 - d1) < width).unsqueeze(1)
    line = _u(g, n, 3, 1, 1)
    bordered = torch.where(border, line, flat)
    kind = torch.randint(0, 4, (n, 1, 1, 1), generator=g)
    f1 = _palette(_normalized(d1), g)
    cracks = _palette(_normalized(d2 - d1), g)
    return torch.where(kind == 0, flat, torch.where(kind == 1, bordered, torch.where(kind == 2, f1, cracks)))


def blobs(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Blurred blobs: 3..12 soft, rotated ellipses of random colour over a base colour."""
    ys, xs = _grid(size)
    most = 12
    count = torch.randint(3, most + 1, (n,), generator=g)
    out = _u(g, n, 3, 1, 1).expand(n, 3, size, size).clone()
    for j in range(most):
        cx, cy = (_u(g, n, 1, 1) * 1.2 - 0.1 for _ in range(2))
        sx, sy = (0.04 + _u(g, n, 1, 1) * 0.3 for _ in range(2))
        angle = _u(g, n, 1, 1) * math.pi
        dx, dy = xs - cx, ys - cy
        u = (dx * torch.cos(angle) + dy * torch.sin(angle)) / sx
        v = (-dx * torch.sin(angle) + dy * torch.cos(angle)) / sy
        alpha = torch.exp(-0.5 * (u ** 2 + v ** 2)) * (0.5 + 0.5 * _u(g, n, 1, 1))
        alpha = torch.where((j < count).view(n, 1, 1), alpha, 0.0).unsqueeze(1)
        out = out * (1 - alpha) + _u(g, n, 3, 1, 1) * alpha
    return out


def dead_leaves(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """The dead-leaves model (Matheron; Lee, Mumford & Huang 2001): opaque discs and squares with
    sharp, anti-aliased edges, radii drawn from a 1/r³ law, painted one over another."""
    ys, xs = _grid(size)
    most = 40
    count = torch.randint(16, most + 1, (n,), generator=g)
    out = _u(g, n, 3, 1, 1).expand(n, 3, size, size).clone()
    r_min, r_max = 0.05, 0.6
    for j in range(most):
        # Inverse CDF of p(r) ∝ r^-3 on [r_min, r_max].
        q = _u(g, n, 1, 1)
        r = (r_min ** -2 - q * (r_min ** -2 - r_max ** -2)) ** -0.5
        cx, cy = _u(g, n, 1, 1), _u(g, n, 1, 1)
        angle = _u(g, n, 1, 1) * math.pi / 2
        dx, dy = xs - cx, ys - cy
        disc = torch.sqrt(dx ** 2 + dy ** 2)
        square = torch.maximum((dx * torch.cos(angle) + dy * torch.sin(angle)).abs(),
                               (-dx * torch.sin(angle) + dy * torch.cos(angle)).abs())
        dist = torch.where(_u(g, n, 1, 1) < 0.6, disc, square)
        alpha = ((r - dist) * size + 0.5).clamp(0, 1)
        alpha = torch.where((j < count).view(n, 1, 1), alpha, 0.0).unsqueeze(1)
        out = out * (1 - alpha) + _u(g, n, 3, 1, 1) * alpha
    return out


# --- crops of real photos -------------------------------------------------------------------------

#: Photographs that ship with scikit-image (``skimage/data``; licences in its README): people,
#: animals, objects, microscopy, astronomy, textures (brick, grass, gravel) and printed text.
#: Synthetic pictures there (logo, phantom, chessboards, the horse silhouette) are left out.
PHOTO_FILES = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "moon.png", "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)
# Each photo is kept at three scales (short side in pixels); a crop samples the scale it is
# closest to, so no crop is shrunk more than 2× by bilinear sampling (which would alias).
_PHOTO_SIDES = (96, 192, 384)


@cache
def _photo_pyramid() -> tuple[tuple[torch.Tensor, ...], ...]:
    """The photos as 3×H×W float tensors in [0, 1], one tuple per scale in ``_PHOTO_SIDES``."""
    from pathlib import Path

    import skimage.data
    from PIL import Image

    folder = Path(skimage.data.__file__).parent
    levels: list[list[torch.Tensor]] = [[] for _ in _PHOTO_SIDES]
    for name in PHOTO_FILES:
        with Image.open(folder / name) as im:
            rgb = im.convert("RGB")
            for level, side in enumerate(_PHOTO_SIDES):
                scale = side / min(rgb.size)
                small = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)),
                                   Image.Resampling.LANCZOS)
                array = np.asarray(small, dtype=np.float32) / 255
                levels[level].append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    return tuple(tuple(level) for level in levels)


def crop_photo(photo: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, side: torch.Tensor,
               angle: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """N square crops of one 3×H×W ``photo``, resampled bilinearly to ``size``×``size``.

    Crop k is centred at pixel coordinates ``(cx[k], cy[k])``, ``side[k]`` pixels wide, turned by
    ``angle[k]`` radians and mirrored where ``flip[k]`` is -1. At ``side == size`` without a turn,
    output pixel i is photo pixel ``cx - size/2 + i`` exactly.
    """
    h, w = photo.shape[1:]
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(len(cx), 2, 3)
    theta[:, 0, 0] = cos * side / w * flip
    theta[:, 0, 1] = -sin * side / w
    theta[:, 1, 0] = sin * side / h * flip
    theta[:, 1, 1] = cos * side / h
    theta[:, 0, 2] = cx / w * 2 - 1
    theta[:, 1, 2] = cy / h * 2 - 1
    grid = F.affine_grid(theta, [len(cx), 3, size, size], align_corners=False)
    return F.grid_sample(photo.expand(len(cx), -1, -1, -1), grid, mode="bilinear",
                         padding_mode="reflection", align_corners=False)


def photos(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Crops of real photos (``PHOTO_FILES``): a random photo, scale, position, flip and rotation."""
    pyramid = _photo_pyramid()
    out = torch.empty(n, 3, size, size)
    level = torch.randint(0, len(_PHOTO_SIDES), (n,), generator=g)
    which = torch.randint(0, len(PHOTO_FILES), (n,), generator=g)
    # Crop side in source pixels, log-uniform between size/2 and 2·size (at most the short side).
    crop = size * torch.exp((_u(g, n) * 2 - 1) * math.log(2))
    angle = torch.where(_u(g, n) < 0.3, (_u(g, n) - 0.5) * math.pi / 2, torch.zeros(n))
    flip = torch.where(_u(g, n) < 0.5, -1.0, 1.0)
    px, py = _u(g, n), _u(g, n)
    for lv in range(len(_PHOTO_SIDES)):
        for p in range(len(PHOTO_FILES)):
            sel = ((level == lv) & (which == p)).nonzero().flatten()
            if len(sel) == 0:
                continue
            photo = pyramid[lv][p]
            h, w = photo.shape[1:]
            side = crop[sel].clamp(max=min(h, w) / 1.5)  # a rotated square stays inside the photo
            half = side * math.sqrt(2) / 2
            cx = half + px[sel] * (w - 2 * half).clamp_min(0)
            cy = half + py[sel] * (h - 2 * half).clamp_min(0)
            out[sel] = crop_photo(photo, cx, cy, side, angle[sel], flip[sel], size)
    return out.clamp(0, 1)


# --- the registry ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackgroundFamily:
    """A named kind of background.

    Attributes:
        name: registry key.
        draw: ``draw(n, size, g)`` → N×3×S×S float tensor in [0, 1].
        summary: one line for model cards and help texts.
    """

    name: str
    draw: Draw
    summary: str


#: The families by name, in registration order (``vizkit.core.registry.Registry``).
FAMILIES: Registry[BackgroundFamily] = Registry("background family")
for _family in (
    BackgroundFamily("value_noise", value_noise, "smooth colour value noise, 2–24 cells"),
    BackgroundFamily("gratings", gratings, "two-colour sinusoidal gratings"),
    BackgroundFamily("stripes_checks", stripes_checks, "stripes and checkerboards, any frequency and angle"),
    BackgroundFamily("gradients", gradients, "linear and radial gradients through 2–4 colours"),
    BackgroundFamily("blends", blends, "colour noise blended with a grating"),
    BackgroundFamily("spectral_noise", spectral_noise, "1/f^β noise, β in [0, 3]: white, pink, brown"),
    BackgroundFamily("perlin", perlin, "fractal Perlin noise: fBm, turbulence, ridges, marble, wood"),
    BackgroundFamily("cellular", cellular, "Voronoi cells: flat, bordered, F1 distance, F2−F1 cracks"),
    BackgroundFamily("blobs", blobs, "soft blurred ellipses over a base colour"),
    BackgroundFamily("dead_leaves", dead_leaves, "dead-leaves discs and squares, sharp edges, 1/r³ sizes"),
    BackgroundFamily("photos", photos, "crops of 18 real photos shipped with scikit-image"),
):
    FAMILIES.register(_family)
#: The family the bundled model never sees in training; scenes drawn from it alone measure how it
#: does on an unfamiliar kind of background (``python -m vizkit train --eval-only``).
HELD_OUT = "photos"


def check_families(families: Sequence[str]) -> tuple[str, ...]:
    """``families`` as a tuple, or a ValueError naming the known families."""
    names = tuple(families)
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"Unknown background family {', '.join(unknown) or '(none given)'}; "
                         f"choose from: {', '.join(FAMILIES)}.")
    return names


def training_families(hold_out: str | None = HELD_OUT) -> tuple[str, ...]:
    """Every family but ``hold_out`` (None: every family)."""
    if hold_out is not None:
        check_families([hold_out])
    return tuple(name for name in FAMILIES if name != hold_out)


TRAINING_FAMILIES = training_families()


def recolour(bg: torch.Tensor, g: torch.Generator, fraction: float = 0.5) -> torch.Tensor:
    """Random colour statistics for ``fraction`` of the canvases: gamma (0.5–2), contrast (0.4–1.4),
    saturation (0–1.8), channel order, inversion (one in five) and a colour cast."""
    n = bg.shape[0]
    on = (_u(g, n, 1, 1, 1) < fraction)
    gamma = torch.exp((_u(g, n, 1, 1, 1) * 2 - 1) * math.log(2))
    x = bg.clamp(0, 1).pow(gamma)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (0.4 + _u(g, n, 1, 1, 1)) * (x - mean)
    grey = x.mean(1, keepdim=True)
    x = grey + _u(g, n, 1, 1, 1) * 1.8 * (x - grey)
    order = torch.argsort(_u(g, n, 3), dim=1)
    x = x[torch.arange(n).view(n, 1), order]
    x = torch.where(_u(g, n, 1, 1, 1) < 0.2, 1 - x, x)
    x = x + (_u(g, n, 3, 1, 1) - 0.5) * 0.3
    return torch.where(on, x.clamp(0, 1), bg)


def draw_backgrounds(n: int, size: int, g: torch.Generator,
                     families: Sequence[str] = TRAINING_FAMILIES) -> torch.Tensor:
    """N×3×S×S canvases in [0, 1], each from a family drawn uniformly from ``families``,
    half of them recoloured (``recolour``), all with a little fine grain."""
    names = check_families(families)
    pick = torch.randint(0, len(names), (n,), generator=g)
    out = torch.empty(n, 3, size, size)
    for i, name in enumerate(names):
        sel = (pick == i).nonzero().flatten()
        if len(sel):
            out[sel] = FAMILIES[name].draw(len(sel), size, g).float()
    out = recolour(out, g)
    out = out + (_u(g, n, 1, 1, 1) * 0.12) * (_u(g, n, 3, size, size) - 0.5)  # fine grain
    return out.clamp(0, 1)
