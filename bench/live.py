"""The live page's pipeline on a synthetic camera: processed frames/s and latency, per view.

    .venv/bin/python bench/live.py [--model mobilenet_v2] [--seconds 8] [--views predictions,channel,grad_cam]

The server side of the live page, without a browser: a synthetic 640×480 camera at 30 frames/s
(an aiortc track, frames made in real time), relayed by ``NewestFrameRelay``, processed by
streamlit-webrtc's own ``AsyncVideoProcessTrack`` with vizkit's ``LiveProcessor`` on a private
copy of the model, then VP8-encoded (libvpx, realtime) as aiortc's sender does, on a thread.
Latency: from a frame's creation to its processed picture encoded for sending (the browser's
encoding, the network and its decoding come on top: tens of ms on one machine).

Side by side, in the same run:
- threads: the processing thread with 1 and with 2 intra-op threads;
- queueing: the same processor behind aiortc's default buffered ``MediaRelay`` (what
  streamlit-webrtc does unless told otherwise): every frame is queued, so latency grows;
- the model lock: another thread holds the shared model's lock (a long occlusion in another tab)
  while the stream runs on a private copy, and on the shared model itself.
The model has seeded random weights (timing does not depend on them; no network needed).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import statistics
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiortc import VideoStreamTrack  # noqa: E402
from aiortc.contrib.media import MediaRelay  # noqa: E402
from streamlit_webrtc.process import AsyncVideoProcessTrack  # noqa: E402

from vizkit.models.registry import load_model  # noqa: E402
from vizkit.video.live import LiveProcessor, LiveSettings, NewestFrameRelay  # noqa: E402

CLOCK = 90_000  # RTP's video clock


class SyntheticCamera(VideoStreamTrack):
    """640×480 frames at ``fps`` in real time: a moving gradient; ``created``: pts → creation time."""

    def __init__(self, fps: float = 30.0, size: tuple[int, int] = (640, 480)):
        super().__init__()
        self.fps, (self.w, self.h) = fps, size
        self.count = 0
        self.start: float | None = None
        self.created: dict[int, float] = {}
        yy, xx = np.mgrid[0:self.h, 0:self.w]
        self.base = np.stack([xx * 255 // self.w, yy * 255 // self.h, (xx + yy) % 256], -1).astype(np.uint8)

    async def recv(self):
        if self.start is None:
            self.start = time.perf_counter()
        due = self.start + self.count / self.fps
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        img = np.roll(self.base, 8 * self.count, axis=1)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = round(self.count * CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, CLOCK)
        self.created[frame.pts] = time.perf_counter()
        self.count += 1
        return frame


class TracedProcessor(LiveProcessor):
    """``LiveProcessor`` that remembers which camera frame each of its pictures came from.

    (streamlit-webrtc's track overwrites an output frame's pts with the newest input's.)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.origin: dict[int, tuple[object, int]] = {}

    def _process(self, frames):
        out = super()._process(frames)
        self.origin[id(out)] = (out, frames[-1].pts)  # the frame itself is kept: ids stay unique
        if len(self.origin) > 16:
            self.origin.pop(next(iter(self.origin)))
        return out


async def stream(processor: TracedProcessor, relay: MediaRelay, seconds: float, warmup: float,
                 before_stop=None) -> dict:
    """Runs the pipeline; returns processed frames/s, latencies (ms) and the processor's stats."""
    camera = SyntheticCamera()
    track = AsyncVideoProcessTrack(relay.subscribe(camera), processor)
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = camera.w, camera.h, "yuv420p"
    encoder.time_base = fractions.Fraction(1, CLOCK)
    encoder.bit_rate = 1_000_000
    encoder.options = {"deadline": "realtime", "cpu-used": "8"}
    loop = asyncio.get_running_loop()
    seen: set[int] = set()
    latencies: list[float] = []
    begin = time.perf_counter()
    counted_from = None
    processed_at_start = 0
    while True:
        frame = await track.recv()
        await loop.run_in_executor(None, encoder.encode, frame.reformat(format="yuv420p"))
        now = time.perf_counter()
        if counted_from is None and now - begin >= warmup:
            counted_from, processed_at_start = now, processor.stats().processed
        origin = processor.origin.get(id(frame))
        if counted_from is not None and origin is not None and origin[0] is frame and origin[1] not in seen:
            seen.add(origin[1])  # a picture counts once, when first sent (it is resent until the next)
            latencies.append(1000 * (now - camera.created[origin[1]]))
        if counted_from is not None and now - counted_from >= seconds:
            break
    stats = processor.stats()
    if before_stop is not None:
        before_stop()  # lets a processor blocked on a lock finish, so that the track can stop
    track.stop()
    camera.stop()
    elapsed = time.perf_counter() - counted_from
    return {"fps": (stats.processed - processed_at_start) / elapsed, "latency": latencies, "stats": stats}


def run(processor: TracedProcessor, relay: MediaRelay, seconds: float, warmup: float = 2.0,
        before_stop=None) -> dict:
    try:
        return asyncio.run(stream(processor, relay, seconds, warmup, before_stop))
    except Exception as error:  # noqa: BLE001 - streamlit-webrtc ends a stream whose frame took > 10 s
        return {"fps": float("nan"), "latency": [], "stats": processor.stats(), "failed": str(error)}


def summary(name: str, r: dict) -> str:
    if "failed" in r:
        return f"{name:<44} the stream failed: {r['failed'][:90]}"
    lat = r["latency"]
    med = statistics.median(lat) if lat else float("nan")
    p90 = float(np.percentile(lat, 90)) if lat else float("nan")
    s = r["stats"]
    return (f"{name:<44} {r['fps']:6.1f} frames/s   latency median {med:7.0f} ms, p90 {p90:7.0f} ms   "
            f"(model+drawing {s.compute_ms:5.0f} ms; page's estimate {s.latency_ms:5.0f} ms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--views", default="predictions,channel,grad_cam")
    parser.add_argument("--layer", default=None, help="layer of the channel view (default: the CAM layer)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    shared = load_model(args.model, device="cpu", weights=None)
    layer = args.layer or shared.spec.cam_layer
    print(f"{args.model}: 640×480 camera at 30 frames/s, {args.seconds:.0f} s per row after 2 s of warm-up; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads by default")

    def processor(view: str, threads: int | None = 1, model=None) -> TracedProcessor:
        settings = LiveSettings(view=view, layer=layer, channel=0)
        return TracedProcessor(model or shared.private_copy(), settings, threads=threads)

    rows = {}
    for view in args.views.split(","):
        for threads in (1, 2):
            rows[(view, threads)] = run(processor(view, threads), NewestFrameRelay(), args.seconds)
            print(summary(f"{view}, {threads} thread{'s' if threads > 1 else ''}", rows[(view, threads)]),
                  flush=True)

    view = args.views.split(",")[0]
    print(f"\nQueueing ({view}, 1 thread):")
    newest = rows[(view, 1)]
    buffered = run(processor(view), MediaRelay(), args.seconds)
    print(summary("aiortc's buffered MediaRelay (every frame)", buffered))
    print(summary("NewestFrameRelay (newest frame only)", newest))
    if newest["latency"] and buffered["latency"]:
        ratio = statistics.median(buffered["latency"]) / statistics.median(newest["latency"])
        print(f"median latency, buffered / newest-frame: {ratio:.1f}×")

    print(f"\nAnother thread holds the shared model's lock ({view}, 1 thread):")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with shared.lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    held.wait()
    try:
        private = run(processor(view), NewestFrameRelay(), args.seconds)
        print(summary("private copy (the live page)", private))
        on_shared = run(processor(view, model=shared), NewestFrameRelay(), min(args.seconds, 4.0),
                        before_stop=release.set)
        print(summary("the shared model itself", on_shared))
    finally:
        release.set()
        holder.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
