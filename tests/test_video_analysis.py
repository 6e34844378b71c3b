"""A clip frame by frame (vizkit/video/analysis.py) and its command line (vizkit/cli/video.py).

Per-frame results are checked against the single-image functions run on the same decoded frames.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from support import clip_frames, write_clip, zoo_model
from vizkit.cli import main
from vizkit.core.hooks import hook_count
from vizkit.methods.class_maps import grad_cam
from vizkit.methods.layer_activations import activations
from vizkit.methods.prediction import predict
from vizkit.video.analysis import analyze_clip
from vizkit.video.clips import ClipLimits, VideoError, open_clip
from vizkit.video.frames import INPUT


@pytest.fixture
def lossless_clip(tmp_path):
    """6 frames of 48×64, lossless (FFV1), so decoded frames equal the written ones."""
    frames = clip_frames(6, 48, 64)
    path = tmp_path / "clip.mkv"
    write_clip(path, frames, fps=5, codec="ffv1", pix_fmt="bgr0")
    return path, frames


def check_against_single_image_functions(m, path, result, layer):
    with open_clip(path) as clip:
        decoded = [f.image for f in clip.frames()]
    assert len(result) == len(decoded)
    for i, img in enumerate(decoded):
        assert [m.classes[c] for c, _ in result.top[i]] == [n for n, _ in predict(m, img, top=5)]
        acts = activations(m, img, layer)
        np.testing.assert_allclose(result.channel_means[i], acts.mean, rtol=1e-4, atol=1e-6)
        g = grad_cam(m, img)
        scale = float(np.abs(g.raw.numpy()).max()) or 1.0
        np.testing.assert_allclose(result.maps[i], g.raw.numpy(), rtol=1e-4, atol=1e-5 * scale)
    return decoded


def test_per_frame_results_equal_the_single_image_functions(fashion, lossless_clip, tmp_path):
    path, frames = lossless_clip
    out = tmp_path / "overlay.webm"
    layer = "features.conv3"
    result = analyze_clip(fashion, path, layer=layer, video_out=out)
    decoded = check_against_single_image_functions(fashion, path, result, layer)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, frames, strict=True))
    assert result.times == pytest.approx([i / 5 for i in range(6)])
    # similarity: the first frame has none; the rest are cosines of consecutive features
    convs = fashion.conv_layers()
    assert list(result.similarity) == [INPUT, *convs]
    assert all(np.isnan(v[0]) for v in result.similarity.values())
    x0, x1 = (fashion.preprocess(f)[0].flatten().double().numpy() for f in decoded[:2])
    cos = float(x0 @ x1 / (np.linalg.norm(x0) * np.linalg.norm(x1)))
    assert result.similarity[INPUT][1] == pytest.approx(cos, rel=1e-5)
    # the overlay video: every frame, VP8, the clip's frame rate
    assert result.video == out and out.is_file()
    with open_clip(out) as clip:
        assert clip.info.codec == "vp8" and clip.info.fps == pytest.approx(5)
        assert len(list(clip.frames())) == 6
    assert hook_count(fashion.module) == 0


@pytest.mark.slow
def test_every_registry_model(registry_model, tmp_path):
    path = tmp_path / "clip.mkv"
    write_clip(path, clip_frames(2, 32, 40), codec="ffv1", pix_fmt="bgr0")
    m = registry_model
    result = analyze_clip(m, path, video_out=tmp_path / "o.webm")
    check_against_single_image_functions(m, path, result, m.spec.cam_layer)
    channel = analyze_clip(m, path, overlay="channel", layer=m.spec.cam_layer)
    c = channel.channel
    assert c == int(np.argmax(channel.channel_means[0]))
    assert channel.maps[1].shape == activations(m, channel.frame(1), m.spec.cam_layer).maps[c].shape
    assert len(result.similarity) == len(m.conv_layers()) + 1
    assert hook_count(m.module) == 0


def test_identical_frames_are_fully_similar(fashion, tmp_path):
    path = tmp_path / "still.mkv"
    still = clip_frames(1)[0]
    write_clip(path, [still] * 3, codec="ffv1", pix_fmt="bgr0")
    result = analyze_clip(fashion, path)
    for values in result.similarity.values():
        assert values[1:] == pytest.approx([1.0, 1.0], abs=1e-5)


def test_channel_overlay_follows_the_chosen_channel(fashion, lossless_clip):
    path, frames = lossless_clip
    result = analyze_clip(fashion, path, overlay="channel", layer="features.conv2", channel=7)
    for i, img in enumerate(frames):
        np.testing.assert_allclose(result.maps[i], activations(fashion, img, "features.conv2").maps[7],
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Channel 9999 is outside"):
        analyze_clip(fashion, path, overlay="channel", layer="features.conv2", channel=9999)


def test_stopping_keeps_the_frames_done_and_finishes_the_video(fashion, lossless_clip, tmp_path):
    path, _ = lossless_clip
    out = tmp_path / "overlay.webm"
    seen = []
    result = analyze_clip(fashion, path, video_out=out, progress=lambda done, planned: done < 3,
                          on_frame=lambda r: seen.append(len(r)))
    assert result.stopped and len(result) == 3 and seen == [1, 2, 3]
    assert any("Stopped after 3 frames" in n for n in result.notes)
    with open_clip(out) as clip:
        assert len(list(clip.frames())) == 3


def test_an_error_mid_way_leaves_no_video(fashion, lossless_clip, tmp_path):
    path, _ = lossless_clip
    out = tmp_path / "overlay.webm"

    def progress(done, planned):
        if done == 2:
            raise RuntimeError("interrupted")
        return True

    with pytest.raises(RuntimeError):
        analyze_clip(fashion, path, video_out=out, progress=progress)
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_the_frame_cap_says_what_was_cut(fashion, tmp_path):
    path = tmp_path / "long.webm"
    write_clip(path, clip_frames(30, 24, 32), fps=1)
    result = analyze_clip(fashion, path, limits=ClipLimits(max_frames=10))
    assert len(result) == 10
    assert any("first 10" in n and "cap is 10" in n for n in result.notes)


def test_csv_table(fashion, lossless_clip, tmp_path):
    path, _ = lossless_clip
    result = analyze_clip(fashion, path, overlay="channel", channel=2)
    table = result.write_csv(tmp_path / "frames.csv")
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 6
    assert [int(r["frame"]) for r in rows] == list(range(6))
    assert rows[1]["top1_class"] == fashion.classes[result.top1[1]]
    assert float(rows[1]["top1_probability"]) == pytest.approx(result.top1_probability[1], abs=1e-6)
    assert float(rows[4]["channel_2_mean"]) == pytest.approx(result.channel_means[4][2], rel=1e-5)
    assert float(rows[3]["similarity:input"]) == pytest.approx(result.similarity[INPUT][3])
    assert not list(tmp_path.glob(".*partial"))


def test_cli_writes_the_video_and_the_table(lossless_clip, tmp_path, capsys):
    path, _ = lossless_clip
    out = tmp_path / "out"
    assert main(["video", str(path), "--model", "fashion-zf", "--out", str(out)]) == 0
    assert (out / "overlay.webm").is_file() and (out / "frames.csv").is_file()
    assert len(list(csv.DictReader((out / "frames.csv").open()))) == 6
    assert "6 frames" in capsys.readouterr().out
    with open_clip(out / "overlay.webm") as clip:
        assert len(list(clip.frames())) == 6


def test_cli_bad_clip_is_a_message(tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    assert main(["video", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not a video file" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "overlay.webm").exists()


def test_a_bad_clip_leaves_the_model_as_it_was(tmp_path):
    m = zoo_model("fashion-zf")
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(100))
    with pytest.raises(VideoError):
        analyze_clip(m, bad, video_out=tmp_path / "o.webm")
    assert hook_count(m.module) == 0 and not m.lock._is_owned()
    assert not (tmp_path / "o.webm").exists()
