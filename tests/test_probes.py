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


def test_probe_data_falls_back_to_the_bundled_scenes(no_fashion_mnist):
    """Without Fashion-MNIST: train and test are disjoint parts of the bundled held-out scenes."""
    from vizkit.analyses.probes import FALLBACK_TEST, fashion_probe_data, fashion_probe_note
    from vizkit.data.scenes import bundled_subset

    subset = bundled_subset()
    pool = len(subset) - FALLBACK_TEST
    x_tr, y_tr, x_te, y_te, classes = fashion_probe_data(n_train=50)
    assert len(x_tr) == 50 and len(classes) == 10
    assert np.array_equal(x_te, subset.images[pool:]) and np.array_equal(y_te, subset.labels[pool:])
    first = {img.tobytes(): label for img, label in zip(subset.images[:pool], subset.labels[:pool],
                                                         strict=True)}
    assert all(first.get(img.tobytes()) == label for img, label in zip(x_tr, y_tr, strict=True))
    x_all, *_ = fashion_probe_data(n_train=5000)
    assert len(x_all) == pool
    note = fashion_probe_note()
    assert note and "dataset-fashion-mnist" in note and str(FALLBACK_TEST) in note


def test_probe_data_uses_fashion_mnist_when_installed(tmp_path, monkeypatch):
    from test_scenes import fake_fashion_mnist

    from vizkit.analyses.probes import fashion_probe_data, fashion_probe_note
    from vizkit.data.scenes import bundled_subset

    written = fake_fashion_mnist(tmp_path, n=12)
    monkeypatch.setenv("VIZKIT_FASHION_MNIST", str(tmp_path))
    x_tr, y_tr, x_te, y_te, _ = fashion_probe_data(n_train=8)
    assert fashion_probe_note() is None
    assert x_tr.shape == (8, 64, 64, 3) and set(y_tr.tolist()) <= set(written["train"][1].tolist())
    assert np.array_equal(x_te, bundled_subset().images)


def test_probes_cli_says_it_used_the_bundled_scenes(no_fashion_mnist, tmp_path, capsys):
    from vizkit.cli import main

    assert main(["probes", "--n-train", "40", "--layers", "features.relu1", "features.relu5",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "note: Fashion-MNIST is not installed" in out and "dataset-fashion-mnist" in out
    assert (tmp_path / "out" / "probes.csv").is_file()


@pytest.mark.slow
def test_probe_accuracy_rises_with_depth_on_the_bundled_scenes_alone(fashion, no_fashion_mnist):
    """The same finding as with Fashion-MNIST's train items, from the bundled scenes only."""
    from vizkit.analyses.probes import fashion_probe_data

    x_tr, y_tr, x_te, y_te, classes = fashion_probe_data(n_train=400)
    r = linear_probes(fashion, x_tr, y_tr, x_te[:200], y_te[:200], classes=classes)
    acc = [r.test_accuracy[name] for name in r.layers]
    assert r.layers[0] == "features.relu1" and r.layers[-1] == "features.relu5"
    assert acc[-1] > acc[0] + 0.2 and acc[-1] > 2 * r.chance
