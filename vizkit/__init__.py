"""vizkit: see inside convolutional networks.

The public API (see DESIGN.md) is imported lazily so that ``import vizkit`` stays light and
never pulls in streamlit.
"""

from __future__ import annotations

import importlib

from vizkit.explanation import Activations, Explanation
from vizkit.images import ImageError, load_image
from vizkit.models import LoadedModel, list_models, load_model
from vizkit.weights import WeightsError

_LAZY = {
    "predict": "vizkit.predict",
    "activations": "vizkit.activations",
    "deconvnet": "vizkit.deconvnet",
    "guided_backprop": "vizkit.deconvnet",
    "saliency": "vizkit.deconvnet",
    "occlusion": "vizkit.occlusion",
    "cam": "vizkit.cam",
    "grad_cam": "vizkit.cam",
    "grad_cam_pp": "vizkit.cam",
    "filter_weights": "vizkit.filters",
    "maximize_activation": "vizkit.filters",
    "top_patches": "vizkit.patches",
    "receptive_field": "vizkit.receptive_field",
    "summarize": "vizkit.receptive_field",
    "summary_table": "vizkit.receptive_field",
    "filter_grid": "vizkit.filters",
    "patch_grid": "vizkit.patches",
    "sanity_check": "vizkit.sanity",
    "style_transfer": "vizkit.style",
    "invariance": "vizkit.invariance",
    "correspondence": "vizkit.correspondence",
    "linear_probes": "vizkit.probes",
    "feature_evolution": "vizkit.evolution",
    "layer_features": "vizkit.features",
    "deletion_insertion": "vizkit.faithfulness",
    "to_png_bytes": "vizkit.images",
    "safe_filename": "vizkit.images",
}

__all__ = [
    "Activations", "Explanation", "ImageError", "LoadedModel", "WeightsError",
    "list_models", "load_image", "load_model", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vizkit' has no attribute {name!r}")
