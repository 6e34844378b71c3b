"""Layer-wise linear probes (Zeiler & Fergus 2013, Table 6; Alain & Bengio 2016).

Each layer's output is globally average-pooled to one vector per image; a linear classifier
(multinomial logistic regression on standardized features, scikit-learn) is trained on a train
subset and scored on held-out images. Zeiler & Fergus found accuracy rising with depth: higher
layers carry more linearly separable, class-discriminative features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from vizkit.analyses.features import default_layers, layer_features
from vizkit.core.hooks import find_layer
from vizkit.models.base import LoadedModel

PROBE_SEED = 6  # FashionScenes rendering seed of the probes' train scenes (not the test seed)
# Without Fashion-MNIST: bundled scenes held out for testing (the rest may train).
FALLBACK_TEST = 300


@dataclass(frozen=True)
class Probes:
    """Accuracy of a linear classifier on each layer's pooled features.

    Attributes:
        layers: the layers probed, in forward order.
        test_accuracy: layer → accuracy on the held-out images.
        train_accuracy: layer → accuracy on the train images.
        dims: layer → feature dimension (the layer's channels).
        n_train, n_test: images used.
        chance: accuracy of always guessing the most frequent train class.
        classes: class names, index-aligned with the labels.
    """

    layers: tuple[str, ...]
    test_accuracy: dict[str, float]
    train_accuracy: dict[str, float]
    dims: dict[str, int]
    n_train: int
    n_test: int
    chance: float
    classes: tuple[str, ...]


def fashion_probe_data(n_train: int = 3000, seed: int = 0):
    """FashionScenes for probing fashion-zf: ``n_train`` scenes rendered from Fashion-MNIST train
    items (a seeded random choice), and the bundled held-out subset as the test set.

    Without the Fashion-MNIST package (see :func:`fashion_probe_note`), the bundled subset serves
    both sides: up to ``n_train`` of its first scenes train, its last ``FALLBACK_TEST`` test.

    Returns:
        (train_images, train_labels, test_images, test_labels, classes)
    """
    from vizkit.data.scenes import FASHION_CLASSES, bundled_subset, fashion_mnist_available, make_scenes

    rng = np.random.default_rng(seed)
    test = bundled_subset()
    if not fashion_mnist_available("train"):
        pool = len(test) - FALLBACK_TEST
        pick = np.sort(rng.choice(pool, size=min(n_train, pool), replace=False))
        return (test.images[pick], test.labels[pick], test.images[pool:], test.labels[pool:],
                tuple(FASHION_CLASSES))
    from vizkit.data.scenes import load_fashion_mnist

    items, labels = load_fashion_mnist("train")
    pick = np.sort(rng.choice(len(items), size=min(n_train, len(items)), replace=False))
    train = make_scenes(items[pick], labels[pick], seed=PROBE_SEED + seed)
    return train.images, train.labels, test.images, test.labels, tuple(FASHION_CLASSES)


def fashion_probe_note() -> str | None:
    """What :func:`fashion_probe_data` trains on when Fashion-MNIST is missing, else ``None``."""
    from vizkit.data.scenes import FASHION_PACKAGE, bundled_subset, fashion_mnist_available

    if fashion_mnist_available("train"):
        return None
    pool = len(bundled_subset()) - FALLBACK_TEST
    return (f"Fashion-MNIST is not installed (Debian package {FASHION_PACKAGE}), so the probes "
            f"train on at most {pool} of the bundled held-out scenes and test on the other "
            f"{FALLBACK_TEST}. Install it for train scenes rendered from its 60,000 training items.")


def folder_probe_data(folder: str | Path, test_fraction: float = 0.25, per_class: int = 500, seed: int = 0):
    """A labelled image folder ``folder/<class>/*.png`` (any image type), split per class.

    Returns:
        (train_images, train_labels, test_images, test_labels, classes): images as a list of
        uint8 H×W×3 arrays; every class with at least two images gives one to each side.
    """
    from vizkit.data.scenes import image_folder

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ValueError(f"{root} needs at least two class subfolders (folder/<class>/*.png).")
    rng = np.random.default_rng(seed)
    tr_x, tr_y, te_x, te_y = [], [], [], []
    for k, name in enumerate(classes):
        imgs = image_folder(root / name, limit=per_class)
        if len(imgs) < 2:
            raise ValueError(f"Class folder {name!r} has {len(imgs)} readable images; need at least 2.")
        order = rng.permutation(len(imgs))
        n_test = min(len(imgs) - 1, max(1, round(test_fraction * len(imgs))))
        for rank, i in enumerate(order):
            (te_x if rank < n_test else tr_x).append(imgs[i])
            (te_y if rank < n_test else tr_y).append(k)
    return tr_x, np.array(tr_y), te_x, np.array(te_y), tuple(classes)


def linear_probes(
    m: LoadedModel,
    train_images: Sequence[np.ndarray] | np.ndarray,
    train_labels: np.ndarray,
    test_images: Sequence[np.ndarray] | np.ndarray,
    test_labels: np.ndarray,
    *,
    layers: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    c: float = 1.0,
    progress: Callable[[int, int], object] | None = None,
) -> Probes:
    """Test accuracy of a linear classifier on each layer's globally pooled features.

    Args:
        m: the model (its own classes need not match the probe's labels).
        train_images, test_images: uint8 H×W×3 images (any size: resized to the model's input).
        train_labels, test_labels: integer class per image.
        layers: layers to probe (default: ``default_layers``).
        classes: names of the label classes (default: the label values).
        c: inverse L2 regularization strength of the logistic regression.
        progress: ``progress(done, total)``: images through the model, then one step per layer.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_train, y_test = np.asarray(train_labels), np.asarray(test_labels)
    n_train, n_test = len(train_images), len(test_images)
    if n_train != len(y_train) or n_test != len(y_test):
        raise ValueError("Each image needs exactly one label.")
    if len(np.unique(y_train)) < 2:
        raise ValueError("The train images need at least two classes.")
    if n_test == 0:
        raise ValueError("No test images.")
    layers = tuple(dict.fromkeys(layers or default_layers(m)))
    for name in layers:
        find_layer(m.module, name)
    total = n_train + n_test + len(layers)
    step = (lambda done, _total: progress(done, total)) if progress else None
    same_shape = (isinstance(train_images, np.ndarray) and isinstance(test_images, np.ndarray)
                  and train_images.shape[1:] == test_images.shape[1:])
    images = np.concatenate([train_images, test_images]) if same_shape else [*train_images, *test_images]
    feats = layer_features(m, images, layers, pool="avg", progress=step)
    train_acc, test_acc, dims = {}, {}, {}
    for i, name in enumerate(layers):
        x = feats.values[name]
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
        clf.fit(x[:n_train], y_train)
        train_acc[name] = float(clf.score(x[:n_train], y_train))
        test_acc[name] = float(clf.score(x[n_train:], y_test))
        dims[name] = int(x.shape[1])
        if progress is not None:
            progress(n_train + n_test + i + 1, total)
    values, counts = np.unique(y_train, return_counts=True)
    majority = values[np.argmax(counts)]
    names = tuple(classes) if classes is not None else tuple(str(v) for v in values)
    return Probes(layers=layers, test_accuracy=test_acc, train_accuracy=train_acc, dims=dims,
                  n_train=n_train, n_test=n_test, chance=float(np.mean(y_test == majority)),
                  classes=names)


def probe_rows(result: Probes) -> list[dict]:
    """The table: layer, test and train accuracy, feature dimension."""
    return [{"layer": name, "test_accuracy": round(result.test_accuracy[name], 4),
             "train_accuracy": round(result.train_accuracy[name], 4), "dim": result.dims[name]}
            for name in result.layers]


def probes_figure(result: Probes, title: str = "") -> go.Figure:
    """Test accuracy per layer (bars, train accuracy as markers), the chance level dashed."""
    x = list(result.layers)
    fig = go.Figure([
        go.Bar(x=x, y=[result.test_accuracy[k] for k in x], name="test accuracy",
               text=[f"{result.test_accuracy[k]:.1%}" for k in x], textposition="auto"),
        go.Scatter(x=x, y=[result.train_accuracy[k] for k in x], name="train accuracy", mode="markers"),
    ])
    fig.add_hline(y=result.chance, line_dash="dash", annotation_text="chance (majority class)")
    fig.update_layout(title=title or f"Linear probes: {result.n_train} train, {result.n_test} test images",
                      yaxis=dict(range=[0, 1], tickformat=".0%", title="accuracy"), xaxis_title="layer",
                      height=360, margin=dict(l=10, r=10, t=40, b=10))
    return fig


# ---------------------------------------------------------------- command line
