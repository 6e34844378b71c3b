"""Writes docs/figures/lite0_cat.png: EfficientNet-Lite0 on the cat photo, as the README shows it.

    python docs/figures/make_lite0_cat.py

Left to right: the photo as the model sees it, CAM for "Egyptian cat", the occlusion map (exact,
patch 32, stride 16) with its most damaging square, the deconvnet projection of the strongest unit
of ``blocks.9.expand.relu``, and the guided-backprop map of the class.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import vizkit as vk  # noqa: E402
from vizkit import render  # noqa: E402


def main() -> None:
    m = vk.load_model("efficientnet_lite0", device="cpu")
    img = vk.load_image(ROOT / "assets" / "samples" / "chelsea.png")
    seen = m.resize(img)
    target = m.classes.index("Egyptian cat")
    print(vk.predict(m, img, top=5))
    cam = vk.cam(m, img, target)
    occ = vk.occlusion(m, img, target, patch=32, stride=16, mode="exact")
    unit = vk.deconvnet(m, img, "blocks.9.expand.relu", channel=int(
        vk.activations(m, img, "blocks.9.expand.relu").top_channels[0]))
    guided = vk.guided_backprop(m, img, target)
    panels = [
        seen,
        render.overlay(seen, cam.map, 0.5, "jet"),
        render.draw_box(render.overlay(seen, occ.map, 0.5, "jet"), occ.info["box"], thickness=2),
        render.signed_image(unit.raw),
        render.signed_image(guided.raw),
    ]
    out = ROOT / "docs" / "figures" / "lite0_cat.png"
    Image.fromarray(render.tile(panels, cols=len(panels))).save(out)
    print(out, "occlusion most damaging square", occ.info["box"], "deconvnet unit", unit.info.get("unit"))


if __name__ == "__main__":
    main()
