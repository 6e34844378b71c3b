"""The bundled model's claimed accuracy is what ``python -m vizkit train --eval-only`` measures."""

from __future__ import annotations

import re

import pytest
import torch

from vizkit.cli import main as cli_main
from vizkit.data import training as train


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_eval_only_reproduces_the_model_card_accuracy(capsys):
    from vizkit.data.scenes import fashion_mnist_files

    fashion_mnist_files("test")  # where missing, DatasetMissing names the package to install
    threads = torch.get_num_threads()
    try:
        assert cli_main(["train", "--eval-only", "--threads", str(threads)]) == 0
    finally:
        torch.set_num_threads(threads)
    measured = re.search(r"accuracy on 10000 test scenes: ([\d.]+)%", capsys.readouterr().out)
    claimed = re.search(r"\*\*([\d.]+)%\*\* on scenes built from the whole 10,000-item",
                        train.MODEL_CARD.read_text())
    assert measured and claimed
    # Equal up to a prediction or two flipping with another thread count's float rounding.
    assert abs(float(measured.group(1)) - float(claimed.group(1))) <= 0.02
    assert float(claimed.group(1)) >= 88.0, "the bundled model is below the 88% bar"


@pytest.mark.parametrize("extra", [["--eval-only"], ["--epochs", "1"]])
def test_train_without_the_dataset_says_what_to_install(no_fashion_mnist, capsys, extra):
    """Measuring and training both stop before any work (nothing in assets/ is touched)."""
    card = train.MODEL_CARD.read_bytes()
    threads = torch.get_num_threads()
    try:
        assert cli_main(["train", "--threads", str(threads), *extra]) == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert "dataset-fashion-mnist" in err and str(no_fashion_mnist) in err
    assert train.MODEL_CARD.read_bytes() == card
