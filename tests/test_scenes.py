"""Fashion-MNIST loading (vizkit/data/scenes.py): idx files read back exactly; where they are
missing, a clear error that names the Debian package, from every user of the dataset."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from vizkit.data.scenes import (
    FASHION_PACKAGE,
    DatasetMissing,
    evaluation_scenes,
    fashion_mnist_available,
    load_fashion_mnist,
)


def write_idx(path, array: np.ndarray) -> None:
    """The idx format by hand: two zero bytes, type 0x08 (uint8), ndim, big-endian dims, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(folder, n: int = 12, seed: int = 0) -> dict:
    """Both splits as Fashion-MNIST's four files in ``folder``; returns what was written."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        items = np.zeros((n, 28, 28), np.uint8)
        items[:, 6:22, 8:20] = rng.integers(60, 256, (n, 16, 12))  # an object on black
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", items)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        written[split] = (items, labels)
    return written


def test_idx_files_read_back_exactly(tmp_path, monkeypatch):
    written = fake_fashion_mnist(tmp_path)
    monkeypatch.setenv("VIZKIT_FASHION_MNIST", str(tmp_path))
    for split in ("train", "test"):
        assert fashion_mnist_available(split)
        items, labels = load_fashion_mnist(split)
        assert np.array_equal(items, written[split][0])
        assert labels.dtype == np.int64 and np.array_equal(labels, written[split][1])
    scenes = evaluation_scenes()
    assert len(scenes) == 12 and np.array_equal(scenes.labels, written["test"][1])
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_missing_dataset_names_the_package_to_install(no_fashion_mnist, split):
    assert not fashion_mnist_available(split)
    with pytest.raises(DatasetMissing, match=FASHION_PACKAGE) as caught:
        load_fashion_mnist(split)
    assert isinstance(caught.value, FileNotFoundError)
    assert str(no_fashion_mnist) in str(caught.value)


def test_evaluation_scenes_without_the_dataset_say_what_to_install(no_fashion_mnist):
    with pytest.raises(DatasetMissing, match=f"apt-get install {FASHION_PACKAGE}"):
        evaluation_scenes()
