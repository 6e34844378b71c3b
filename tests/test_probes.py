"""Linear probes: accuracies equal an independent scikit-learn fit on sliced-forward features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vizkit.analyses.probes import folder_probe_data, linear_probes, probe_rows, probes_figure
from vizkit.core.hooks import hook_count


def _two_class_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reddish vs bluish noise images: linearly separable from pooled first-layer features."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    imgs = rng.integers(0, 120, (n, 16, 16, 3))
    imgs[labels == 0, :, :, 0] += 120
    imgs[labels == 1, :, :, 2] += 120
    return imgs.astype(np.uint8), labels


def test_probe_accuracy_matches_an_independent_fit(tiny):
    x_tr, y_tr = _two_class_images(40, 0)
    x_te, y_te = _two_class_images(20, 1)
    r = linear_probes(tiny, x_tr, y_tr, x_te, y_te, layers=["relu1", "relu2"], classes=["red", "blue"])
    assert r.layers == ("relu1", "relu2") and r.n_train == 40 and r.n_test == 20
    assert r.dims == {"relu1": 4, "relu2": 6} and r.chance == 0.5

    def pooled(imgs, stop):
        x = torch.cat([tiny.preprocess(img) for img in imgs])
        with torch.no_grad():
            return tiny.module[:stop](x).mean((2, 3)).numpy()

    for name, stop in (("relu1", 2), ("relu2", 5)):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        clf.fit(pooled(x_tr, stop), y_tr)
        assert r.test_accuracy[name] == pytest.approx(clf.score(pooled(x_te, stop), y_te))
        assert r.train_accuracy[name] == pytest.approx(clf.score(pooled(x_tr, stop), y_tr))
    assert r.test_accuracy["relu1"] > 0.9  # colour is linearly readable from the first layer
    assert [row["layer"] for row in probe_rows(r)] == ["relu1", "relu2"]
    assert list(probes_figure(r).data[0].x) == ["relu1", "relu2"]
    assert hook_count(tiny.module) == 0


def test_folder_data_splits_each_class(tmp_path, tiny):
    rng = np.random.default_rng(0)
    for name, n in (("cat", 5), ("dog", 4)):
        (tmp_path / name).mkdir()
        for i in range(n):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "notes.png").write_text("not an image")
    x_tr, y_tr, x_te, y_te, classes = folder_probe_data(tmp_path, test_fraction=0.25)
    assert classes == ("cat", "dog")
    assert sorted(np.bincount(y_te)) == [1, 1] and np.bincount(y_tr).tolist() == [4, 3]
    r = linear_probes(tiny, x_tr, y_tr, x_te, y_te, classes=classes)
    assert r.layers == ("relu1", "relu2") and r.n_test == 2


def test_probe_errors(tiny, tmp_path):
    x, y = _two_class_images(4, 0)
    with pytest.raises(ValueError, match="two classes"):
        linear_probes(tiny, x, np.zeros(4, int), x, y)
    with pytest.raises(ValueError, match="one label"):
        linear_probes(tiny, x, y[:3], x, y)
    with pytest.raises(ValueError, match="two class subfolders"):
        folder_probe_data(tmp_path)


@pytest.mark.slow
def test_probe_accuracy_rises_with_depth_on_fashion_zf(fashion):
    from vizkit.analyses.probes import fashion_probe_data

    x_tr, y_tr, x_te, y_te, classes = fashion_probe_data(n_train=400)
    r = linear_probes(fashion, x_tr, y_tr, x_te[:200], y_te[:200], classes=classes)
    acc = [r.test_accuracy[name] for name in r.layers]
    assert r.layers[0] == "features.relu1" and r.layers[-1] == "features.relu5"
    assert acc[-1] > acc[0] + 0.2 and acc[-1] > 2 * r.chance
