"""Reading clips safely and writing overlay videos, with PyAV (FFmpeg's libraries, no binary).

A clip is streamed: frames are decoded one at a time, scaled down by FFmpeg's swscale to at most
``ClipLimits.max_side`` before they become numpy arrays, and decoding stops at
``ClipLimits.max_frames``; nothing holds the whole clip (tests/test_video_clips.py counts the bytes
read). What was cut (frames past the cap, resolution, a damaged tail) is said in ``Clip.notes``.

The container is recognized by its first bytes (MP4/MOV, WebM/Matroska, AVI, GIF) and opened with
that demuxer only: FFmpeg's probing would also accept playlists (HLS, concat) that open other files
or URLs named inside an upload.

Overlay videos are VP8 in WebM: Debian's Chromium plays it (its H.264 decoder may be missing), and
PyAV's wheels bundle libvpx. They are written to a hidden file beside the target and renamed at
the end, so a failed or stopped run leaves nothing that looks like a result.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

VIDEO_TYPES = ["mp4", "m4v", "mov", "webm", "mkv", "avi", "gif"]
CONTAINERS = {"mov": "MP4/MOV", "matroska": "WebM/Matroska", "avi": "AVI", "gif": "GIF"}
DEFAULT_FPS = 10.0  # for a clip that declares no frame rate (some GIFs)


class VideoError(ValueError):
    """A clip that cannot be read; the message says why and what would work."""


@dataclass(frozen=True)
class ClipLimits:
    """What a clip may cost.

    Attributes:
        max_frames: frames analysed at most (after ``every``); decoding stops there.
        max_side: frames are scaled down so that their longer side is at most this (the models
            see 224 px or less, so more would only cost memory).
        max_source_side: a clip whose frames are larger on either side is refused before any
            frame is decoded (one 16k×16k RGB frame alone is 768 MB).
        max_source_pixels: likewise for width × height.
        every: analyse every ``every``-th frame.
    """

    max_frames: int = 300
    max_side: int = 480
    max_source_side: int = 8192
    max_source_pixels: int = 4096 * 2304
    every: int = 1

    def __post_init__(self) -> None:
        for name in ("max_frames", "max_side", "max_source_side", "max_source_pixels", "every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")


@dataclass(frozen=True)
class ClipInfo:
    """What the container declares (frames and duration may be unknown: ``None``)."""

    container: str
    codec: str
    width: int
    height: int
    fps: float
    frames: int | None
    duration_s: float | None
    has_audio: bool


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the clip, its time in seconds, RGB uint8 pixels."""

    index: int
    time_s: float
    image: np.ndarray


def sniff_container(head: bytes) -> str | None:
    """The FFmpeg demuxer for a file that starts with ``head`` (≥ 12 bytes), or None."""
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "mov"
    return None


def _fmt_time(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


class Clip:
    """An open clip: ``info`` at once, ``frames()`` streamed, ``notes`` on what was cut.

    Use as a context manager (``with open_clip(data) as clip:``); the container is closed on exit.
    """

    def __init__(self, source: str | os.PathLike | bytes | BinaryIO, limits: ClipLimits | None = None):
        self.limits = limits or ClipLimits()
        self.notes: list[str] = []
        self._file = self._as_file(source)
        head = self._file.read(16)
        self._file.seek(0)
        if not head:
            raise VideoError("The file is empty.")
        demuxer = sniff_container(head)
        if demuxer is None:
            raise VideoError(
                "This is not a video file vizkit reads: it does not start like MP4/MOV, "
                "WebM/Matroska, AVI or an animated GIF."
            )
        try:
            self._container = av.open(self._file, mode="r", format=demuxer)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise VideoError(f"The {CONTAINERS[demuxer]} file is damaged or truncated and cannot be "
                             f"opened ({_reason(exc)}).") from None
        try:
            self.info = self._inspect(demuxer)
        except BaseException:
            self._container.close()
            raise

    @staticmethod
    def _as_file(source) -> BinaryIO:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return io.BytesIO(bytes(source))
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise VideoError(f"No such file: {path}.")
            return open(path, "rb")  # noqa: SIM115 - closed with the clip
        return source

    def _inspect(self, demuxer: str) -> ClipInfo:
        streams = self._container.streams
        if not streams.video:
            if streams.audio:
                raise VideoError("The file holds only audio: there is no video stream to analyse.")
            raise VideoError("The file holds no video stream.")
        stream = streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise VideoError("The video stream declares no frame size; the file is damaged.")
        self._check_size(width, height)
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        fps = float(rate) if rate and 0 < float(rate) < 1000 else DEFAULT_FPS
        frames = int(stream.frames) if stream.frames else None
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / av.time_base
        if frames is None and duration:
            frames = max(1, round(duration * fps))
        return ClipInfo(container=CONTAINERS[demuxer], codec=ctx.name, width=width, height=height,
                        fps=fps, frames=frames, duration_s=duration, has_audio=bool(streams.audio))

    def _check_size(self, width: int, height: int) -> None:
        lim = self.limits
        if max(width, height) > lim.max_source_side or width * height > lim.max_source_pixels:
            raise VideoError(
                f"The frames are {width}×{height} pixels; vizkit reads clips up to "
                f"{lim.max_source_side} px a side and {lim.max_source_pixels / 1e6:.1f} megapixels. "
                "Scale the clip down first."
            )

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of the frames ``frames()`` yields: the source's, scaled to ``max_side``."""
        w, h = self.info.width, self.info.height
        scale = min(1.0, self.limits.max_side / max(w, h))
        return max(2, round(w * scale) // 2 * 2), max(2, round(h * scale) // 2 * 2)

    @property
    def planned_frames(self) -> int | None:
        """Frames ``frames()`` will yield if the declared count is right (None when unknown)."""
        if self.info.frames is None:
            return None
        return min(self.limits.max_frames, math.ceil(self.info.frames / self.limits.every))

    def frames(self) -> Iterator[Frame]:
        """Decoded frames, one at a time, scaled to ``output_size``; ``notes`` says what was cut."""
        lim, info = self.limits, self.info
        width, height = self.output_size
        if (width, height) != (info.width, info.height):
            self.notes.append(f"Frames scaled from {info.width}×{info.height} to {width}×{height} "
                              f"(at most {lim.max_side} px a side).")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        yielded = index = 0
        last_time = 0.0
        decoder = self._container.decode(stream)
        while True:
            try:
                frame = next(decoder)
            except StopIteration:
                break
            except (av.FFmpegError, ValueError, OSError) as exc:
                if yielded == 0:
                    raise VideoError(f"The clip is damaged: no frame could be decoded ({_reason(exc)}).") \
                        from None
                self.notes.append(f"The clip is damaged after frame {index}: the {yielded} frames before "
                                  f"were analysed ({_reason(exc)}).")
                return
            if yielded >= lim.max_frames:
                total = f"about {info.frames}" if info.frames else "more"
                length = f" ({_fmt_time(info.duration_s)})" if info.duration_s else ""
                self.notes.append(
                    f"Only the first {yielded} analysed frames (up to {_fmt_time(last_time)}) of "
                    f"{total} frames{length} were analysed: the cap is {lim.max_frames} frames. "
                    "Analyse every n-th frame to cover more of the clip."
                )
                return
            current = index
            index += 1
            if current % lim.every:
                continue
            self._check_size(frame.width, frame.height)  # a stream may change size mid-way
            time_s = float(frame.time) if frame.time is not None else current / info.fps
            last_time = time_s
            rgb = frame.reformat(width=width, height=height, format="rgb24",
                                 interpolation="AREA").to_ndarray()
            yielded += 1
            yield Frame(index=current, time_s=time_s, image=rgb)
        if yielded == 0:
            raise VideoError("The clip has no video frames.")
        if info.frames and index < 0.95 * info.frames - 1:
            self.notes.append(f"The clip ended after {index} of the {info.frames} frames it declares: "
                              "it is probably truncated or damaged.")

    def close(self) -> None:
        self._container.close()
        self._file.close()

    def __enter__(self) -> Clip:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_clip(source: str | os.PathLike | bytes | BinaryIO, limits: ClipLimits | None = None) -> Clip:
    """Opens a clip (path, bytes or a binary file object) for streamed decoding.

    Raises:
        VideoError: not a video, damaged, audio only, no video stream, or frames too large.
    """
    return Clip(source, limits)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


class OverlayWriter:
    """Writes RGB frames to a VP8 WebM file, atomically (a hidden partial file, renamed on success).

    Use as a context manager: leaving it normally finishes the file; an exception deletes the
    partial file and ``path`` is left as it was.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], bitrate: int = 2_000_000):
        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        self.size = (max(2, size[0] // 2 * 2), max(2, size[1] // 2 * 2))  # 4:2:0 needs even sides
        self.frames = 0
        self._container = av.open(str(self.partial), mode="w", format="webm")
        try:
            rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(int(DEFAULT_FPS))
            self._stream = self._container.add_stream("libvpx", rate=rate)
            self._stream.width, self._stream.height = self.size
            self._stream.pix_fmt = "yuv420p"
            self._stream.bit_rate = bitrate
            # libvpx's realtime deadline: 5-10× faster than "good" here, still sharp at 2 Mb/s
            self._stream.options = {"deadline": "realtime", "cpu-used": "8"}
        except BaseException:
            self.abort()
            raise

    def write(self, rgb: np.ndarray) -> None:
        """Appends one RGB uint8 frame (resized to the writer's size when it differs)."""
        import cv2

        w, h = self.size
        if rgb.shape[:2] != (h, w):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def finish(self) -> Path:
        """Flushes the encoder and moves the finished file into place."""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the file is deleted either way
            pass
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()
