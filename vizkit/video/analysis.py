"""A clip through a network, frame by frame: classes, channels, feature similarity, an overlay video.

Per frame (``analyze_frame``, one forward pass, one backward for Grad-CAM): the top-5 classes, the
chosen layer's channel means, the overlay map (Grad-CAM of the top class, or one channel), and the
cosine similarity of every convolution's output to the previous analysed frame's. Features of
deeper layers change more slowly from frame to frame than the pixels do: the observation the
recurrent convolutional video models build on (GRU-RCN, Ballas et al. 2016).

Frames are streamed from ``vizkit.video.clips``: what is kept per frame is small (numbers, the map
at the layer's resolution, a JPEG thumbnail), so memory grows with the frame cap, not the clip.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import cv2
import numpy as np

from vizkit import render
from vizkit.models.base import LoadedModel
from vizkit.video.clips import ClipInfo, ClipLimits, OverlayWriter, open_clip
from vizkit.video.frames import INPUT, analyze_frame, cosine_similarity

Overlay = Literal["grad_cam", "channel"]
OVERLAYS: tuple[str, ...] = ("grad_cam", "channel")
THUMBNAIL_QUALITY = 85  # JPEG: ~15 KB for a 480×270 frame, so 300 frames keep ~5 MB


@dataclass
class ClipAnalysis:
    """Per-frame results of ``analyze_clip`` (filled frame by frame; complete once returned).

    Attributes:
        model: registry name; ``classes`` its class names.
        layer: the layer whose channels are in ``channel_means``.
        overlay: ``"grad_cam"`` or ``"channel"``; ``channel`` the channel shown for the latter.
        info: what the container declares; ``notes``: what was cut, and why.
        frame_index, times: each analysed frame's index in the clip and time in seconds.
        top: per frame, the top-5 ``(class index, probability)``.
        channel_means: per frame, the layer's C channel means.
        similarity: layer (``"input"`` first, then every convolution in order) → per frame, the
            cosine similarity of its output to the previous analysed frame's (NaN for the first).
        maps: per frame, the overlay map at the layer's resolution.
        thumbnails: per frame, the frame as JPEG bytes.
        video: the overlay video's path, once written.
        stopped: the run was stopped before the end of the clip (by ``progress``).
        seconds: time spent.
    """

    model: str
    classes: list[str]
    layer: str
    overlay: str
    channel: int | None
    info: ClipInfo
    notes: list[str] = field(default_factory=list)
    frame_index: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    channel_means: list[np.ndarray] = field(default_factory=list)
    similarity: dict[str, list[float]] = field(default_factory=dict)
    maps: list[np.ndarray] = field(default_factory=list)
    thumbnails: list[bytes] = field(default_factory=list)
    video: Path | None = None
    stopped: bool = False
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.frame_index)

    @property
    def top1(self) -> np.ndarray:
        return np.array([t[0][0] for t in self.top], dtype=np.int64)

    @property
    def top1_probability(self) -> np.ndarray:
        return np.array([t[0][1] for t in self.top], dtype=np.float64)

    def strongest_channels(self, k: int = 5) -> list[int]:
        """The ``k`` channels with the largest mean activation over the clip, strongest first."""
        means = np.stack(self.channel_means).mean(0)
        return [int(i) for i in np.argsort(-means, kind="stable")[:k]]

    def mean_similarity(self) -> dict[str, float]:
        """Each layer's mean frame-to-frame cosine similarity (NaN with fewer than two frames)."""
        return {name: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                for name, v in ((n, np.asarray(s, dtype=np.float64)) for n, s in self.similarity.items())}

    def frame(self, i: int) -> np.ndarray:
        """Analysed frame ``i`` as RGB uint8 (decoded from its thumbnail)."""
        bgr = cv2.imdecode(np.frombuffer(self.thumbnails[i], np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def overlay_image(self, i: int, opacity: float = 0.5) -> np.ndarray:
        """Frame ``i`` with its map over it (the overlay video's frame)."""
        return render.overlay(self.frame(i), self.maps[i], opacity, "jet")

    def rows(self) -> list[dict[str, object]]:
        """The per-frame table: index, time, top-1 class and probability, top-5, similarities."""
        rows = []
        for i in range(len(self)):
            (c1, p1), *_ = self.top[i]
            row: dict[str, object] = {
                "frame": self.frame_index[i], "time_s": round(self.times[i], 4),
                "top1_index": c1, "top1_class": self.classes[c1], "top1_probability": round(p1, 6),
                "top5": "; ".join(f"{self.classes[c]} {p:.4f}" for c, p in self.top[i]),
            }
            if self.overlay == "channel":
                row[f"channel_{self.channel}_mean"] = float(self.channel_means[i][self.channel])
            for name, values in self.similarity.items():
                row[f"similarity:{name}"] = values[i]
            rows.append(row)
        return rows

    def csv_text(self) -> str:
        """``rows()`` as CSV text."""
        rows = self.rows()
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["frame"])
        writer.writeheader()
        writer.writerows(rows)
        return text.getvalue()

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Writes ``rows()`` as CSV (atomically: a hidden partial file, then a rename)."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        try:
            partial.write_text(self.csv_text(), newline="")
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path


def analyze_clip(
    m: LoadedModel,
    source: str | os.PathLike | bytes | BinaryIO,
    *,
    layer: str | None = None,
    overlay: Overlay = "grad_cam",
    channel: int | None = None,
    limits: ClipLimits | None = None,
    video_out: str | os.PathLike | None = None,
    opacity: float = 0.5,
    progress: Callable[[int, int], bool | None] | None = None,
    on_frame: Callable[[ClipAnalysis], None] | None = None,
) -> ClipAnalysis:
    """Streams a clip through ``m`` and returns per-frame results (and writes the overlay video).

    Args:
        m: the model.
        source: a path, bytes, or a binary file object (MP4/MOV, WebM/MKV, AVI, animated GIF).
        layer: whose channels to follow; default ``m.spec.cam_layer``.
        overlay: ``"grad_cam"`` of each frame's top class, or ``"channel"`` of ``layer``.
        channel: the channel for ``overlay="channel"``; default the strongest on the first frame.
        limits: frame, resolution and size caps (``ClipLimits()`` by default).
        video_out: where to write the overlay video (VP8 WebM), or None.
        opacity: of the map over the frame in the video.
        progress: called as ``progress(done, planned)`` after each frame (``planned`` is 0 when
            the clip does not declare its length); returning False stops: the frames so far are
            kept, the video holds them, and ``stopped`` is set.
        on_frame: called with the growing result after each frame (a page keeps it, so that an
            interrupted run still shows what it did).

    Raises:
        vizkit.video.clips.VideoError: the clip cannot be read (the message says why).
        ValueError: an unknown layer, overlay or channel.
    """
    if overlay not in OVERLAYS:
        raise ValueError(f"Unknown overlay {overlay!r}; use one of {', '.join(OVERLAYS)}.")
    layer = layer or m.spec.cam_layer
    convs = m.conv_layers()
    start = time.perf_counter()
    with open_clip(source, limits) as clip:
        result = ClipAnalysis(model=m.spec.name, classes=m.classes, layer=layer, overlay=overlay,
                              channel=channel, info=clip.info, notes=clip.notes)
        result.similarity = {name: [] for name in [INPUT, *convs]}
        planned = clip.planned_frames or 0
        writer = None
        previous: dict | None = None
        try:
            for frame in clip.frames():
                r = analyze_frame(m, frame.image, layer=layer,
                                  class_map="grad_cam" if overlay == "grad_cam" else None,
                                  feature_layers=[INPUT, *convs])
                if overlay == "channel":
                    if result.channel is None:
                        result.channel = int(np.argmax(r.channel_means))
                    heat = r.channel_map(result.channel)
                else:
                    heat = r.class_map
                for name, values in result.similarity.items():
                    values.append(float("nan") if previous is None
                                  else cosine_similarity(previous[name], r.features[name]))
                previous = r.features
                result.frame_index.append(frame.index)
                result.times.append(frame.time_s)
                result.top.append(r.top)
                result.channel_means.append(r.channel_means.astype(np.float32))
                result.maps.append(heat.astype(np.float32))
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
                                        [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY])
                result.thumbnails.append(jpeg.tobytes())
                if video_out is not None:
                    if writer is None:
                        writer = OverlayWriter(video_out, clip.info.fps / clip.limits.every, clip.output_size)
                    writer.write(render.overlay(frame.image, heat, opacity, "jet"))
                result.seconds = time.perf_counter() - start
                if on_frame is not None:
                    on_frame(result)
                if progress is not None and progress(len(result), planned) is False:
                    result.stopped = True
                    result.notes.append(f"Stopped after {len(result)} frames.")
                    break
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            result.video = writer.finish()
    result.seconds = time.perf_counter() - start
    return result
