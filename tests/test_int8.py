"""8-bit changes (vizkit/methods/occlusion/int8.py) against float32: per-row scaling, zero rows,
the exactness probe against what the CPU and ONEDNN_MAX_CPU_ISA allow, and the whole 8-bit suite
again in a subprocess under ONEDNN_MAX_CPU_ISA=AVX2 (the path of CPUs without VNNI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vizkit.methods.occlusion import int8
from vizkit.methods.occlusion.int8 import (
    Int8Kernels,
    available,
    exact_weight_levels,
    quantize_pixels,
    quantize_rows,
)

pytestmark = pytest.mark.skipif(not available(torch.device("cpu")),
                                reason="oneDNN's quantized kernels are not in this build")

# The weight range whose products this CPU's kernels sum exactly (the one approximate mode uses).
LEVELS = exact_weight_levels() if available(torch.device("cpu")) else None
CAPPED = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per row (batch element): ||ours - reference|| / ||reference||."""
    return (ours - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)


def test_quantize_rows_round_trips_within_half_a_level():
    x = torch.randn(3, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    x[1] *= 1e-6  # a weak row keeps its own scale
    x[2] = 0
    q, scale = quantize_rows(x)
    assert q.dtype == torch.uint8 and q.is_contiguous(memory_format=torch.channels_last)
    back = (q.float() - 128) * scale
    assert torch.all((back - x).abs() <= 0.5 * scale + 1e-12)
    assert torch.equal(back[2], torch.zeros_like(back[2]))
    peak = x.flatten(1).abs().amax(1)
    assert torch.allclose(scale.flatten()[:2], peak[:2] / 127)


def test_quantize_pixels_round_trips_within_half_a_level_per_pixel():
    x = torch.randn(2, 16, 3, 4)
    x[0, :, 0, 0] *= 1e-6  # a faint pixel keeps its own scale
    x[1, :, 2, 3] = 0
    q, scale = quantize_pixels(x)
    assert q.dtype == torch.uint8 and q.is_contiguous(memory_format=torch.channels_last)
    assert scale.shape == (2, 1, 3, 4)
    back = (q.float() - 128) * scale
    assert torch.all((back - x).abs() <= 0.5 * scale + 1e-12)
    assert torch.equal(back[1, :, 2, 3], torch.zeros(16))
    assert torch.allclose(scale[:, 0], x.abs().amax(1) / 127)


def test_pointwise_conv_of_a_fading_change_is_precise_at_every_pixel():
    """A change strong at the patch and faint at its box's edges (as past a few layers): a 1×1
    convolution keeps 2% at every output pixel (one scale per pixel), where one scale per
    position would leave the faint pixels a level or two (checked: its error there is large)."""
    torch.manual_seed(4)
    conv = nn.Conv2d(96, 64, 1)
    fade = torch.logspace(0, -3, 9).view(1, 1, 1, 9)  # 1 down to 1e-3 across the box
    delta = torch.randn(3, 96, 5, 9) * fade
    kernels = Int8Kernels(LEVELS)
    with torch.inference_mode():
        ours = kernels.conv2d(delta, conv, (0, 0))
        reference = F.conv2d(delta, conv.weight)
        q, scale = quantize_rows(delta.contiguous(memory_format=torch.channels_last))
        per_position = F.conv2d((q.float() - 128) * scale, conv.weight)

    def pixel_error(out):  # per output pixel: ||error over channels|| / ||reference||
        return (out - reference).norm(dim=1) / reference.norm(dim=1)

    assert pixel_error(ours).max() < 0.02
    assert pixel_error(per_position)[..., -1].min() > 0.1


@pytest.mark.parametrize(("cin", "cout", "groups", "stride", "padding"),
                         [(64, 96, 1, 1, (1, 1)), (64, 64, 2, 1, (1, 1)), (16, 24, 1, 2, (0, 0))])
def test_conv_of_a_change_is_within_two_percent(cin, cout, groups, stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=padding, groups=groups)
    delta = torch.randn(4, cin, 11, 11)
    delta[1] *= 1e-5
    delta[3] = 0
    kernels = Int8Kernels(LEVELS)
    with torch.inference_mode():
        ours = kernels.conv2d(delta, conv, padding)
        reference = F.conv2d(delta, conv.weight, None, stride, padding, 1, groups)
    assert ours is not None and ours.shape == reference.shape
    assert torch.all(relative_error(ours[:3], reference[:3]) < 0.02)
    assert torch.equal(ours[3], torch.zeros_like(ours[3]))


def test_linear_of_a_change_is_within_two_percent():
    torch.manual_seed(1)
    fc = nn.Linear(300, 40)
    delta = torch.randn(5, 300)
    delta[2] *= 1e-4
    with torch.inference_mode():
        ours = Int8Kernels(LEVELS).linear(delta, fc)
    assert torch.all(relative_error(ours, delta @ fc.weight.T) < 0.02)


def test_packed_weights_follow_in_place_changes():
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    delta = torch.randn(2, 8, 6, 6)
    kernels = Int8Kernels(LEVELS)
    with torch.inference_mode():
        before = kernels.conv2d(delta, conv, (1, 1))
    with torch.no_grad():
        conv.weight.mul_(-2.0)
    with torch.inference_mode():
        after = kernels.conv2d(delta, conv, (1, 1))
        reference = F.conv2d(delta, conv.weight, None, 1, 1)
    assert torch.all(relative_error(after, reference) < 0.02)
    assert torch.allclose(after, -2 * before, rtol=0.05, atol=1e-3 * before.abs().max().item())


def test_tiny_reductions_are_left_to_float():
    """A depthwise 3×3 or a 3-channel first layer sums too few products for 8 bits to pay."""
    kernels = Int8Kernels()
    with torch.inference_mode():
        assert kernels.conv2d(torch.randn(2, 8, 5, 5), nn.Conv2d(8, 8, 3, groups=8), (0, 0)) is None
        assert kernels.conv2d(torch.randn(2, 3, 5, 5), nn.Conv2d(3, 16, 3), (0, 0)) is None


def _exact_products_expected() -> bool | None:
    """Independent oracle: whether oneDNN may use a dot product that sums u8×s8 products in
    32 bits (VNNI, AMX) here, from /proc/cpuinfo's flags and ONEDNN_MAX_CPU_ISA; ``None``
    where that is not known (not x86, an unusual cap)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    if "sse4_1" not in flags:
        return None
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if cap in ("SSE41", "AVX", "AVX2", "AVX512_CORE"):  # the ISAs below any VNNI
        return False
    if cap in ("ALL", "DEFAULT"):
        return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return None


def test_the_exactness_probe_sees_what_the_cpu_and_its_cap_allow():
    expected = _exact_products_expected()
    if expected is None:
        pytest.skip("no CPU-flag oracle for this machine or ONEDNN_MAX_CPU_ISA value")
    assert int8.products_exact(127) is expected
    assert int8.products_exact(63)  # a pair of products stays within int16 on every x86 kernel
    assert exact_weight_levels() == (127 if expected else 63)
    with torch.inference_mode():  # where occlusion probes from
        assert int8.products_exact(127) is expected and int8.measure_speedup(63) > 0


def test_the_probe_predicts_the_error_on_a_real_change():
    """The cause: where 8-bit weights' products are not exact (pairs saturating int16), a
    layer's change is off by far more than quantization's 2%; 7-bit weights cure it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 96, 3, padding=1)
    delta = torch.randn(3, 64, 11, 11)
    with torch.inference_mode():
        reference = F.conv2d(delta, conv.weight, None, 1, 1)
        for levels in int8.WEIGHT_LEVELS:
            error = relative_error(Int8Kernels(levels).conv2d(delta, conv, (1, 1)), reference)
            if int8.products_exact(levels):
                assert torch.all(error < 0.02), (levels, error)
            else:
                assert torch.all(error > 0.05), (levels, error)


@pytest.mark.parametrize(("levels", "speedup", "name", "never_full", "words"), [
    (127, 2.9, "8-bit", True, "exactly here"),
    (127, 1.2, "float32", False, "1.2× as fast"),
    (63, 3.1, "8-bit", True, "7-bit weights"),
    (63, 1.6, "8-bit", False, "1.6× as fast"),
    (63, 1.1, "float32", False, "16 bits"),
    (None, None, "float32", False, "not exact"),
])
def test_auto_arithmetic_follows_the_probes(monkeypatch, levels, speedup, name, never_full, words):
    monkeypatch.setattr(int8, "exact_weight_levels", lambda: levels)
    monkeypatch.setattr(int8, "measure_speedup", lambda _levels: speedup)
    monkeypatch.setattr(int8, "_CHOSEN", {})
    chosen = int8.choose_arithmetic(torch.device("cpu"))
    assert chosen.name == name and words in chosen.reason, chosen
    assert chosen.weight_levels == (levels if name == "8-bit" else 0)
    assert chosen.never_full is never_full
    forced = int8.choose_arithmetic("cpu", "8-bit")  # exact is enough, however fast
    if levels:
        assert forced.name == "8-bit" and forced.weight_levels == levels and forced.never_full
        assert "asked for" in forced.reason
    else:
        assert forced.name == "float32" and forced.weight_levels == 0


def test_arithmetic_off_the_cpu_and_on_request():
    on_gpu = int8.choose_arithmetic(torch.device("cuda"))
    assert on_gpu.name == "float32" and "CPU-only" in on_gpu.reason
    assert int8.choose_arithmetic("cpu", "float32").name == "float32"
    with pytest.raises(ValueError, match="auto, 8-bit, float32"):
        int8.choose_arithmetic("cpu", "int4")


def test_auto_arithmetic_is_exact_wherever_it_picks_8_bit():
    chosen = int8.choose_arithmetic(torch.device("cpu"))
    assert chosen.name in ("8-bit", "float32") and chosen.reason
    if chosen.name == "8-bit":
        assert int8.products_exact(chosen.weight_levels) and chosen.speedup >= int8.MIN_SPEEDUP
    elif chosen.speedup is not None:  # exact but measured not to pay
        assert chosen.speedup < int8.MIN_SPEEDUP


# Run again under ONEDNN_MAX_CPU_ISA=AVX2: these failed on an AVX2-only CPU before 7-bit weights.
UNDER_AVX2 = [
    "tests/test_int8.py",
    "tests/test_occlusion.py::test_approximate_stays_close_on_registry_model[squeezenet1_1]",
    "tests/test_occlusion.py::test_approximate_stays_close_on_registry_model[alexnet]",
    "tests/test_occlusion.py::test_drill_down_evaluates_everything_when_the_map_is_speckle",
    "tests/test_occlusion.py::test_approximate_map_looks_like_the_exact_one_on_the_trained_model",
    "tests/test_occlusion.py::test_approximate_mode_says_which_arithmetic_it_used",
    "tests/test_occlusion.py::test_8_bit_goes_full_as_exact_mode_does_unless_it_is_fast",
]


@pytest.mark.slow
@pytest.mark.skipif("ONEDNN_MAX_CPU_ISA" in os.environ, reason="already under a capped ISA")
def test_the_8_bit_tests_pass_under_avx2_only():
    root = Path(__file__).resolve().parent.parent
    this = "tests/test_int8.py::test_the_8_bit_tests_pass_under_avx2_only"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--deselect", this,
         *UNDER_AVX2], cwd=root, env={**os.environ, **CAPPED}, capture_output=True, text=True,
        timeout=1800)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    summary = proc.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, report
