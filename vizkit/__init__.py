"""vizkit: see inside convolutional networks.

The public API (see DESIGN.md). Functions that share their module's name (``vizkit.cam.cam``)
are imported eagerly: a lazy name would be shadowed by the submodule as soon as anything imported
it, and ``vk.cam(...)`` would call a module. The rest loads on first use.
"""

from __future__ import annotations

import importlib

from vizkit.activations import activations
from vizkit.cam import cam
from vizkit.correspondence import correspondence
from vizkit.deconvnet import deconvnet
from vizkit.explanation import Activations, Explanation
from vizkit.images import ImageError, load_image
from vizkit.invariance import invariance
from vizkit.models import LoadedModel, list_models, load_model
from vizkit.occlusion import occlusion
from vizkit.predict import predict
from vizkit.receptive_field import receptive_field
from vizkit.weights import WeightsError

_LAZY = {
    "guided_backprop": "vizkit.deconvnet",
    "saliency": "vizkit.deconvnet",
    "grad_cam": "vizkit.cam",
    "grad_cam_pp": "vizkit.cam",
    "filter_weights": "vizkit.filters",
    "maximize_activation": "vizkit.filters",
    "top_patches": "vizkit.patches",
    "summarize": "vizkit.receptive_field",
    "summary_table": "vizkit.receptive_field",
    "filter_grid": "vizkit.filters",
    "patch_grid": "vizkit.patches",
    "sanity_check": "vizkit.sanity",
    "style_transfer": "vizkit.style",
    "linear_probes": "vizkit.probes",
    "feature_evolution": "vizkit.evolution",
    "layer_features": "vizkit.features",
    "deletion_insertion": "vizkit.faithfulness",
    "to_png_bytes": "vizkit.images",
    "safe_filename": "vizkit.images",
}

__all__ = [
    "Activations", "Explanation", "ImageError", "LoadedModel", "WeightsError",
    "list_models", "load_image", "load_model", "activations", "cam", "correspondence", "deconvnet",
    "invariance", "occlusion", "predict", "receptive_field", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vizkit' has no attribute {name!r}")
