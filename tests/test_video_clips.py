"""Reading clips (vizkit/video/clips.py): every container, exact pixels, limits, bad input, streaming."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from support import clip_frames, write_clip
from vizkit.video.clips import ClipLimits, OverlayWriter, VideoError, open_clip, sniff_container


@pytest.mark.parametrize(("suffix", "codec", "container", "pix_fmt"), [
    ("mp4", "mpeg4", None, "yuv420p"),
    ("mov", "mpeg4", None, "yuv420p"),
    ("webm", "libvpx", None, "yuv420p"),
    ("avi", "mpeg4", None, "yuv420p"),
    ("gif", "gif", None, "rgb8"),
    ("mkv", "ffv1", None, "bgr0"),
])
def test_every_container_decodes_its_frames(tmp_path, suffix, codec, container, pix_fmt):
    frames = clip_frames(12, 48, 64)
    path = tmp_path / f"clip.{suffix}"
    write_clip(path, frames, fps=10, codec=codec, container=container, pix_fmt=pix_fmt)
    with open_clip(path) as clip:
        assert (clip.info.width, clip.info.height) == (64, 48)
        assert clip.info.fps == pytest.approx(10)
        got = list(clip.frames())
        assert clip.notes == []
    assert [f.index for f in got] == list(range(12))
    assert [f.time_s for f in got] == pytest.approx([i / 10 for i in range(12)])
    for f, want in zip(got, frames, strict=True):
        assert f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8
        err = np.abs(f.image.astype(int) - want.astype(int)).mean()
        # ffv1 in bgr0 is lossless; the others are lossy (GIF: a 256-colour palette)
        assert err == 0 if codec == "ffv1" else err < 25, (suffix, err)


def test_bytes_and_file_objects_read_like_paths(tmp_path):
    path = tmp_path / "clip.webm"
    write_clip(path, clip_frames(5))
    from_path = [f.image for f in open_clip(path).frames()]
    from_bytes = [f.image for f in open_clip(path.read_bytes()).frames()]
    with open(path, "rb") as fh:
        from_file = [f.image for f in open_clip(fh).frames()]
    for a, b, c in zip(from_path, from_bytes, from_file, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_large_frames_are_scaled_down_with_a_note(tmp_path):
    path = tmp_path / "big.mkv"
    frames = clip_frames(2, 600, 1000)
    write_clip(path, frames, codec="ffv1", pix_fmt="bgr0")
    with open_clip(path, ClipLimits(max_side=200)) as clip:
        got = list(clip.frames())
        assert clip.output_size == (200, 120)
        assert any("scaled from 1000×600 to 200×120" in n for n in clip.notes)
    assert got[0].image.shape == (120, 200, 3)
    # an independent downscale (area averaging) of the same frame agrees closely
    import cv2

    want = cv2.resize(frames[0], (200, 120), interpolation=cv2.INTER_AREA)
    assert np.abs(got[0].image.astype(int) - want.astype(int)).mean() < 3


def test_every_nth_frame(tmp_path):
    path = tmp_path / "clip.mkv"
    frames = clip_frames(10)
    write_clip(path, frames, codec="ffv1", pix_fmt="bgr0")
    got = list(open_clip(path, ClipLimits(every=3)).frames())
    assert [f.index for f in got] == [0, 3, 6, 9]
    assert all(np.array_equal(f.image, frames[f.index]) for f in got)


class CountingReader(io.RawIOBase):
    """A file object that counts the bytes read from it (how much of a clip was touched)."""

    def __init__(self, data: bytes):
        self.inner, self.read_bytes = io.BytesIO(data), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset, whence=0):
        return self.inner.seek(offset, whence)

    def tell(self):
        return self.inner.tell()

    def readinto(self, buffer) -> int:
        n = self.inner.readinto(buffer)
        self.read_bytes += n
        return n


def test_a_ten_minute_clip_is_capped_and_streamed(tmp_path):
    """600 frames at 1 fps: 300 analysed, a note says what was cut, and the decoder stopped reading
    where the cap was reached (the clip is never decoded, or even read, whole)."""
    path = tmp_path / "ten-minutes.webm"
    rng = np.random.default_rng(0)  # noise: every frame costs bytes, so reading less is visible
    write_clip(path, [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(600)], fps=1)
    data = path.read_bytes()
    reader = CountingReader(data)
    with open_clip(reader, ClipLimits(max_frames=300)) as clip:
        assert clip.info.duration_s == pytest.approx(600, abs=1)
        frames = clip.frames()
        first = next(frames)
        assert first.index == 0
        assert reader.read_bytes < len(data) / 4  # one frame needs only the start of the file
        rest = list(frames)
        notes = list(clip.notes)
    assert len(rest) + 1 == 300 and rest[-1].index == 299
    assert reader.read_bytes < 0.75 * len(data)
    assert len(notes) == 1 and "first 300" in notes[0] and "10:00" in notes[0] and "cap is 300" in notes[0]


@pytest.mark.parametrize("name", ["text", "empty", "truncated", "header_only", "executable"])
def test_files_that_are_not_clips_get_a_clear_message(tmp_path, name):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, clip_frames(10), codec="mpeg4")
    data = {
        "text": b"hello, this is a text file renamed to .mp4\n" * 20,
        "empty": b"",
        "truncated": clip.read_bytes()[: len(clip.read_bytes()) // 2],
        "header_only": clip.read_bytes()[:64],
        "executable": b"\x7fELF" + bytes(200),
    }[name]
    bad = tmp_path / "renamed.mp4"
    bad.write_bytes(data)
    with pytest.raises(VideoError) as err:
        with open_clip(bad) as c:
            list(c.frames())
    text = str(err.value)
    assert text and "Traceback" not in text
    expected = {"text": "not a video file", "empty": "empty", "truncated": "damaged or truncated",
                "header_only": "damaged or truncated", "executable": "not a video file"}[name]
    assert expected in text
    # nothing else is affected: a good clip still reads in the same process
    assert len(list(open_clip(clip).frames())) == 10


def test_a_clip_damaged_mid_way_keeps_the_frames_before(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path, clip_frames(40, 64, 80), codec="mpeg4")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = bytes(2000)
    with open_clip(bytes(data)) as clip:
        got = list(clip.frames())
        notes = list(clip.notes)
    assert 0 < len(got) < 40
    assert any("damaged" in n for n in notes)


def test_a_truncated_webm_says_it_ended_early(tmp_path):
    path = tmp_path / "clip.webm"
    write_clip(path, clip_frames(40, 64, 80))
    data = path.read_bytes()
    with open_clip(data[: len(data) // 2]) as clip:
        got = list(clip.frames())
        notes = list(clip.notes)
    assert 0 < len(got) < 40
    assert any("ended after" in n and "truncated" in n for n in notes)


def test_zero_frames(tmp_path):
    path = tmp_path / "empty.avi"
    out = av.open(str(path), "w")
    stream = out.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
    out.start_encoding()
    out.close()
    with pytest.raises(VideoError, match="no video frames"):
        with open_clip(path) as clip:
            list(clip.frames())


def test_audio_only(tmp_path):
    path = tmp_path / "sound.webm"
    out = av.open(str(path), "w")
    stream = out.add_stream("libopus", rate=48000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
    frame.sample_rate = 48000
    for packet in [*stream.encode(frame), *stream.encode(None)]:
        out.mux(packet)
    out.close()
    with pytest.raises(VideoError, match="only audio"):
        open_clip(path)


def test_a_huge_frame_size_is_refused_before_decoding(tmp_path):
    path = tmp_path / "wide.webm"
    write_clip(path, [np.zeros((16, 8400, 3), np.uint8)])
    with pytest.raises(VideoError, match=r"8400×16 pixels.*8192 px a side"):
        open_clip(path)
    # the pixel budget too (a smaller budget keeps the test clip small)
    small = tmp_path / "square.webm"
    write_clip(small, [np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(VideoError, match=r"64×64 pixels"):
        open_clip(small, ClipLimits(max_source_pixels=4000))


def test_sniffing():
    assert sniff_container(b"GIF89a" + bytes(10)) == "gif"
    assert sniff_container(b"\x1a\x45\xdf\xa3" + bytes(12)) == "matroska"
    assert sniff_container(b"RIFF\x00\x00\x00\x00AVI LIST") == "avi"
    assert sniff_container(b"\x00\x00\x00\x18ftypmp42") == "mov"
    # a playlist would make FFmpeg open the files and URLs it names: never probed
    assert sniff_container(b"#EXTM3U\n#EXT-X-VERSION:3\n") is None
    assert sniff_container(b"ffconcat version 1.0\n") is None


def test_overlay_writer_writes_a_vp8_webm_atomically(tmp_path):
    frames = clip_frames(8, 50, 70)  # odd sizes are rounded down to even for 4:2:0
    out = tmp_path / "overlay.webm"
    with OverlayWriter(out, fps=12.5, size=(70, 50)) as writer:
        for f in frames:
            writer.write(f)
        assert not out.exists()  # nothing at the target until it is finished
    assert out.is_file() and not list(tmp_path.glob(".*partial"))
    with open_clip(out) as clip:
        assert clip.info.codec == "vp8" and clip.info.container == "WebM/Matroska"
        assert (clip.info.width, clip.info.height) == (70, 50)
        assert clip.info.fps == pytest.approx(12.5)
        got = list(clip.frames())
    assert len(got) == 8
    assert np.abs(got[3].image.astype(int) - frames[3][:50, :70].astype(int)).mean() < 25


def test_overlay_writer_leaves_nothing_after_an_error(tmp_path):
    out = tmp_path / "overlay.webm"
    out.write_bytes(b"an older result")
    with pytest.raises(RuntimeError):
        with OverlayWriter(out, fps=10, size=(32, 32)) as writer:
            writer.write(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("stopped")
    assert out.read_bytes() == b"an older result"
    assert not list(tmp_path.glob(".*partial"))
