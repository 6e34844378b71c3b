"""Pictures and figures for the app and the command line: colormaps, overlays, grids, plotly, PNG.

Everything here takes numpy arrays and returns numpy uint8 RGB images, plotly figures or PNG
bytes; nothing imports streamlit or touches a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import plotly.graph_objects as go

from vizkit.core.images import to_png_bytes

COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
    "gray": None,
}
DIVERGING = "coolwarm"


def _coolwarm_lut() -> np.ndarray:
    """A blue-white-red 256-entry lookup table (BGR, 256×1×3) for signed maps, white at zero."""
    t = np.linspace(-1.0, 1.0, 256)
    blue = np.array([59, 76, 192], dtype=np.float64)  # Moreland's cool-warm endpoints
    red = np.array([180, 4, 38], dtype=np.float64)
    white = np.array([242, 242, 242], dtype=np.float64)
    neg = white + (blue - white) * np.clip(-t, 0, 1)[:, None]
    pos = white + (red - white) * np.clip(t, 0, 1)[:, None]
    rgb = np.where((t < 0)[:, None], neg, pos)
    return np.ascontiguousarray(rgb[:, ::-1].round().astype(np.uint8).reshape(256, 1, 3))


_COOLWARM = _coolwarm_lut()


def is_signed(values: np.ndarray, tol: float = 1e-12) -> bool:
    """Whether a map has both clearly negative and clearly positive values."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return False
    scale = max(float(np.abs(finite).max()), tol)
    return float(finite.min()) < -1e-6 * scale and float(finite.max()) > 1e-6 * scale


def normalize_map(values: np.ndarray, signed: bool | None = None) -> np.ndarray:
    """Scales a map to [0, 1] for display.

    Unsigned maps: min-max, ``(v - min) / (max - min)``. Signed maps: ``0.5 + v / (2 max|v|)``,
    so zero stays at the middle of a diverging colormap. A constant map becomes all zeros
    (or all 0.5 when signed). NaN/Inf become the lowest value.

    Args:
        values: any real array.
        signed: force signed/unsigned; ``None`` decides with ``is_signed``.
    """
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, np.nan)
    if signed is None:
        signed = is_signed(v)
    if np.all(np.isnan(v)):
        return np.full(v.shape, 0.5 if signed else 0.0, dtype=np.float32)
    if signed:
        peak = float(np.nanmax(np.abs(v)))
        out = 0.5 + v / (2 * peak) if peak > 0 else np.full(v.shape, 0.5)
        out = np.where(np.isnan(out), 0.5, out)
    else:
        lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
        out = (v - lo) / (hi - lo) if hi > lo else np.zeros(v.shape)
        out = np.where(np.isnan(out), 0.0, out)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def colorize(values: np.ndarray, cmap: str | None = None, signed: bool | None = None) -> np.ndarray:
    """A map as an RGB uint8 image through an OpenCV colormap.

    Args:
        values: H×W real map.
        cmap: a name of ``COLORMAPS`` or ``"coolwarm"``; ``None`` picks ``"coolwarm"`` for signed
            maps and ``"jet"`` otherwise.
        signed: passed to ``normalize_map``.
    """
    v = np.asarray(values)
    if v.ndim != 2:
        raise ValueError(f"colorize needs an H×W map, got shape {v.shape}.")
    if signed is None:
        signed = is_signed(v)
    if cmap is None:
        cmap = DIVERGING if signed else "jet"
    if cmap != DIVERGING and cmap not in COLORMAPS:
        raise ValueError(f"Unknown colormap {cmap!r}. Available: {', '.join([*COLORMAPS, DIVERGING])}.")
    return colorize_gray((normalize_map(v, signed) * 255).round().astype(np.uint8), cmap)


def resize(img: np.ndarray, size: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """Resizes an image or map to ``(height, width)`` (bilinear, or nearest to keep blocks)."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_LINEAR if smooth else cv2.INTER_NEAREST
    return cv2.resize(img, (w, h), interpolation=interp)


def enlarge(img: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Scales a small picture up by an integer factor (nearest) so that it is at least ``min_side``."""
    factor = int(np.ceil(min_side / max(1, min(img.shape[:2]))))
    if factor <= 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def overlay(
    img: np.ndarray,
    values: np.ndarray,
    opacity: float = 0.5,
    cmap: str | None = None,
    smooth: bool = True,
) -> np.ndarray:
    """Blends a colorized map over an RGB image: ``(1 - opacity) * img + opacity * colorize(map)``.

    The map is resized to the image (bilinear, or nearest when ``smooth`` is False, which keeps an
    occlusion grid's blocks visible).
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}.")
    base = as_rgb_uint8(img)
    heat = colorize(resize(np.asarray(values, dtype=np.float32), base.shape[:2], smooth), cmap)
    blended = (1.0 - opacity) * base.astype(np.float32) + opacity * heat.astype(np.float32)
    return np.clip(blended.round(), 0, 255).astype(np.uint8)


def as_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Any H×W, H×W×1 or H×W×3 picture as RGB uint8 (floats in [0, 1] are scaled by 255)."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"Expected an H×W or H×W×3 picture, got shape {a.shape}.")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.dtype == np.uint8:
        return a
    return np.clip(np.nan_to_num(a.astype(np.float64)) * 255, 0, 255).round().astype(np.uint8)


def signed_image(rgb: np.ndarray) -> np.ndarray:
    """An image-space signal (deconvnet, guided backprop: C×H×W or H×W×C, any sign) as uint8 RGB.

    Zeiler & Fergus's display: centre on zero and scale by the largest magnitude,
    ``0.5 + x / (2 max|x|)``, so zero is mid-grey.
    """
    a = np.asarray(rgb, dtype=np.float64)
    if a.ndim == 4:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = np.transpose(a, (1, 2, 0))
    return as_rgb_uint8(normalize_map(a, signed=True))


def tile(images: Sequence[np.ndarray], cols: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tiles same-sized RGB pictures into a grid with ``pad`` pixels of ``fill`` between them."""
    if len(images) == 0:
        raise ValueError("Nothing to tile.")
    pics = [as_rgb_uint8(p) for p in images]
    h = max(p.shape[0] for p in pics)
    w = max(p.shape[1] for p in pics)
    cols = cols or int(np.ceil(np.sqrt(len(pics))))
    rows = int(np.ceil(len(pics) / cols))
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, 3), fill, np.uint8)
    for i, p in enumerate(pics):
        r, c = divmod(i, cols)
        y, x = r * (h + pad), c * (w + pad)
        out[y:y + p.shape[0], x:x + p.shape[1]] = p
    return out


def channel_grid(
    maps: np.ndarray, cols: int | None = None, cmap: str = "viridis", pad: int = 1
) -> np.ndarray:
    """All channels of a C×h×w activation as one picture, each channel normalized on its own.

    The same picture as ``tile([colorize(m, cmap, signed=False) for m in maps], cols, pad)``,
    built with one colormap lookup for the whole mosaic: a live stream redraws a 1280-channel
    layer every frame, which one ``colorize`` call per channel made take most of a second.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"channel_grid needs C×h×w maps, got shape {maps.shape}.")
    if len(maps) == 0:
        raise ValueError("Nothing to tile.")
    c, h, w = maps.shape
    v = maps.astype(np.float64)
    v = np.where(np.isfinite(v), v, np.nan)
    flat = v.reshape(c, -1)
    empty = np.all(np.isnan(flat), axis=1)
    lo = np.where(empty, 0.0, np.nanmin(np.where(empty[:, None], 0.0, flat), axis=1))[:, None, None]
    hi = np.where(empty, 0.0, np.nanmax(np.where(empty[:, None], 0.0, flat), axis=1))[:, None, None]
    span = np.where(hi > lo, hi - lo, 1.0)
    norm = np.where(hi > lo, (v - lo) / span, 0.0)
    gray = (np.clip(np.where(np.isnan(norm), 0.0, norm), 0.0, 1.0) * 255).round().astype(np.uint8)
    cols = cols or int(np.ceil(np.sqrt(c)))
    rows = int(np.ceil(c / cols))
    height, width = rows * (h + pad) - pad, cols * (w + pad) - pad

    def mosaic(cells: np.ndarray) -> np.ndarray:  # rows*cols cells of (h+pad)×(w+pad), cropped
        grid = cells.reshape(rows, cols, h + pad, w + pad).transpose(0, 2, 1, 3)
        return grid.reshape(rows * (h + pad), cols * (w + pad))[:height, :width]

    cells = np.zeros((rows * cols, h + pad, w + pad), np.uint8)
    cells[:c, :h, :w] = gray
    inside = np.zeros(cells.shape, bool)
    inside[:c, :h, :w] = True
    gray, inside = mosaic(cells), mosaic(inside)
    out = colorize_gray(np.ascontiguousarray(gray), cmap)
    out[~inside] = 255
    return out


def colorize_gray(gray: np.ndarray, cmap: str) -> np.ndarray:
    """A uint8 H×W map (already scaled to 0..255) through a colormap of ``COLORMAPS`` or coolwarm."""
    if cmap == DIVERGING:
        bgr = cv2.applyColorMap(gray, _COOLWARM)
    elif cmap not in COLORMAPS:
        raise ValueError(f"Unknown colormap {cmap!r}. Available: {', '.join([*COLORMAPS, DIVERGING])}.")
    elif COLORMAPS[cmap] is None:
        return np.repeat(gray[:, :, None], 3, axis=2)
    else:
        bgr = cv2.applyColorMap(gray, COLORMAPS[cmap])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def draw_box(
    img: np.ndarray,
    box: Sequence[float],
    color: tuple[int, int, int] = (255, 0, 0),
    thickness: int = 1,
) -> np.ndarray:
    """A copy of ``img`` with the rectangle ``box = (x0, y0, x1, y1)`` drawn on it (x1, y1 exclusive).

    The box is clipped to the image; a box partly outside (a receptive field at the border) is
    still drawn where it overlaps.
    """
    out = as_rgb_uint8(img).copy()
    h, w = out.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(w, x1) - 1, min(h, y1) - 1
    if x1 < x0 or y1 < y0:
        return out
    cv2.rectangle(out, (x0, y0), (x1, y1), tuple(int(c) for c in color), int(thickness))
    return out


def to_png(img: np.ndarray) -> bytes:
    """PNG bytes of a picture with no metadata at all (no EXIF, GPS or text chunks)."""
    return to_png_bytes(as_rgb_uint8(img))


# ---------------------------------------------------------------- plotly figures


def topk_figure(predictions: Sequence[tuple[str, float]], title: str = "Top predictions") -> go.Figure:
    """A horizontal bar chart of ``(class_name, probability)`` pairs, the most probable on top."""
    names = [str(n) for n, _ in predictions][::-1]
    probs = [float(p) for _, p in predictions][::-1]
    fig = go.Figure(go.Bar(
        x=probs, y=names, orientation="h", text=[f"{p:.1%}" for p in probs], textposition="auto",
        hovertemplate="%{y}: %{x:.2%}<extra></extra>",
    ))
    fig.update_layout(
        title=title, xaxis=dict(range=[0, 1], tickformat=".0%", title="probability"),
        height=60 + 40 * max(1, len(probs)), margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig


def channel_grid_figure(
    maps: np.ndarray,
    cols: int | None = None,
    channels: Sequence[int] | None = None,
    title: str | None = None,
) -> go.Figure:
    """All channels of a C×h×w activation as one plotly heatmap, hover showing raw values.

    One trace (not one subplot per channel) keeps 512-channel layers fast. Colours are each
    channel min-max normalized; hover shows the channel, the position and the raw activation.
    Clicking a cell selects its channel (``customdata[0]``).
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"channel_grid_figure needs C×h×w maps, got shape {maps.shape}.")
    c, h, w = maps.shape
    channels = list(range(c)) if channels is None else [int(i) for i in channels]
    cols = cols or int(np.ceil(np.sqrt(len(channels))))
    rows = int(np.ceil(len(channels) / cols))
    pad = 1
    height, width = rows * (h + pad) - pad, cols * (w + pad) - pad
    z = np.full((height, width), np.nan, np.float32)
    raw = np.full((height, width), np.nan, np.float32)
    chan = np.full((height, width), -1, np.int32)
    ys = np.full((height, width), -1, np.int32)
    xs = np.full((height, width), -1, np.int32)
    grid_y, grid_x = np.mgrid[0:h, 0:w]
    for i, ch in enumerate(channels):
        r, k = divmod(i, cols)
        y, x = r * (h + pad), k * (w + pad)
        z[y:y + h, x:x + w] = normalize_map(maps[ch], signed=False)
        raw[y:y + h, x:x + w] = maps[ch]
        chan[y:y + h, x:x + w] = ch
        ys[y:y + h, x:x + w] = grid_y
        xs[y:y + h, x:x + w] = grid_x
    custom = np.stack([chan, ys, xs, raw], axis=-1)
    fig = go.Figure(go.Heatmap(
        z=z, customdata=custom, colorscale="Viridis", showscale=False, hoverongaps=False,
        hovertemplate=("channel %{customdata[0]}<br>y=%{customdata[1]}, x=%{customdata[2]}"
                       "<br>activation %{customdata[3]:.4g}<extra></extra>"),
    ))
    fig.update_yaxes(autorange="reversed", visible=False, scaleanchor="x")
    fig.update_xaxes(visible=False)
    fig.update_layout(title=title, margin=dict(l=0, r=0, t=30 if title else 0, b=0),
                      height=min(900, max(250, int(700 * height / max(width, 1)))))
    return fig


def curves_figure(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "",
    xaxis: str = "",
    yaxis: str = "",
    labels: Mapping[str, str] | None = None,
) -> go.Figure:
    """Line curves ``name → (x, y)``; ``labels`` may add text to a curve's legend entry (e.g. its area)."""
    fig = go.Figure()
    for name, (x, y) in curves.items():
        legend = f"{name} {labels[name]}" if labels and name in labels else name
        fig.add_trace(go.Scatter(x=list(map(float, x)), y=list(map(float, y)), mode="lines", name=legend))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis,
                      margin=dict(l=10, r=10, t=40, b=10), height=320)
    return fig


def heatmap_figure(values: np.ndarray, title: str = "", signed: bool | None = None) -> go.Figure:
    """One map as a plotly heatmap with hover values (diverging colours when signed)."""
    v = np.asarray(values, dtype=np.float32)
    signed = is_signed(v) if signed is None else signed
    kwargs = {}
    if signed:
        peak = float(np.nanmax(np.abs(v))) or 1.0
        kwargs = dict(colorscale="RdBu", reversescale=True, zmid=0.0, zmin=-peak, zmax=peak)
    else:
        kwargs = dict(colorscale="Viridis")
    fig = go.Figure(go.Heatmap(z=v, hovertemplate="y=%{y}, x=%{x}<br>%{z:.4g}<extra></extra>", **kwargs))
    fig.update_yaxes(autorange="reversed", scaleanchor="x")
    fig.update_layout(title=title, margin=dict(l=10, r=10, t=40 if title else 10, b=10), height=360)
    return fig


def class_timeline_figure(
    times: Sequence[float], names: Sequence[str], probabilities: Sequence[float], title: str = ""
) -> go.Figure:
    """The top-1 class of each frame over time: one marker per frame, coloured by its probability."""
    fig = go.Figure(go.Scatter(
        x=list(map(float, times)), y=[str(n) for n in names], mode="markers+lines",
        line=dict(width=1, color="lightgrey"),
        marker=dict(size=8, color=list(map(float, probabilities)), colorscale="Viridis", cmin=0, cmax=1,
                    colorbar=dict(title="p", thickness=12)),
        customdata=list(map(float, probabilities)),
        hovertemplate="t=%{x:.2f} s<br>%{y}<br>p=%{customdata:.1%}<extra></extra>",
    ))
    fig.update_layout(title=title, xaxis_title="time (s)", yaxis_title="top-1 class",
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      height=min(600, 160 + 22 * len(set(names))))
    return fig
