"""Where the files that ship with vizkit live: ``assets/`` at the repository root.

Weights, training snapshots, sample photos, style images and the scene subset are read from
here; nothing under it is written at run time except by the training command.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"
