"""Video: clips decoded with limits (``clips``), one-pass frame analysis (``frames``), per-clip
analysis and overlay videos (``analysis``), and the live camera processor (``live``)."""
