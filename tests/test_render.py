"""vizkit.render against hand-computed values and matplotlib's colormaps (an independent oracle)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from vizkit import render


def png_chunks(data: bytes) -> list[bytes]:
    """Chunk types of a PNG file, parsed by hand."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kinds.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return kinds


def test_normalize_unsigned_is_min_max():
    out = render.normalize_map(np.array([[0.0, 1.0], [2.0, 4.0]]))
    np.testing.assert_allclose(out, [[0, 0.25], [0.5, 1.0]])
    assert out.dtype == np.float32


def test_normalize_signed_keeps_zero_in_the_middle():
    out = render.normalize_map(np.array([-2.0, 0.0, 1.0]))
    np.testing.assert_allclose(out, [0.0, 0.5, 0.75])


def test_normalize_constant_and_nonfinite():
    np.testing.assert_array_equal(render.normalize_map(np.full((3, 3), 7.0)), np.zeros((3, 3)))
    out = render.normalize_map(np.array([np.nan, 1.0, 3.0, np.inf]))
    np.testing.assert_allclose(out, [0.0, 0.0, 1.0, 0.0])


@pytest.mark.parametrize("name", ["viridis", "inferno", "magma"])
def test_colormaps_match_matplotlib(name):
    from matplotlib import colormaps

    ramp = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    ours = render.colorize(ramp, name).astype(int)
    ref = (colormaps[name](ramp)[..., :3] * 255).round().astype(int)
    assert np.abs(ours - ref).max() <= 4


def test_jet_endpoints():
    ours = render.colorize(np.array([[0.0, 1.0]]), "jet")
    np.testing.assert_allclose(ours[0, 0], [0, 0, 128], atol=2)  # dark blue
    np.testing.assert_allclose(ours[0, 1], [128, 0, 0], atol=2)  # dark red


def test_signed_maps_get_a_diverging_colormap():
    rgb = render.colorize(np.array([[-1.0, 0.0, 1.0]]))
    neg, zero, pos = rgb[0].astype(int)
    assert neg[2] > neg[0] + 80  # blue
    assert pos[0] > pos[2] + 80  # red
    assert zero.min() > 200  # near white


def test_unknown_colormap_lists_valid_ones():
    with pytest.raises(ValueError, match="viridis"):
        render.colorize(np.zeros((2, 2)), "nope")


def test_overlay_blends_by_opacity():
    img = np.full((4, 4, 3), 100, np.uint8)
    heat = np.arange(16, dtype=np.float32).reshape(4, 4)
    colored = render.colorize(heat, "jet")
    np.testing.assert_array_equal(render.overlay(img, heat, 0.0, "jet"), img)
    np.testing.assert_array_equal(render.overlay(img, heat, 1.0, "jet"), colored)
    half = render.overlay(img, heat, 0.5, "jet").astype(int)
    assert np.abs(half - (100 + colored.astype(int)) / 2).max() <= 1


def test_overlay_resizes_map_to_image_and_nearest_keeps_blocks():
    img = np.zeros((8, 8, 3), np.uint8)
    out = render.overlay(img, np.array([[0.0, 1.0], [1.0, 0.0]]), 1.0, "gray", smooth=False)
    assert out.shape == (8, 8, 3)
    assert (out[:4, :4] == 0).all() and (out[:4, 4:] == 255).all()
    with pytest.raises(ValueError):
        render.overlay(img, np.zeros((2, 2)), 1.5)


def test_signed_image_centres_zero_on_grey():
    x = np.zeros((3, 2, 2))
    x[0, 0, 0], x[2, 1, 1] = 2.0, -2.0
    out = render.signed_image(x)
    assert out.shape == (2, 2, 3)
    assert out[0, 0, 0] == 255 and out[1, 1, 2] == 0
    assert out[0, 1, 1] in (127, 128)


def test_tile_layout():
    pics = [np.full((2, 3, 3), i * 40, np.uint8) for i in range(5)]
    grid = render.tile(pics, cols=3, pad=1, fill=255)
    assert grid.shape == (2 * 2 + 1, 3 * 3 + 2, 3)
    assert (grid[0:2, 4:7] == 40).all()  # second picture, first row
    assert (grid[3:5, 4:7] == 160).all()  # fifth picture, second row
    assert (grid[2] == 255).all()  # padding row
    assert (grid[3:5, 8:11] == 255).all()  # the empty sixth slot


def test_channel_grid_normalizes_each_channel():
    maps = np.stack([np.eye(3), 10 * np.eye(3)])
    grid = render.channel_grid(maps, cols=2, cmap="gray", pad=1)
    assert grid.shape == (3, 7, 3)
    np.testing.assert_array_equal(grid[:, :3], grid[:, 4:])


def test_draw_box_outline_only():
    img = np.zeros((10, 10, 3), np.uint8)
    out = render.draw_box(img, (2, 3, 7, 8), color=(255, 0, 0))
    assert (out[3, 2:7, 0] == 255).all() and (out[7, 2:7, 0] == 255).all()
    assert (out[3:8, 2, 0] == 255).all() and (out[3:8, 6, 0] == 255).all()
    assert (out[4:7, 3:6] == 0).all()  # inside untouched
    assert out[3, 7, 0] == 0 and out[8, 2, 0] == 0  # x1, y1 exclusive
    assert (img == 0).all()  # input not modified
    clipped = render.draw_box(img, (-5, -5, 3, 3))
    assert clipped[2, 0, 0] == 255 and clipped[0, 2, 0] == 255


def test_png_roundtrip_without_metadata():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = render.to_png(img)
    with Image.open(io.BytesIO(data)) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), img)
        assert "exif" not in im.info
    assert set(png_chunks(data)) <= {b"IHDR", b"IDAT", b"IEND"}


def test_topk_figure_orders_best_on_top():
    fig = render.topk_figure([("cat", 0.7), ("dog", 0.2), ("fox", 0.1)])
    bar = fig.data[0]
    assert list(bar.y) == ["fox", "dog", "cat"]  # plotly draws the last bar on top
    np.testing.assert_allclose(bar.x, [0.1, 0.2, 0.7])


def test_channel_grid_figure_hover_values_are_raw_activations():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(5, 3, 4)).astype(np.float32)
    fig = render.channel_grid_figure(maps, cols=3)
    custom = np.asarray(fig.data[0].customdata)
    # channel 4 sits in row 1, column 1 of the grid: offset (3 + 1, 4 + 1)
    cell = custom[4 + 2, 5 + 3]
    assert int(cell[0]) == 4 and int(cell[1]) == 2 and int(cell[2]) == 3
    assert cell[3] == pytest.approx(maps[4, 2, 3])
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.nanmax(z[4:7, 5:9]) == pytest.approx(1.0) and np.nanmin(z[4:7, 5:9]) == pytest.approx(0.0)
    assert np.isnan(z[3]).all()  # padding


def test_curves_figure_labels():
    fig = render.curves_figure({"cam": ([0, 1], [1, 0])}, labels={"cam": "(AUC 0.50)"})
    assert fig.data[0].name == "cam (AUC 0.50)"
    assert list(fig.data[0].y) == [1.0, 0.0]


@pytest.mark.parametrize("shape", [(37, 5, 7), (1, 4, 4), (6, 1, 1), (64, 3, 3)])
@pytest.mark.parametrize("cmap", ["viridis", "gray", "coolwarm"])
@pytest.mark.parametrize(("cols", "pad"), [(None, 1), (4, 0), (3, 2)])
def test_channel_grid_equals_one_colorize_per_channel(shape, cmap, cols, pad):
    """The one-lookup mosaic is pixel for pixel the per-channel picture (constant and NaN channels too)."""
    rng = np.random.default_rng(shape[0])
    maps = (rng.standard_normal(shape) * 3).astype(np.float32)
    maps[0] = 2.5
    if shape[0] > 2:
        maps[1, 0, 0] = np.nan
        maps[2] = np.nan
    want = render.tile([render.colorize(m, cmap, signed=False) for m in maps], cols=cols, pad=pad)
    got = render.channel_grid(maps, cols=cols, cmap=cmap, pad=pad)
    assert got.shape == want.shape and np.array_equal(got, want)
