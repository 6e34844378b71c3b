"""The live processor (vizkit/video/live.py): newest frame only, every view on every model, the
shared model's lock never stalls it, errors keep the stream going, the relay does not queue."""

from __future__ import annotations

import asyncio
import fractions
import threading

import av
import numpy as np
import pytest

from support import clip_frames, random_image, zoo_model
from vizkit.core.hooks import hook_count
from vizkit.methods.occlusion.sensitivity import occlusion
from vizkit.methods.prediction import predict
from vizkit.video.live import VIEWS, LiveProcessor, LiveSettings, NewestFrameRelay, draw_view


def run_async(coro):
    """``asyncio.run(coro)`` in a thread of its own: an event loop that another test (or a library
    it drove) left set as running in this thread cannot refuse it."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as error:  # re-raised in the test's thread
            result["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]

WAIT_S = 300  # generous: a stalled processor never finishes; a slow shared CPU eventually does


def av_frames(images, fps: float = 30.0):
    out = []
    for i, img in enumerate(images):
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        f.pts, f.time_base = round(i * 90_000 / fps), fractions.Fraction(1, 90_000)
        out.append(f)
    return out


def test_only_the_newest_of_the_queued_frames_is_processed(tiny):
    images = clip_frames(5, 40, 48)
    settings = LiveSettings(view="predictions")
    proc = LiveProcessor(tiny.private_copy(), settings)
    (out,) = run_async(proc.recv_queued(av_frames(images)))
    want, _ = draw_view(tiny, images[-1], settings)
    assert np.array_equal(out.to_ndarray(format="rgb24"), want)
    stats = proc.stats()
    assert stats.processed == 1 and stats.dropped == 4
    assert np.array_equal(proc.frozen_image(), images[-1])
    # frames the relay overwrote are counted from the timestamps: frame 9 next, 3 more skipped
    later = av_frames(clip_frames(10, 40, 48))[9]
    run_async(proc.recv_queued([later]))
    assert proc.stats().processed == 2 and proc.stats().dropped == 8


@pytest.mark.slow
@pytest.mark.parametrize("view", list(VIEWS))
def test_every_view_on_every_model(registry_model, view):
    m = registry_model
    img = random_image(36, 44, seed=1)
    proc = LiveProcessor(m.private_copy(), LiveSettings(view=view, layer=m.spec.cam_layer, channel=1))
    out = proc.process_image(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    stats = proc.stats()
    assert stats.processed == 1
    if view == "cam" and stats.error:  # models without a GAP + linear head: a message, not a crash
        assert "Use grad_cam instead" in stats.error
    else:
        assert stats.error is None
        assert not np.array_equal(out, img)  # something was drawn (at least the top-5)
    assert hook_count(m.module) == 0


def test_the_top_5_drawn_are_the_predictions(fashion):
    img = random_image(64, 64, seed=2)
    _, result = draw_view(fashion, img, LiveSettings(view="predictions"))
    assert [fashion.classes[c] for c, _ in result.top] == [n for n, _ in predict(fashion, img)]


def test_an_error_is_shown_and_the_stream_goes_on(tiny):
    proc = LiveProcessor(tiny.private_copy(), LiveSettings(view="channel", layer="conv2", channel=99))
    img = random_image(16, 16)
    out = proc.process_image(img)
    assert out.shape == img.shape
    assert "Channel 99 is outside" in proc.stats().error
    proc.settings = LiveSettings(view="channel", layer="conv2", channel=1)
    proc.process_image(img)
    assert proc.stats().error is None and proc.stats().processed == 2


def run_with_timeout(fn) -> bool:
    """Runs ``fn`` in a thread; whether it finished within ``WAIT_S`` (a liveness check)."""
    done = threading.Event()

    def target():
        fn()
        done.set()

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    return done.wait(WAIT_S)


def test_a_held_model_lock_does_not_stall_frame_processing():
    """Another thread holds the shared model's lock the whole time (as a long occlusion does):
    frames are still processed on the private copy, and equal what the shared model draws."""
    m = zoo_model("fashion-zf")
    settings = LiveSettings(view="grad_cam")
    proc = LiveProcessor(m.private_copy(), settings)
    images = clip_frames(4, 64, 64)
    held, release = threading.Event(), threading.Event()

    def hold():
        with m.lock:
            held.set()
            release.wait(WAIT_S)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    held.wait()
    outs = []
    try:
        finished = run_with_timeout(lambda: outs.extend(proc.process_image(img) for img in images))
    finally:
        release.set()
        holder.join()
    assert finished, "frame processing waited for the shared model's lock"
    assert proc.stats().processed == 4 and proc.stats().error is None
    for img, out in zip(images, outs, strict=True):
        want, _ = draw_view(m, img, settings)
        assert np.abs(out.astype(int) - want.astype(int)).max() <= 1


def test_frames_flow_during_a_real_occlusion_in_another_thread():
    m = zoo_model("fashion-zf")
    img = random_image(64, 64, seed=7)
    serial = occlusion(m, img, None, patch=16, stride=8)
    inside, frames_done = threading.Event(), threading.Event()
    results = {}

    def progress(done, total):
        inside.set()  # the occlusion holds the model's lock while it reports progress
        frames_done.wait(WAIT_S)
        return True

    def occlude():
        results["map"] = occlusion(m, img, None, patch=16, stride=8, progress=progress)

    worker = threading.Thread(target=occlude, daemon=True)
    worker.start()
    assert inside.wait(WAIT_S)
    proc = LiveProcessor(m.private_copy(), LiveSettings(view="channel", layer=m.spec.cam_layer))
    try:
        finished = run_with_timeout(lambda: [proc.process_image(f) for f in clip_frames(3, 64, 64)])
    finally:
        frames_done.set()
        worker.join(WAIT_S)
    assert finished and proc.stats().processed == 3
    np.testing.assert_array_equal(results["map"].map, serial.map)
    assert hook_count(m.module) == 0


class Burst:
    """A source track that has produced ``n`` frames before anyone reads (a busy consumer)."""

    kind = "video"

    def __init__(self, n: int):
        self.frames = av_frames(clip_frames(n, 8, 8))
        self.i = 0
        self.ready = asyncio.Event()

    async def recv(self):
        if self.i >= len(self.frames):
            await asyncio.sleep(3600)
        frame = self.frames[self.i]
        self.i += 1
        if self.i == len(self.frames):
            self.ready.set()
        return frame


def test_the_relay_hands_over_the_newest_frame_not_a_queue():
    async def scenario(relay):
        source = Burst(10)
        relayed = relay.subscribe(source, buffered=True)  # NewestFrameRelay overrides buffered
        first = asyncio.ensure_future(relayed.recv())  # starts the relay; it reads all 10 at once
        await source.ready.wait()
        await asyncio.sleep(0)
        got = await first
        return got.pts, source.frames[-1].pts, source.frames[0].pts

    got, newest, oldest = run_async(scenario(NewestFrameRelay()))
    assert got == newest != oldest
    # aiortc's own relay, buffered, hands over the oldest: a queue that grows while the consumer is busy
    from aiortc.contrib.media import MediaRelay

    got, newest, oldest = run_async(scenario(MediaRelay()))
    assert got == oldest
