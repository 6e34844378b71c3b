"""Filter weights against hand-normalized kernels; activation maximization against independent
forward passes, the bundled scenes, stopping, out-of-memory halving and state restoration."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import vizkit.methods.filters as filters
from support import random_image
from vizkit.core.hooks import hook_count
from vizkit.data.scenes import bundled_subset
from vizkit.methods.filters import filter_grid, filter_weights, maximize_activation


def _channel_mean_by_slicing(net: torch.nn.Sequential, upto: int, images: np.ndarray, mean, std):
    """Independent oracle: slice the Sequential, average each channel over positions."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return net[:upto](x).mean((2, 3))


def test_first_layer_kernels_rgb_symmetric(tiny):
    conv = tiny.module.conv1
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 2.0   # red centre, positive
        conv.weight[0, 2, 0, 0] = -1.0  # blue corner, negative
        conv.weight[1, 1, 2, 2] = -0.5
    fw = filter_weights(tiny, "conv1")
    assert fw.rgb and fw.tiles.shape == (4, 3, 3, 3) and fw.tiles.dtype == np.uint8
    assert fw.tiles[0, 1, 1].tolist() == [255, 128, 128]  # +max → 255, zero → mid-grey
    assert fw.tiles[0, 0, 0].tolist() == [128, 128, 64]   # −½ max → 128 − 63.5 → 64
    assert fw.tiles[1, 2, 2, 1] == 1                      # its own max |w| (scale="filter")
    assert (fw.tiles[2:] == 128).all()
    layer = filter_weights(tiny, "conv1", scale="layer")
    assert layer.tiles[1, 2, 2, 1] == 96                  # −0.5 / 2 of the layer's max
    assert np.allclose(fw.weights, conv.weight.detach().numpy())


def test_deeper_kernels_per_input_channel(tiny):
    fw = filter_weights(tiny, "conv2", channels=[5, 1])
    w = tiny.module.conv2.weight.detach().numpy()[[5, 1]]
    assert not fw.rgb and fw.tiles.shape == (2, 4, 3, 3) and fw.channels == (5, 1)
    expected = np.round(128 + 127 * w / np.abs(w).max(axis=(1, 2, 3), keepdims=True))
    assert np.array_equal(fw.tiles, expected.astype(np.uint8))
    grid = filter_grid(fw, zoom=4, pad=1)
    assert grid.shape == (2 * 12 + 1, 4 * 12 + 3, 3)
    assert grid[0, 0, 0] == fw.tiles[0, 0, 0, 0] and grid[13, 0, 0] == fw.tiles[1, 0, 0, 0]


def test_not_a_conv_or_bad_channel(tiny):
    with pytest.raises(ValueError, match="conv1, conv2"):
        filter_weights(tiny, "relu1")
    with pytest.raises(ValueError, match="outside"):
        filter_weights(tiny, "conv1", channels=[4])
    with pytest.raises(ValueError, match="Valid layers"):
        filter_weights(tiny, "nope")


def _tiny_setup(tiny):
    for p in tiny.module.parameters():  # a mixed state, to see it restored exactly
        p.requires_grad_(True)
    tiny.module.conv1.bias.requires_grad_(False)
    return [p.requires_grad for p in tiny.module.parameters()]


def test_maximization_beats_random_images_and_scores_are_honest(tiny):
    flags = _tiny_setup(tiny)
    channels = [0, 5, 4]  # the seeded tiny CNN's channels 1-3 are (almost) silent on [0, 1] inputs
    r = maximize_activation(tiny, "relu2", channels, steps=40, size=16, lr=0.1, batch_size=4,
                            jitter=0, scale=(1.0, 1.0), degrees=0)
    assert r.images.shape == (3, 16, 16, 3) and r.images.dtype == np.uint8
    assert r.channels == tuple(channels) and not r.stopped and r.steps == 40
    spec = tiny.spec
    oracle = _channel_mean_by_slicing(tiny.module, 5, r.images, spec.mean, spec.std)
    own = oracle[torch.arange(3), torch.tensor(channels)].numpy()
    assert np.allclose(r.scores, own, atol=1e-5)
    randoms = np.stack([random_image(16, 16, seed=s) for s in range(64)])
    best_random = _channel_mean_by_slicing(tiny.module, 5, randoms, spec.mean, spec.std)[:, channels].amax(0)
    assert (r.scores > best_random.numpy()).all(), (r.scores, best_random)
    assert [p.requires_grad for p in tiny.module.parameters()] == flags
    assert all(p.grad is None for p in tiny.module.parameters())
    assert hook_count(tiny.module) == 0 and not tiny.module.training


def test_pixel_parameterization_and_tv_regularizer(tiny):
    pixels = dict(steps=30, size=16, lr=0.2, fourier=False, decorrelate=False, jitter=0,
                  scale=(1.0, 1.0), degrees=0)
    plain = maximize_activation(tiny, "relu2", [0], **pixels)
    smooth = maximize_activation(tiny, "relu2", [0], tv=1.0, **pixels)

    def tv(img):
        a = img.astype(np.float64)
        return np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()

    assert tv(smooth.images[0]) < 0.8 * tv(plain.images[0])


def test_redirected_rectifiers_wake_a_silent_channel(tiny):
    # Channel 1 is zero on a grey image: plain gradients are zero there, redirected ones are not.
    woken = maximize_activation(tiny, "relu2", [1], steps=40, size=16, lr=0.1)
    asleep = maximize_activation(tiny, "relu2", [1], steps=40, size=16, lr=0.1, redirect=0)
    assert asleep.scores[0] == 0 and woken.scores[0] > 0


def test_progress_false_stops_with_results_so_far(tiny):
    calls = []

    def progress(step, total):
        calls.append((step, total))
        return step < 3

    r = maximize_activation(tiny, "relu2", [0, 1, 2, 3], steps=10, size=16, progress=progress,
                            batch_size=2)
    assert r.stopped and r.steps == 3 and r.channels == (0, 1) and r.images.shape[0] == 2
    assert calls == [(1, 20), (2, 20), (3, 20)]


def test_progress_exception_restores_model_and_lock(tiny):
    flags = _tiny_setup(tiny)

    def progress(step, total):
        raise KeyboardInterrupt  # what a Streamlit rerun looks like to the loop

    with pytest.raises(KeyboardInterrupt):
        maximize_activation(tiny, "relu2", [0], steps=5, size=16, progress=progress)
    assert [p.requires_grad for p in tiny.module.parameters()] == flags
    assert hook_count(tiny.module) == 0 and all(p.grad is None for p in tiny.module.parameters())
    got = []

    def other_session():
        got.append(tiny.lock.acquire(timeout=2))
        if got[-1]:
            tiny.lock.release()

    t = threading.Thread(target=other_session)
    t.start()
    t.join()
    assert got == [True]


def test_out_of_memory_halves_the_batch(tiny, monkeypatch):
    real = filters._optimize
    sizes = []

    def fake(m, layer, chunk, *args):
        sizes.append(len(chunk))
        if len(chunk) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(m, layer, chunk, *args)

    monkeypatch.setattr(filters, "_optimize", fake)
    r = maximize_activation(tiny, "relu2", [0, 1, 2, 3, 4], steps=2, size=16, batch_size=8)
    assert sizes == [5, 4, 2, 2, 1] and r.batch_size == 2 and r.channels == (0, 1, 2, 3, 4)
    assert hook_count(tiny.module) == 0

    def broken(*args):
        raise RuntimeError("something else")

    monkeypatch.setattr(filters, "_optimize", broken)
    with pytest.raises(RuntimeError, match="something else"):
        maximize_activation(tiny, "relu2", [0], steps=2, size=16)


def test_bad_channel_rejected(tiny):
    with pytest.raises(ValueError, match="outside"):
        maximize_activation(tiny, "relu2", [6], steps=2, size=16)


@pytest.mark.slow
def test_fashion_channels_beat_the_bundled_scenes_fivefold(fashion):
    """Olah et al.'s claim, measured: each optimized image drives its channel ≥ 5× its mean
    activation over the bundled held-out scenes."""
    scenes = bundled_subset()
    spec = fashion.spec
    upto = len(fashion.module.features)  # through relu5
    data_mean = torch.cat([
        _channel_mean_by_slicing(fashion.module.features, upto, scenes.images[i:i + 250], spec.mean, spec.std)
        for i in range(0, len(scenes), 250)
    ]).mean(0)
    order = torch.argsort(data_mean, descending=True)
    channels = [int(order[i]) for i in (0, 10, 40, 80, 160)]  # from the most broadly active down
    r = maximize_activation(fashion, "features.relu5", channels, steps=48, size=64, lr=0.1)
    oracle = _channel_mean_by_slicing(fashion.module.features, upto, r.images, spec.mean, spec.std)
    got = oracle[torch.arange(len(channels)), torch.tensor(channels)]
    assert (got >= 5 * data_mean[channels]).all(), (got / data_mean[channels])
