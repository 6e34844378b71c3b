"""A live camera stream through a network: the newest frame only, drawn with the chosen view.

``LiveProcessor`` follows streamlit-webrtc's video-processor interface (``recv`` and
``recv_queued``) without importing it (vizkit never imports streamlit): the page hands it to
``webrtc_streamer``. streamlit-webrtc's worker thread gives ``recv_queued`` every frame that
arrived since the last call; only the newest is processed and the rest are counted as dropped,
so the picture stays current however slow the view is (the frames never queue up).

Dropping has to happen before the processor too: streamlit-webrtc relays the camera track
through aiortc's ``MediaRelay``, whose default buffer per consumer grows without bound whenever
the outgoing encoder is slower than the camera (the latency then grows by seconds).
``NewestFrameRelay`` keeps only the newest frame per consumer; the page installs it.

The processor must be given a ``LoadedModel.private_copy()``: the cached model's lock may be held
for a minute by another tab's occlusion or style transfer, and the copy has its own.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from aiortc.contrib.media import MediaRelay

from vizkit import render
from vizkit.models.base import LoadedModel
from vizkit.video.frames import FrameResult, analyze_frame, upsample

VIEWS = {
    "predictions": "top-5 predictions only",
    "channel": "one channel of the layer over the frame",
    "grid": "every channel of the layer",
    "grad_cam": "Grad-CAM of the top class",
    "cam": "CAM of the top class (models with a global-average-pooling head)",
}
STATS_WINDOW_S = 2.0  # frames/s and latency are averaged over the last 2 s
# Intra-op threads of the processing thread (torch.set_num_threads is per thread with OpenMP).
# One: the stream's decoder and encoder need the other core, and two OpenMP threads that share
# the CPU with another tab's computation slow down many times over (bench/live.py measures it).
LIVE_THREADS = 1


class NewestFrameRelay(MediaRelay):
    """aiortc's ``MediaRelay`` without buffers: each consumer's ``recv`` gives the newest frame.

    Frames that arrive while a consumer is busy are overwritten, not queued (``buffered=False``
    for every subscription, whatever the caller asks).
    """

    def subscribe(self, track, buffered: bool = False):
        return super().subscribe(track, buffered=False)


@dataclass(frozen=True)
class LiveSettings:
    """What to draw: a view of ``VIEWS``, the layer and channel it uses, the map's opacity."""

    view: str = "channel"
    layer: str | None = None
    channel: int = 0
    opacity: float = 0.5


@dataclass(frozen=True)
class LiveStats:
    """The stream so far.

    Attributes:
        processed: frames processed; ``dropped``: camera frames never processed because a newer
            one had arrived (estimated from the frames' timestamps and the camera's interval).
        fps: processed frames per second over the last ``STATS_WINDOW_S``.
        latency_ms: from a frame's arrival to its processed picture, averaged over the window
            (arrival on the camera's clock, aligned on the fastest frame seen; see ``LiveProcessor``).
        compute_ms: the model and drawing alone, averaged over the window.
        error: the last frame's error message, if it failed.
    """

    processed: int = 0
    dropped: int = 0
    fps: float = 0.0
    latency_ms: float = float("nan")
    compute_ms: float = float("nan")
    error: str | None = None


def draw_view(m: LoadedModel, img: np.ndarray, settings: LiveSettings) -> tuple[np.ndarray, FrameResult]:
    """The frame drawn with ``settings.view`` and the top-5 classes; the same size as ``img``."""
    view = settings.view
    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}; use one of {', '.join(VIEWS)}.")
    layer = settings.layer or m.spec.cam_layer
    result = analyze_frame(
        m, img, layer=layer if view in ("channel", "grid") else None,
        class_map=view if view in ("grad_cam", "cam") else None,
    )
    h, w = img.shape[:2]
    if view == "predictions":
        out = img.copy()
    elif view == "grid":
        grid = render.channel_grid(result.maps, pad=1)
        out = _letterbox(grid, (h, w))
    else:
        heat = result.channel_map(settings.channel) if view == "channel" else result.class_map
        out = render.overlay(img, upsample(heat, (h, w)), settings.opacity, "jet")
    _draw_top(out, [(m.classes[c], p) for c, p in result.top])
    return out, result


def _letterbox(pic: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``pic`` scaled to fit ``size`` (h, w) on black, aspect kept."""
    h, w = size
    scale = min(h / pic.shape[0], w / pic.shape[1])
    nh, nw = max(1, int(pic.shape[0] * scale)), max(1, int(pic.shape[1] * scale))
    interp = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    small = cv2.resize(pic, (nw, nh), interpolation=interp)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def _draw_top(img: np.ndarray, top: list[tuple[str, float]]) -> None:
    """Writes the top-k classes in the top-left corner, on a darkened band (in place)."""
    scale = max(0.35, img.shape[0] / 900)
    line = int(28 * scale) + 4
    width = min(img.shape[1], int(330 * scale) + 10)
    band = img[: line * len(top) + 8, :width]
    band[:] = (band.astype(np.uint16) * 2 // 5).astype(np.uint8)
    for i, (name, p) in enumerate(top):
        text = f"{p:6.1%}  {name[:28]}"
        cv2.putText(img, text, (6, line * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    max(1, int(2 * scale)), cv2.LINE_AA)


class LiveProcessor:
    """Processes only the newest frame of a stream and keeps frames/s and latency.

    ``model`` (a ``private_copy()``) and ``settings`` may be replaced at any time from another
    thread; each frame reads them once. Latency: a frame's arrival time is its presentation time
    (the camera's clock) plus an offset, the smallest ``now - frame.time`` seen when a frame was
    handed over (the worker is idle then, so that frame had just arrived). It counts the wait
    for the worker, the model and the drawing; it does not count the hand-back to the
    outgoing stream (at most one camera frame, 33 ms at 30 fps), encoding or the network.
    """

    def __init__(self, model: LoadedModel | None = None, settings: LiveSettings | None = None,
                 threads: int | None = LIVE_THREADS):
        self.model = model
        self.settings = settings or LiveSettings()
        self.threads = threads
        self.latest_image: np.ndarray | None = None
        self._lock = threading.Lock()
        self._processed = 0
        self._seen = 0
        self._first_time: float | None = None
        self._last_time: float | None = None
        self._interval: float | None = None
        self._offset: float | None = None
        self._window: deque[tuple[float, float, float]] = deque()  # (done, latency, compute)
        self._error: str | None = None

    # streamlit-webrtc's interface ------------------------------------------------------------

    def recv(self, frame):
        """One frame in, one drawn frame out (streamlit-webrtc's synchronous path)."""
        return self._process([frame])

    async def recv_queued(self, frames):
        """Frames that arrived since the last call: the newest is drawn, the rest dropped."""
        return [self._process(frames)]

    # -----------------------------------------------------------------------------------------

    def process_image(self, img: np.ndarray, arrival: float | None = None) -> np.ndarray:
        """Draws one RGB frame with the current settings and records its timings."""
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # this thread only (OpenMP's per-thread setting)
        start = time.perf_counter()
        arrival = start if arrival is None else min(arrival, start)
        model, settings = self.model, self.settings
        error = None
        try:
            if model is None:
                out, error = img, "No model yet."
            else:
                out, _ = draw_view(model, img, settings)
        except Exception as exc:  # noqa: BLE001 - the stream goes on; the page shows the message
            out, error = img.copy(), str(exc) or type(exc).__name__
            cv2.putText(out, error[:60], (6, img.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (255, 64, 64), 1, cv2.LINE_AA)
        finally:
            torch.set_num_threads(previous)
        done = time.perf_counter()
        with self._lock:
            self.latest_image = img
            self._processed += 1
            self._error = error
            self._window.append((done, done - arrival, done - start))
            while self._window and self._window[0][0] < done - STATS_WINDOW_S:
                self._window.popleft()
        return out

    def _process(self, frames):
        import av

        frame = frames[-1]
        now = time.perf_counter()
        arrival = None
        with self._lock:
            for f in frames:
                self._count_camera_frame(f.time)
            if frame.time is not None:
                seen = now - float(frame.time)
                self._offset = seen if self._offset is None else min(self._offset, seen)
                arrival = float(frame.time) + self._offset
        out = self.process_image(frame.to_ndarray(format="rgb24"), arrival)
        new = av.VideoFrame.from_ndarray(out, format="rgb24")
        new.pts, new.time_base = frame.pts, frame.time_base
        return new

    def _count_camera_frame(self, t: float | None) -> None:
        """Keeps the camera's time span and frame interval (to count frames dropped upstream too)."""
        self._seen += 1
        if t is None:
            return
        t = float(t)
        if self._last_time is not None and t > self._last_time:
            gap = t - self._last_time
            self._interval = gap if self._interval is None else min(self._interval, gap)
        self._first_time = t if self._first_time is None else min(self._first_time, t)
        self._last_time = t if self._last_time is None else max(self._last_time, t)

    def _dropped(self) -> int:
        """Camera frames never drawn: ``span / interval + 1`` minus those processed (or, without
        timestamps, those handed over and skipped). Frames the relay overwrote count too."""
        if self._interval and self._first_time is not None:
            camera = round((self._last_time - self._first_time) / self._interval) + 1
            return max(0, camera - self._processed)
        return max(0, self._seen - self._processed)

    def stats(self) -> LiveStats:
        """A snapshot of the counters (safe from any thread)."""
        with self._lock:
            window = list(self._window)
            processed, dropped, error = self._processed, self._dropped(), self._error
        if not window:
            return LiveStats(processed=processed, dropped=dropped, error=error)
        span = window[-1][0] - window[0][0]
        fps = (len(window) - 1) / span if span > 0 else 0.0
        return LiveStats(
            processed=processed, dropped=dropped, fps=fps,
            latency_ms=1000 * float(np.mean([w[1] for w in window])),
            compute_ms=1000 * float(np.mean([w[2] for w in window])), error=error,
        )

    def frozen_image(self) -> np.ndarray | None:
        """A copy of the last processed camera frame (RGB), or None before the first."""
        with self._lock:
            return None if self.latest_image is None else self.latest_image.copy()
