"""sanity.py: the cascading randomization test (Adebayo et al. 2018)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from support import random_image, zoo_model
from vizkit.core.hooks import hook_count
from vizkit.core.results import Explanation
from vizkit.metrics.sanity import randomization_steps, sanity_check
from vizkit.models.registry import get_spec, load_model

TRAINED = get_spec("fashion-zf").weights_file.is_file()


def test_steps_go_from_the_top_and_group_norms_with_their_layer():
    steps = randomization_steps(zoo_model("fashion-zf").module)
    assert steps[0] == ["fc"]
    assert steps[1] == ["features.conv5", "features.bn5"]
    assert steps[-1] == ["features.conv1", "features.bn1"] and len(steps) == 6


def test_caller_model_untouched_and_reproducible(tiny):
    img = random_image(16, 16)
    state = {k: v.clone() for k, v in tiny.module.state_dict().items()}
    rng = torch.get_rng_state()
    first = sanity_check(tiny, img, "grad_cam", seed=3)
    second = sanity_check(tiny, img, "grad_cam", seed=3)
    assert first == second
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG must not be used"
    for k, v in tiny.module.state_dict().items():
        assert torch.equal(v, state[k])
    assert hook_count(tiny.module) == 0
    assert len(first.correlations) == 3 and first.final == first.correlations[-1]
    assert first.steps == (("fc",), ("conv2",), ("conv1",))


def test_weight_free_method_keeps_correlation_one_and_constant_maps_zero(tiny):
    img = random_image(16, 16)

    def brightness(m, image, target):        # ignores the model entirely
        gray = m.resize(image).astype(np.float32).mean(2)
        return Explanation("brightness", 0, None, gray, torch.from_numpy(gray))

    def blank(m, image, target):
        return Explanation("blank", 0, None, np.zeros((16, 16), np.float32), torch.zeros(16, 16))

    assert sanity_check(tiny, img, brightness).correlations == (1.0, 1.0, 1.0)
    assert sanity_check(tiny, img, blank).final == 0.0


def test_correlations_are_spearman_of_the_maps(tiny):
    """Step by step, against maps of models re-initialized outside vizkit's loop."""
    img = random_image(16, 16)
    seen = []

    def recording(m, image, target):
        from vizkit.methods.backprop import saliency
        e = saliency(m, image, target)
        seen.append(e.map)
        return e

    r = sanity_check(tiny, img, recording, target=1)
    expected = [spearmanr(seen[0].ravel(), later.ravel()).statistic for later in seen[1:]]
    np.testing.assert_allclose(r.correlations, expected)
    assert r.target == 1 and len(seen) == 4


def test_errors(tiny):
    with pytest.raises(ValueError, match="Unknown method 'gradcam'.*grad_cam"):
        sanity_check(tiny, random_image(16, 16), "gradcam")
    with pytest.raises(ValueError, match="outside this model's 3 classes"):
        sanity_check(tiny, random_image(16, 16), "saliency", target=3)


@pytest.mark.slow
@pytest.mark.skipif(not TRAINED, reason="needs the trained assets/fashion-zf.safetensors")
def test_grad_cam_fails_to_survive_randomization_on_the_trained_model():
    from vizkit.data.scenes import bundled_subset

    m = load_model("fashion-zf", device="cpu")
    scenes = bundled_subset()
    finals = []
    for i in range(8):
        r = sanity_check(m, scenes.images[i], "grad_cam")
        assert r.target is not None and len(r.correlations) == 6
        finals.append(r.final)
    # Adebayo et al. report the mean over images; single images scatter (here about -0.4..0.7).
    assert np.mean(finals) < 0.5, finals
