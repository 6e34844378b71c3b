"""vizkit: see inside convolutional networks.

The public API, re-exported eagerly from the modules that define it (captum's way). No public
function shares its name with a module at this level, so ``vizkit.occlusion`` is always the
function, whatever has been imported. The layout is described in ``docs/design.md``.
"""

from __future__ import annotations

from vizkit.analyses.correspondence import correspondence
from vizkit.analyses.evolution import feature_evolution
from vizkit.analyses.features import layer_features
from vizkit.analyses.invariance import invariance
from vizkit.analyses.probes import linear_probes
from vizkit.core.images import ImageError, load_image, safe_filename, to_png_bytes
from vizkit.core.results import Activations, Explanation
from vizkit.methods.backprop import deconvnet, guided_backprop, saliency
from vizkit.methods.class_maps import cam, grad_cam, grad_cam_pp
from vizkit.methods.filters import filter_grid, filter_weights, maximize_activation
from vizkit.methods.layer_activations import activations
from vizkit.methods.occlusion.sensitivity import occlusion
from vizkit.methods.patches import patch_grid, top_patches
from vizkit.methods.prediction import predict
from vizkit.methods.receptive_fields import receptive_field, summarize, summary_table
from vizkit.methods.registry import MethodSpec, get_method, list_methods
from vizkit.methods.style.transfer import style_transfer
from vizkit.metrics.faithfulness import deletion_insertion
from vizkit.metrics.sanity import sanity_check
from vizkit.mining.engine import mine
from vizkit.mining.index import read_index
from vizkit.models.base import LoadedModel
from vizkit.models.registry import list_models, load_model
from vizkit.models.weights import WeightsError
from vizkit.video.analysis import analyze_clip
from vizkit.video.clips import VideoError, open_clip
from vizkit.video.frames import analyze_frame

__all__ = [
    "Activations", "Explanation", "ImageError", "LoadedModel", "MethodSpec", "WeightsError",
    "activations", "cam", "correspondence", "deconvnet", "deletion_insertion", "feature_evolution",
    "filter_grid", "filter_weights", "get_method", "grad_cam", "grad_cam_pp", "guided_backprop",
    "invariance", "layer_features", "linear_probes", "list_methods", "list_models", "load_image",
    "load_model", "maximize_activation", "mine", "occlusion", "patch_grid", "predict", "read_index",
    "receptive_field", "safe_filename", "saliency", "sanity_check", "style_transfer", "summarize",
    "summary_table", "to_png_bytes", "top_patches",
    "VideoError", "analyze_clip", "analyze_frame", "open_clip",
]
