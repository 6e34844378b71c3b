"""Background families (vizkit/data/backgrounds.py): each draws varied, in-range canvases, reproducibly;
the held-out family is never drawn for training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vizkit.data import backgrounds as B
from vizkit.data.scenes import make_scenes


def _draw(name: str, n: int = 48, size: int = 64, seed: int = 0) -> torch.Tensor:
    return B.FAMILIES[name].draw(n, size, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(B.FAMILIES))
def test_family_draws_varied_canvases_in_range(name):
    x = _draw(name)
    assert x.shape == (48, 3, 64, 64) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    spread = x.flatten(1).std(1)
    # Not constant: every canvas has some structure (photo crops of a dark sky have little, so the
    # bound per canvas is low), and most have a clear one.
    assert (spread > 0.003).all(), f"{name}: a constant canvas (std {spread.min():.4f})"
    assert (spread > 0.03).float().mean() >= 0.75, f"{name}: mostly flat canvases"
    # Varied: no two canvases of a batch alike, and the batch's pixels span each channel widely.
    flat = x.flatten(1)
    dist = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    assert dist[~torch.eye(len(x), dtype=torch.bool)].min() > 0.01
    assert x.transpose(0, 1).flatten(1).std(1).min() > 0.1


@pytest.mark.parametrize("name", list(B.FAMILIES))
def test_family_is_a_function_of_its_generator(name):
    assert torch.equal(_draw(name, n=6, seed=3), _draw(name, n=6, seed=3))
    assert not torch.equal(_draw(name, n=6, seed=3), _draw(name, n=6, seed=4))


@pytest.mark.parametrize("name", list(B.FAMILIES))
@pytest.mark.parametrize("size", [17, 32, 96])
def test_family_draws_other_sizes(name, size):
    x = _draw(name, n=3, size=size)
    assert x.shape == (3, 3, size, size) and x.min() >= 0 and x.max() <= 1


def test_families_differ_from_one_another():
    """Per-family statistics of a batch (mean gradient energy, mean colourfulness) are not all
    the same: the registry is not one texture under several names."""
    grads = {}
    for name in B.FAMILIES:
        x = _draw(name, n=32)
        grads[name] = float((x[..., 1:, :] - x[..., :-1, :]).abs().mean())
    values = sorted(grads.values())
    assert values[-1] > 4 * values[0], grads


def test_unknown_family_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="choose from: value_noise, gratings"):
        B.check_families(["value_noise", "plaid"])
    with pytest.raises(ValueError, match="none given"):
        B.check_families([])
    with pytest.raises(ValueError, match="plaid"):
        B.training_families("plaid")


def test_training_families_leave_out_the_held_out_one():
    assert B.HELD_OUT in B.FAMILIES
    assert B.HELD_OUT not in B.TRAINING_FAMILIES
    assert set(B.TRAINING_FAMILIES) | {B.HELD_OUT} == set(B.FAMILIES)
    for name in B.FAMILIES:
        assert name not in B.training_families(name)
        assert len(B.training_families(name)) == len(B.FAMILIES) - 1
    assert B.training_families(None) == tuple(B.FAMILIES)


def _spy_families(monkeypatch) -> dict[str, int]:
    """Replaces every family's draw with a flat canvas that counts how many it drew."""
    drawn = {name: 0 for name in B.FAMILIES}
    count = len(B.FAMILIES)
    for i, name in enumerate(B.FAMILIES):
        def draw(n, size, g, name=name, level=i / count):
            drawn[name] += n
            return torch.full((n, 3, size, size), level)
        monkeypatch.setitem(B.FAMILIES, name, B.BackgroundFamily(name, draw, ""))
    return drawn


def test_default_scenes_never_draw_the_held_out_family(monkeypatch):
    drawn = _spy_families(monkeypatch)
    items = np.random.default_rng(0).integers(0, 256, (600, 28, 28), dtype=np.uint8)
    make_scenes(items, np.zeros(600, np.int64), seed=1)
    assert drawn[B.HELD_OUT] == 0
    # Every other family is drawn, about equally often (600 / 10 each).
    others = [drawn[name] for name in B.TRAINING_FAMILIES]
    assert sum(others) == 600 and min(others) >= 30, drawn


def test_scenes_of_one_family_draw_only_that_family(monkeypatch):
    drawn = _spy_families(monkeypatch)
    items = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    make_scenes(items, np.zeros(50, np.int64), seed=1, families=(B.HELD_OUT,))
    assert drawn[B.HELD_OUT] == 50 and sum(drawn.values()) == 50


def test_recolour_changes_about_the_asked_fraction_and_stays_in_range():
    g = torch.Generator().manual_seed(0)
    bg = B.FAMILIES["value_noise"].draw(400, 16, g)
    out = B.recolour(bg, torch.Generator().manual_seed(1), fraction=0.5)
    changed = (out - bg).flatten(1).abs().amax(1) > 1e-6
    assert 0.4 < changed.float().mean() < 0.6
    assert out.min() >= 0 and out.max() <= 1
    # Colour statistics really move: the recoloured canvases' mean colours spread differently.
    assert not torch.allclose(out[changed].mean((0, 2, 3)), bg[changed].mean((0, 2, 3)), atol=1e-3) or \
        not torch.allclose(out[changed].std((0, 2, 3)), bg[changed].std((0, 2, 3)), atol=1e-3)


def test_photo_crop_at_scale_one_is_the_photos_pixels():
    """The crop geometry against plain slicing: unturned, at scale 1, a crop is the photo's pixels
    (mirrored where flipped); turned by 90°, it is the slice rotated."""
    photo = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(0))
    one = torch.ones(1)
    crop = B.crop_photo(photo, 20 * one, 18 * one, 16 * one, 0 * one, one, 16)[0]
    torch.testing.assert_close(crop, photo[:, 10:26, 12:28])
    mirrored = B.crop_photo(photo, 20 * one, 18 * one, 16 * one, 0 * one, -one, 16)[0]
    torch.testing.assert_close(mirrored, photo[:, 10:26, 12:28].flip(-1))
    turned = B.crop_photo(photo, 20 * one, 18 * one, 16 * one, torch.pi / 2 * one, one, 16)[0]
    sliced = photo[:, 10:26, 12:28]
    assert any(torch.allclose(turned, sliced.rot90(k, (1, 2)), atol=1e-5) for k in (1, 3))


def test_photo_crops_come_from_the_shipped_photos():
    pyramid = B._photo_pyramid()
    assert all(len(level) == len(B.PHOTO_FILES) for level in pyramid)
    for level, side in zip(pyramid, B._PHOTO_SIDES, strict=True):
        for photo in level:
            assert photo.shape[0] == 3 and min(photo.shape[1:]) == side
            assert photo.min() >= 0 and photo.max() <= 1
    # Photos, unlike white noise, have strongly correlated neighbouring pixels.
    x = _draw("photos", n=64)
    a, b = x[..., :, 1:], x[..., :, :-1]
    corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
    assert corr > 0.8
