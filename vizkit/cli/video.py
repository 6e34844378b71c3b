"""``python -m vizkit video``: the command line of ``vizkit.video.analysis.analyze_clip``."""

from __future__ import annotations

import sys

from vizkit.cli import add_model_arguments, load_model_from
from vizkit.video.analysis import OVERLAYS
from vizkit.video.clips import ClipLimits


def add_arguments(parser) -> None:
    """``python -m vizkit video CLIP --model M --out DIR``."""
    parser.add_argument("clip", help="video file: MP4/MOV, WebM/MKV, AVI or animated GIF")
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--layer", default=None,
                        help="layer whose channels to follow (default: the CAM layer)")
    parser.add_argument("--overlay", choices=OVERLAYS, default="grad_cam")
    parser.add_argument("--channel", type=int, default=None,
                        help="channel for --overlay channel (default: the strongest on the first frame)")
    parser.add_argument("--max-frames", type=int, default=ClipLimits.max_frames)
    parser.add_argument("--every", type=int, default=1, help="analyse every n-th frame")


def run(args) -> int:
    """Writes DIR/overlay.webm and DIR/frames.csv and prints a summary."""
    from pathlib import Path

    from vizkit.core.images import ImageError
    from vizkit.models.weights import WeightsError
    from vizkit.video.analysis import analyze_clip

    out = Path(args.out)
    try:
        limits = ClipLimits(max_frames=args.max_frames, every=args.every)
        m = load_model_from(args)
        out.mkdir(parents=True, exist_ok=True)
        last = [0]

        def progress(done: int, planned: int) -> bool:
            if done - last[0] >= 25 or done == planned:
                last[0] = done
                print(f"\r{done}/{planned or '?'} frames", end="", file=sys.stderr, flush=True)
            return True

        result = analyze_clip(m, args.clip, layer=args.layer, overlay=args.overlay, channel=args.channel,
                              limits=limits, video_out=out / "overlay.webm", progress=progress)
        print(file=sys.stderr)
        table = result.write_csv(out / "frames.csv")
    except (ImageError, WeightsError, ValueError, OSError) as error:  # VideoError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(note)
    rate = len(result) / result.seconds if result.seconds > 0 else float("nan")
    print(f"{len(result)} frames in {result.seconds:.1f} s ({rate:.1f} frames/s) → {result.video}, {table}")
    return 0
