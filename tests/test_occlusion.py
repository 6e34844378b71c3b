"""Occlusion (vizkit/methods/occlusion/sensitivity.py): captum's ``Occlusion`` as the oracle, the
run description, approximate mode, hook hygiene, OOM retry, stop, the CLI. The incremental engine's
own tests (exact equals full inference) are in tests/test_incremental.py."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import Occlusion
from torch import nn

import vizkit.methods.occlusion.incremental as incremental
import vizkit.methods.occlusion.int8 as int8
import vizkit.methods.occlusion.sensitivity as sensitivity
from support import TINY_SPEC, random_image, zoo_model
from vizkit.core.hooks import hook_count
from vizkit.methods.occlusion.int8 import choose_arithmetic
from vizkit.methods.occlusion.sensitivity import approximation_summary, baseline_value, occlusion, patch_grid
from vizkit.models.base import LoadedModel
from vizkit.models.registry import wrap_module


@pytest.fixture
def eight_bit(monkeypatch):
    """Approximate mode in 8 bits wherever this CPU's products are exact (7-bit weights without
    VNNI), whether or not 8 bits pay here: their accuracy is what is tested."""
    monkeypatch.setattr(sensitivity, "ARITHMETIC", "8-bit")


def resized(m: LoadedModel, size: int) -> LoadedModel:
    """The same module seen at another input size (the shared fixture is left alone)."""
    return LoadedModel(module=m.module, spec=dataclasses.replace(m.spec, input_size=size),
                       device=m.device)


def captum_occlusion(m, img, target, patch, stride, baseline, score="probability"):
    """Captum's map with a forward returning the target's softmax probability (or a logit)."""
    x = m.preprocess(img)

    def forward(batch):
        logits = m.module(batch)
        return torch.softmax(logits, 1)[:, target] if score == "probability" else logits[:, target]

    with torch.no_grad():
        attr = Occlusion(forward).attribute(
            x, sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride),
            baselines=baseline_value(m, baseline).expand_as(x), perturbations_per_eval=16)
    return attr[0, 0].numpy()


def assert_close_map(ours: np.ndarray, reference: np.ndarray, rel: float = 1e-4, clean: float = 0.0):
    """max |ours - reference| <= rel * max |reference|, plus float32 rounding of the clean score
    the drops are taken from (a drop of 0.01 from a logit of 50 has only 3 exact digits)."""
    scale = np.abs(reference).max()
    assert scale > 0, "the reference map is all zero: the comparison could not fail"
    bound = rel * scale + 8 * np.finfo(np.float32).eps * abs(clean)
    assert np.abs(ours - reference).max() <= bound, np.abs(ours - reference).max() / scale


class AllOps(nn.Module):
    """Every op the incremental path handles: strided/dilated conv, BN, ReLU6, ceil-mode
    max-pool, concat, sigmoid, residual add with in-place ReLU, avg-pool, and a mean head
    that has to run in full."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU6(inplace=True)
        self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.b1 = nn.Conv2d(6, 4, 1)
        self.b2 = nn.Conv2d(6, 4, 3, padding=2, dilation=2)
        self.res = nn.Conv2d(8, 8, 3, padding=1)
        self.avg = nn.AvgPool2d(3, 1, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.stem(x))))
        x = torch.cat([F.relu(self.b1(x)), torch.sigmoid(self.b2(x))], 1)
        x = x + F.relu(self.res(x), inplace=True)
        x = F.relu(self.down(self.avg(x)))
        return self.head(x.mean((2, 3)))


def all_ops_model(size: int) -> LoadedModel:
    torch.manual_seed(1)
    net = AllOps()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.2, 0.2)
    spec = dataclasses.replace(TINY_SPEC, name="all-ops", input_size=size, cam_layer="down")
    return wrap_module(net, spec, device="cpu")


def state_of(module: nn.Module) -> list:
    return [(n, s.training, getattr(s, "inplace", None)) for n, s in module.named_modules()] + [
        (n, p.requires_grad, p.grad is None) for n, p in module.named_parameters()]


# ---------------------------------------------------------------------------- captum as oracle
@pytest.mark.parametrize("mode", ["full", "exact"])
def test_tiny_matches_captum(tiny, mode):
    img = random_image(16, 16, seed=3)
    ours = occlusion(tiny, img, target=1, patch=4, stride=2, baseline="grey", mode=mode)
    assert_close_map(ours.map, captum_occlusion(tiny, img, 1, 4, 2, "grey"))
    assert ours.map.shape == (16, 16) and ours.map.dtype == np.float32


def test_callable_target_matches_captum_logit(tiny):
    img = random_image(16, 16, seed=4)
    ours = occlusion(tiny, img, target=lambda logits: logits[:, 2], patch=5, stride=3,
                     baseline=(0.2, 0.9, 0.1))
    assert ours.info["score"] == "callable" and ours.target is None
    assert_close_map(ours.map, captum_occlusion(tiny, img, 2, 5, 3, (0.2, 0.9, 0.1), "logit"))


@pytest.mark.parametrize("mode", ["full", "exact"])
def test_fashion_zf_matches_captum(mode):
    m = zoo_model("fashion-zf")
    img = random_image(64, 64, seed=5)
    ours = occlusion(m, img, target=lambda logits: logits[:, 3], patch=16, stride=8, mode=mode)
    assert_close_map(ours.map, captum_occlusion(m, img, 3, 16, 8, "mean", "logit"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vgg16", "alexnet"])
def test_zoo_matches_captum_small_input(name):
    m = resized(zoo_model(name), 64)
    img = random_image(64, 64, seed=6)
    ours = occlusion(m, img, target=lambda logits: logits[:, 7], patch=16, stride=12, mode="exact")
    assert_close_map(ours.map, captum_occlusion(m, img, 7, 16, 12, "mean", "logit"),
                     clean=ours.info["clean_probability"])


@pytest.mark.slow
def test_googlenet_feature_drop_matches_captum():
    """Seeded GoogLeNet's logits barely depend on the image; its inception4a features do.
    Captum's oracle forward: the total of one channel, via torchvision's feature extractor."""
    from torchvision.models.feature_extraction import create_feature_extractor

    m = resized(zoo_model("googlenet"), 96)
    img = random_image(96, 96, seed=6)
    ours = occlusion(m, img, patch=16, stride=10, layer="inception4a")
    channel = ours.info["channel"]
    extractor = create_feature_extractor(m.module, {"inception4a": "f"})
    x = m.preprocess(img)
    with torch.no_grad():
        attr = Occlusion(lambda b: extractor(b)["f"][:, channel].sum((1, 2))).attribute(
            x, sliding_window_shapes=(3, 16, 16), strides=(3, 10, 10),
            baselines=baseline_value(m, "mean").expand_as(x), perturbations_per_eval=16)
    assert_close_map(ours.info["feature_map"], attr[0, 0].numpy(), clean=ours.info["feature_clean"])


# ---------------------------------------------------------------------------- approximate vs exact
@pytest.mark.slow
def test_approximate_stays_close_on_registry_model(registry_model, eight_bit):
    """Every registry model in approximate mode (8-bit changes) at 96 px: the drop grid and a deep
    feature's drop stay within a few percent of exact (measured: RMS at most 2.4% of the span,
    the largest error 7%; EfficientNet-Lite0 RMS 1.7%, largest 5.4%, with 7-bit weights 2.3% and
    8.2%. With one scale per position for its 1×1 convolutions too, Lite0 reached 10.3% and
    11.4%; never going full through its float32 depthwise layers, 12.6%, and failed)."""
    m = resized(registry_model, 96)
    img = random_image(96, 96, seed=2)
    kwargs = dict(target=lambda logits: logits[:, :10].sum(1), patch=20, stride=12,
                  layer=m.spec.cam_layer)
    exact = occlusion(m, img, **kwargs)
    approx = occlusion(m, img, mode="approximate", **kwargs)
    assert approx.info["quantized"] is True and approx.info["nodes"]["incremental"] > 0
    pairs = [(approx.info["feature_map"], exact.info["feature_map"])]
    if np.ptp(exact.raw.numpy()) > 0:  # seeded GoogLeNet's logits do not move at all
        pairs.append((approx.raw.numpy(), exact.raw.numpy()))
    for ours, reference in pairs:
        span = np.ptp(reference)
        assert np.sqrt(np.mean((ours - reference) ** 2)) <= 0.04 * span
        assert np.abs(ours - reference).max() <= 0.12 * span


# ---------------------------------------------------------------------------- info, layer, box
def test_info_box_and_probability_grid(tiny):
    img = random_image(16, 16, seed=7)
    ours = occlusion(tiny, img, patch=6, stride=4)
    grid = patch_grid(16, 6, 4)
    assert grid.ys.tolist() == [0, 4, 8, 12]  # the last patch is clipped at the border
    assert grid.box(3, 3) == (12, 12, 16, 16)
    probs = ours.info["probability_grid"]
    assert probs.shape == (4, 4) and ours.raw.shape == (4, 4)
    with torch.no_grad():
        logits = tiny.module(tiny.preprocess(img))
    assert ours.target == int(logits.argmax())
    iy, ix = np.unravel_index(np.argmin(probs), probs.shape)
    assert ours.info["box"] == grid.box(iy, ix)
    # Hand oracle for one position: occlude by hand, run the module.
    x = tiny.preprocess(img).clone()
    x[:, :, 4:10, 8:14] = baseline_value(tiny, "mean")[0]
    with torch.no_grad():
        p = torch.softmax(tiny.module(x), 1)[0, ours.target]
    assert abs(float(p) - probs[1, 2]) < 1e-6
    assert ours.info["approximate"] is False and ours.info["complete"] is True


def test_speedup_over_full_is_timed_on_a_few_plain_forward_passes(tiny, monkeypatch):
    from vizkit.methods.occlusion.sensitivity import FULL_PROBE

    calls = []
    forward = type(tiny.module).forward

    def counted(self, x):
        if isinstance(x, torch.Tensor):  # not torch.fx's tracing proxy
            calls.append(x.shape[0])
        return forward(self, x)

    monkeypatch.setattr(type(tiny.module), "forward", counted)
    img = random_image(16, 16, seed=3)
    assert "speedup_over_full" not in occlusion(tiny, img, patch=4, stride=2).info  # not asked
    assert calls == []
    exact = occlusion(tiny, img, patch=4, stride=2, time_full=True)  # 7×7 = 49 positions
    # The incremental engine never calls forward; the estimate runs FULL_PROBE positions at once.
    assert calls[-1] == FULL_PROBE
    timings = exact.info["timings"]
    assert timings["full_estimate_s"] > 0
    speedup = timings["full_estimate_s"] / timings["positions_s"]
    assert exact.info["speedup_over_full"] == pytest.approx(speedup)
    calls.clear()
    full = occlusion(tiny, img, patch=4, stride=2, mode="full", time_full=True)
    assert "speedup_over_full" not in full.info and "full_estimate_s" not in full.info["timings"]
    assert sum(calls) == 49 + 1  # every position and the clean image; no probe


def test_layer_channel_feature_drop_matches_hand_oracle(tiny):
    img = random_image(16, 16, seed=8)
    ours = occlusion(tiny, img, target=0, patch=8, stride=4, layer="relu1")
    x = tiny.preprocess(img)
    with torch.no_grad():
        clean = F.relu(tiny.module.conv1(x))[0]
    assert ours.info["channel"] == int(clean.flatten(1).amax(1).argmax())
    ch = ours.info["channel"]
    occluded = x.clone()
    occluded[:, :, 4:12, 8:16] = baseline_value(tiny, "mean")[0]
    with torch.no_grad():
        total = F.relu(tiny.module.conv1(occluded))[0, ch].sum()
    assert abs(float(total) - ours.info["feature_grid"][1, 2]) < 1e-4
    assert ours.info["feature_map"].shape == (16, 16) and ours.layer == "relu1"
    with pytest.raises(ValueError, match="Valid layers"):
        occlusion(tiny, img, layer="nope")
    with pytest.raises(ValueError, match="outside layer"):
        occlusion(tiny, img, layer="relu1", channel=99)


@pytest.mark.parametrize("baseline", ["mean", "grey", "zero", 0.3, (1.0, 0.0, 0.5), (255, 0, 128)])
def test_baselines(tiny, baseline):
    value = baseline_value(tiny, baseline)  # tiny: mean 0, std 1, so normalized = RGB in [0, 1]
    named = {"mean": (0, 0, 0), "grey": (0.5,) * 3, "zero": (0, 0, 0), 0.3: (0.3,) * 3}
    expected = named[baseline] if baseline in named else (
        np.asarray(baseline) / (255 if max(baseline) > 1 else 1))
    assert np.allclose(value.flatten().numpy(), expected, atol=1e-6)


def test_bad_arguments(tiny):
    img = random_image(16, 16)
    for kwargs in [dict(baseline="purple"), dict(mode="fast"), dict(patch=0), dict(patch=32),
                   dict(patch=4, stride=5), dict(batch_size=0), dict(baseline=-1.0)]:
        with pytest.raises(ValueError):
            occlusion(tiny, img, **kwargs)


# ---------------------------------------------------------------------------- reliability
def test_bad_target_rejected_before_any_forward(tiny, monkeypatch):
    before = state_of(tiny.module)

    def no_forward(*_):
        raise AssertionError("preprocess/forward ran before the target was checked")

    monkeypatch.setattr(tiny, "preprocess", no_forward)
    with pytest.raises(ValueError, match="outside"):
        occlusion(tiny, random_image(16, 16), target=3)
    assert hook_count(tiny.module) == 0 and state_of(tiny.module) == before


@pytest.mark.parametrize("mode", ["exact", "full", "approximate"])
def test_hooks_and_flags_restored_after_success_and_error(mode, monkeypatch):
    m = all_ops_model(24)
    before = state_of(m.module)
    occlusion(m, random_image(24, 24), patch=6, stride=4, mode=mode, layer="res")
    assert hook_count(m.module) == 0 and state_of(m.module) == before

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(incremental.IncrementalOcclusion, "run_batch", broken)
    monkeypatch.setattr(m.module.head, "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        occlusion(m, random_image(24, 24), target=0, patch=6, stride=4, mode=mode)
    assert hook_count(m.module) == 0 and state_of(m.module) == before
    acquired = []

    def other_session():
        acquired.append(m.lock.acquire(timeout=5))
        m.lock.release()

    worker = threading.Thread(target=other_session)
    worker.start()
    worker.join()
    assert acquired == [True]  # the lock was released


@pytest.mark.parametrize("mode", ["exact", "full"])
def test_out_of_memory_halves_batch_and_stays_exact(mode, monkeypatch):
    m = all_ops_model(24)
    img = random_image(24, 24, seed=4)
    logit = lambda logits: logits[:, 1]
    reference = occlusion(m, img, logit, patch=6, stride=4, mode=mode, batch_size=64)
    name = "run_batch" if mode == "exact" else "occluded_inputs"
    owner = incremental.IncrementalOcclusion if mode == "exact" else sensitivity._Evaluator
    original = getattr(owner, name)
    calls = {"oom": 0}

    def flaky(self, *args, **kwargs):
        if len(args[-2 if mode == "exact" else -1]) > 4:
            calls["oom"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)
    ours = occlusion(m, img, logit, patch=6, stride=4, mode=mode, batch_size=64)
    assert calls["oom"] > 0 and ours.info["out_of_memory_retries"] > 0
    assert ours.info["batch_size"] <= 4
    assert_close_map(ours.map, reference.map, clean=reference.info["clean_probability"])


def test_progress_reports_and_stops(tiny):
    img = random_image(16, 16)
    seen = []
    full = occlusion(tiny, img, patch=4, stride=2, batch_size=7, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (49, 49) and len(seen) == 7
    stopped = occlusion(tiny, img, patch=4, stride=2, batch_size=7, progress=lambda d, t: d < 14)
    assert stopped.info["complete"] is False and stopped.info["stopped"] is True
    assert stopped.info["evaluated"] == 14 and np.isnan(stopped.info["probability_grid"]).sum() == 35
    evaluated = ~np.isnan(stopped.info["probability_grid"])
    assert np.allclose(stopped.info["probability_grid"][evaluated],
                       full.info["probability_grid"][evaluated], atol=1e-7)


def test_stopping_approximate_mode_interpolates_nothing():
    """A stopped drill-down keeps what it evaluated, NaN elsewhere, and claims no interpolation."""
    m, img, logit = smooth_case(40)
    stopped = occlusion(m, img, logit, patch=6, stride=2, mode="approximate",
                        progress=lambda done, total: done < 20)
    info = stopped.info
    assert info["complete"] is False and info["interpolated"] == 0
    grid = info["probability_grid"]
    assert 20 <= info["evaluated"] == int((~np.isnan(grid)).sum()) < info["total_positions"]
    assert approximation_summary(info) == (f"{info['arithmetic']} arithmetic on the changes "
                                           f"({info['arithmetic_reason']})")


def test_concurrent_calls_match_serial():
    m = all_ops_model(24)
    img = random_image(24, 24, seed=11)
    logit = lambda logits: logits[:, 0]
    serial = occlusion(m, img, logit, patch=6, stride=3).map
    results = [None] * 4

    def work(i):
        results[i] = occlusion(m, img, logit, patch=6, stride=3,
                               mode="exact" if i % 2 else "full").map

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert_close_map(r, serial)


# ---------------------------------------------------------------------------- approximate, CLI
class Smooth(nn.Module):
    """A shallow net whose occlusion map, on a colour ramp, is close to a plane."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))


def smooth_case(size: int = 48):
    torch.manual_seed(3)
    net = Smooth()
    with torch.no_grad():
        net.conv.bias.fill_(2.0)  # every unit stays active: the net is linear near the image
    m = wrap_module(net, dataclasses.replace(TINY_SPEC, name="smooth", input_size=size),
                    device="cpu")
    ramp = np.linspace(40, 220, size)
    img = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)),
                    np.tile(ramp[:, None], (1, size))], -1).astype(np.uint8)
    return m, img, (lambda logits: logits[:, 0])


def test_drill_down_interpolates_a_smooth_map():
    m, img, logit = smooth_case()
    exact = occlusion(m, img, logit, patch=8, stride=2)
    approx = occlusion(m, img, logit, patch=8, stride=2, mode="approximate")
    info = approx.info
    assert info["approximate"] is True and info["mode"] == "approximate" and info["drill_down"]
    assert info["interpolation_error"] <= 0.015
    assert info["evaluated"] < 0.5 * info["total_positions"]
    assert info["interpolated"] == info["total_positions"] - info["evaluated"] > 0
    assert not np.isnan(info["probability_grid"]).any()
    span = np.ptp(exact.raw.numpy())
    assert np.abs(approx.raw.numpy() - exact.raw.numpy()).max() <= 0.05 * span


def test_drill_down_evaluates_everything_when_the_map_is_speckle(eight_bit):
    """A random net on a random image: interpolating fails its own check, so every position is
    evaluated (in 8 bits: close to exact, not equal)."""
    m = all_ops_model(48)
    img = random_image(48, 48, seed=21)
    logit = lambda logits: logits[:, 0]
    exact = occlusion(m, img, logit, patch=8, stride=2)
    approx = occlusion(m, img, logit, patch=8, stride=2, mode="approximate")
    assert approx.info["drill_down"] and approx.info["interpolation_error"] > 0.015
    assert approx.info["evaluated"] == approx.info["total_positions"]
    assert approx.info["interpolated"] == 0
    raw, ref = approx.raw.numpy(), exact.raw.numpy()
    assert np.abs(raw - ref).max() <= 0.05 * np.ptp(ref)


def test_drill_down_evaluates_exact_values_where_it_looks(monkeypatch):
    """Without projective-field thresholding and 8 bits, every evaluated position is exact."""

    monkeypatch.setattr(sensitivity, "CAP_FRACTION", None)
    monkeypatch.setattr(sensitivity, "ARITHMETIC", "float32")
    m, img, logit = smooth_case(40)
    exact = occlusion(m, img, logit, patch=6, stride=2)
    seen = []
    approx = occlusion(m, img, logit, patch=6, stride=2, mode="approximate",
                       progress=lambda d, t: seen.append((d, t)))
    assert approx.info["quantized"] is False and approx.info["interpolated"] > 0
    assert seen[-1][0] == seen[-1][1] == approx.info["evaluated"]
    grid = patch_grid(40, 6, 2)
    coarse = [i for i in range(grid.shape[0]) if i % 2 == 0 or i == grid.shape[0] - 1]
    ours, reference = approx.info["probability_grid"], exact.info["probability_grid"]
    assert np.allclose(ours[np.ix_(coarse, coarse)], reference[np.ix_(coarse, coarse)], atol=1e-5)
    same = np.isclose(ours, reference, atol=1e-5).sum()
    assert same >= approx.info["evaluated"]


@pytest.mark.slow
def test_approximate_is_close_to_exact_on_a_zoo_model(eight_bit):
    """8-bit changes on VGG16 at 96 px (no drill-down on a 9×9 grid): errors a few percent of
    the map's span, the picture the same (SSIM), and measurably not the float32 path."""
    from skimage.metrics import structural_similarity

    m = resized(zoo_model("vgg16"), 96)
    img = random_image(96, 96, seed=8)
    kwargs = dict(target=lambda logits: logits[:, 3], patch=16, stride=10)
    exact = occlusion(m, img, **kwargs)
    approx = occlusion(m, img, mode="approximate", **kwargs)
    assert approx.info["quantized"] is True and not approx.info["drill_down"]
    raw, ref = approx.raw.numpy(), exact.raw.numpy()
    span = np.ptp(ref)
    assert 0 < np.abs(raw - ref).max() <= 0.1 * span  # measured 0.057
    assert np.sqrt(np.mean((raw - ref) ** 2)) <= 0.03 * span
    assert structural_similarity(approx.map, exact.map, data_range=np.ptp(exact.map)) >= 0.9


def test_approximate_mode_says_which_arithmetic_it_used():
    """Approximate mode runs what choose_arithmetic picked for this CPU and says so; in float32
    (CPUs where 8 bits are not exact or do not pay) every evaluated position is exact mode's."""
    chosen = choose_arithmetic(torch.device("cpu"))
    m = all_ops_model(40)
    img = random_image(40, 40, seed=5)
    logit = lambda logits: logits[:, 1]
    exact = occlusion(m, img, logit, patch=6, stride=2)
    approx = occlusion(m, img, logit, patch=6, stride=2, mode="approximate")
    info = approx.info
    assert (info["arithmetic"], info["arithmetic_reason"]) == (chosen.name, chosen.reason)
    assert info["quantized"] == (chosen.name == "8-bit")
    assert f"{chosen.name} arithmetic on the changes ({chosen.reason})" in approximation_summary(info)
    assert exact.info["arithmetic"] == "float32" and approximation_summary(exact.info) is None
    ours, reference = info["probability_grid"], exact.info["probability_grid"]
    evaluated = ~np.isnan(ours)
    assert evaluated.any()
    if chosen.name == "float32":
        assert np.allclose(ours[evaluated], reference[evaluated], rtol=1e-5, atol=1e-6)
    else:
        span = np.ptp(reference)
        assert 0 < np.abs(ours - reference)[evaluated].max() <= 0.05 * span


@pytest.mark.skipif(not int8.available(torch.device("cpu")), reason="no oneDNN 8-bit kernels")
def test_8_bit_goes_full_as_exact_mode_does_unless_it_is_fast(monkeypatch):
    """Where 8 bits run under NEVER_FULL_SPEEDUP× float32 (7-bit weights on AVX2: ResNet18 lost
    time otherwise), a change covering most of its map goes full as in exact mode; faster, every
    layer stays on the change. Both stay close to exact."""
    m = all_ops_model(40)
    img = random_image(40, 40, seed=5)
    logit = lambda logits: logits[:, 1]
    exact = occlusion(m, img, logit, patch=6, stride=2)
    full_nodes = {}
    for never_full in (True, False):
        chosen = int8.Arithmetic("8-bit", "measured", int8.exact_weight_levels(), 1.6, never_full)
        monkeypatch.setattr(sensitivity, "choose_arithmetic", lambda device, prefer, c=chosen: c)
        approx = occlusion(m, img, logit, patch=6, stride=2, mode="approximate")
        assert approx.info["arithmetic"] == "8-bit" and approx.info["arithmetic_reason"] == "measured"
        full_nodes[never_full] = approx.info["nodes"]["full"]
        ours, reference = approx.info["probability_grid"], exact.info["probability_grid"]
        evaluated = ~np.isnan(ours)
        assert np.abs(ours - reference)[evaluated].max() <= 0.05 * np.ptp(reference)
    assert full_nodes[False] > full_nodes[True]


@pytest.mark.skipif(not int8.available(torch.device("cpu")), reason="no oneDNN 8-bit kernels")
def test_8_bit_goes_full_where_a_depthwise_convolution_follows(eight_bit):
    """A depthwise layer (left to float32) would see whole-map changes if nothing went full
    (EfficientNet-Lite0: 3.8× slower than exact): there 8 bits go full as exact mode does."""

    def net(depthwise: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1, groups=16 if depthwise else 1),
                             nn.ReLU(), nn.Conv2d(16, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, 3))

    img = random_image(24, 24, seed=6)
    spec = dataclasses.replace(TINY_SPEC, name="depthwise", input_size=24)
    logit = lambda logits: logits[:, 0]
    for depthwise in (True, False):
        m = wrap_module(net(depthwise), spec, device="cpu")
        inc = incremental.IncrementalOcclusion(m.module, m.preprocess(img), quantized=True)
        assert (inc.full_fraction == incremental.FULL_FRACTION) is depthwise
        exact = occlusion(m, img, logit, patch=16, stride=4)  # boxes past FULL_FRACTION
        approx = occlusion(m, img, logit, patch=16, stride=4, mode="approximate")
        assert approx.info["arithmetic"] == "8-bit" and exact.info["nodes"]["full"] > 0
        assert (approx.info["nodes"]["full"] > 0) is depthwise
        span = np.ptp(exact.raw.numpy())
        assert np.abs(approx.raw.numpy() - exact.raw.numpy()).max() <= 0.05 * span


def test_approximate_without_8_bit_kernels_runs_in_float(monkeypatch):
    """Where oneDNN's quantized kernels are missing, approximate mode still runs (float32)."""
    monkeypatch.setattr(incremental, "available", lambda device: False)
    monkeypatch.setattr(sensitivity, "ARITHMETIC", "8-bit")  # asked for, yet not there
    m = all_ops_model(32)
    img = random_image(32, 32, seed=4)
    logit = lambda logits: logits[:, 1]
    approx = occlusion(m, img, logit, patch=6, stride=3, mode="approximate")
    assert approx.info["quantized"] is False and approx.info["approximate"] is True
    assert approx.info["arithmetic"] == "float32" and "not available" in approx.info["arithmetic_reason"]
    assert not np.isnan(approx.map).any()
    monkeypatch.setattr(int8, "available", lambda device: False)  # what choose_arithmetic asks
    monkeypatch.setattr(sensitivity, "ARITHMETIC", "auto")
    approx = occlusion(m, img, logit, patch=6, stride=3, mode="approximate")
    assert approx.info["arithmetic"] == "float32" and "lacks" in approx.info["arithmetic_reason"]


def test_interpolation_uses_every_known_cell_and_reproduces_a_plane():
    """Piecewise-linear over all known cells: exact for a plane, whatever cells are known.

    Known: a coarse lattice (every other cell, and the last) plus a few cells off it, the way
    drill-down leaves them. Filling row by row from whatever a row holds is not exact here.
    """
    from vizkit.methods.occlusion.sensitivity import _interpolate

    yy, xx = np.mgrid[0:15, 0:15].astype(float)
    plane = 0.3 * yy - 0.7 * xx + 2.0
    known = np.zeros(plane.shape, bool)
    lattice = [*range(0, 15, 2)]
    known[np.ix_(lattice, lattice)] = True
    known[[1, 5, 9, 13], [3, 7, 2, 11]] = True  # refined cells on odd rows
    values = np.where(known, plane, np.nan)
    filled = _interpolate(values, known)
    assert np.allclose(filled, plane, atol=1e-9)
    assert np.array_equal(filled[known], plane[known])
    # Collinear known cells: no triangulation, the nearest known value.
    line = np.full((3, 3), np.nan)
    line[1] = [1.0, 2.0, 3.0]
    assert np.array_equal(_interpolate(line, ~np.isnan(line)), np.array([[1.0, 2.0, 3.0]] * 3))


def test_drill_down_check_is_bilinear_on_the_coarse_lattice():
    """The check predicts each sampled cell from the coarse lattice alone: exact for a plane and
    for a saddle ``x·y`` (bilinear), a lattice cell keeps its value, an off-lattice cell's own
    value is never read (NaN there changes nothing)."""
    from vizkit.methods.occlusion.sensitivity import _bilinear

    yy, xx = np.mgrid[0:13, 0:13].astype(float)
    ys = xs = [*range(0, 13, 2)]
    for surface in (0.3 * yy - 0.7 * xx + 2.0, 0.05 * yy * xx):
        holes = surface.copy()
        holes[1::2, :] = np.nan
        holes[:, 1::2] = np.nan
        assert np.allclose(_bilinear(holes, ys, xs), surface, atol=1e-12)
    bumpy = np.zeros((5, 5))
    bumpy[2, 2] = 1.0  # a lattice cell
    predicted = _bilinear(bumpy, [0, 2, 4], [0, 2, 4])
    assert predicted[2, 2] == 1.0 and predicted[1, 1] == 0.25 and predicted[1, 2] == 0.5


def test_approximate_map_looks_like_the_exact_one_on_the_trained_model(fashion, eight_bit):
    """SSIM of approximate vs exact, on the trained bundled model (its maps have structure)."""
    from skimage.metrics import structural_similarity

    from vizkit.data.scenes import bundled_subset

    scenes = bundled_subset()
    scores = []
    for image in scenes.images[:6]:
        exact = occlusion(fashion, image, None, patch=8, stride=2)
        approx = occlusion(fashion, image, None, patch=8, stride=2, mode="approximate")
        info = approx.info
        assert info["drill_down"] and info["quantized"]
        # Interpolated only where the check passed.
        assert info["interpolated"] == 0 or info["interpolation_error"] <= 0.015
        span = float(exact.map.max() - exact.map.min())
        scores.append(structural_similarity(approx.map, exact.map, data_range=span))
    # Measured over the first 20 scenes: mean 0.9995, min 0.998 (interpolation's check fails
    # on all 20 at stride 2, so every position is evaluated, in 8 bits).
    assert np.mean(scores) >= 0.98 and min(scores) >= 0.95, scores


def test_cli_writes_png(tmp_path):
    from PIL import Image

    from vizkit.cli import main

    src = tmp_path / "in.png"
    Image.fromarray(random_image(48, 40)).save(src)
    out = tmp_path / "out.png"
    assert main(["occlusion", str(src), "--model", "fashion-zf", "--weights", "none",
                 "--out", str(out), "--patch", "16", "--stride", "16", "--baseline", "0.5"]) == 0
    with Image.open(out) as im:
        assert im.size == (64, 64)


def test_cli_says_how_an_approximate_map_was_made(tmp_path, capsys):
    from PIL import Image

    from vizkit.cli import main

    src = tmp_path / "in.png"
    Image.fromarray(random_image(64, 64, seed=3)).save(src)
    out = tmp_path / "out.png"
    assert main(["occlusion", str(src), "--model", "fashion-zf", "--out", str(out), "--patch", "8",
                 "--stride", "4", "--mode", "approximate"]) == 0
    printed = capsys.readouterr().out
    chosen = choose_arithmetic(torch.device("cpu"))  # probed once per process: the CLI's too
    assert f"approximate: {chosen.name} arithmetic on the changes ({chosen.reason})" in printed
    assert ("interpolated (checked error" in printed) != ("every position evaluated" in printed)



def test_default_patch_batches_well_on_lite0():
    """The page's defaults are powers of two: on EfficientNet-Lite0 (total stride 32) at 224 px
    the positions fall into 4 classes modulo the network's stride, batched together; the
    earlier default (patch 28, stride 14) put each of its 15 × 15 positions in a batch of its own."""
    from vizkit.methods.occlusion.sensitivity import default_patch, default_stride

    m = zoo_model("efficientnet_lite0")
    inc = incremental.IncrementalOcclusion(m.module, m.preprocess(random_image(224, 224)))
    assert inc.total_stride == 32

    def classes(patch: int, stride: int) -> int:
        grid = patch_grid(224, patch, stride)
        period = inc.total_stride // np.gcd(stride, inc.total_stride)
        return len({(int(y) // stride % period, int(x) // stride % period)
                    for y in grid.ys for x in grid.xs})

    assert default_patch(224) == (32, 16) and classes(32, 16) == 4
    assert classes(28, 14) == 225  # 15 × 15 positions, one per class
    assert default_patch(64) == (8, 4)  # the bundled model keeps its defaults
    for size in (16, 32, 64, 96, 224, 240, 260, 512):
        patch, stride = default_patch(size)
        assert patch & (patch - 1) == 0 and stride == patch // 2 and 2 <= patch <= size // 2
        assert patch_grid(size, patch, stride).ys.size >= 4
    assert [default_stride(p) for p in (1, 3, 4, 14, 28, 32)] == [1, 1, 2, 4, 8, 16]
    with pytest.raises(ValueError, match="at least 2"):
        default_patch(1)
