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


def test_writes_are_atomic_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "weights.safetensors"
    train.write_atomically(target, lambda tmp: tmp.write_text("first"))
    assert target.read_text() == "first"

    def half_then_fail(tmp):
        tmp.write_text("half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        train.write_atomically(target, half_then_fail)
    assert target.read_text() == "first"  # the old file, not the half-written one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]  # no temporary left


def test_model_card_says_how_the_run_was_made(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "MODEL_CARD", tmp_path / "MODEL_CARD.md")
    settings = train.TrainingSettings(epochs=3, lr=0.002, seed=7, batch=64)
    run = train.TrainingRun(history=[{"epoch": 1, "loss": 1.25, "check_accuracy": 0.5, "minutes": 2.0}],
                            minutes=2.0, module=torch.nn.Identity())
    train.write_model_card(0.8912, [0.9] * 10, run, settings)
    card = train.MODEL_CARD.read_text()
    assert "**89.12%**" in card
    assert "`python -m vizkit train --epochs 3 --lr 0.002 --seed 7`, one run from scratch." in card
    assert "| 1 | 1.250 | 50.0% | 2.0 |" in card and "batch\n64" in card
    assert train.TrainingSettings() == train.TrainingSettings(epochs=10, batch=128, lr=3e-3, seed=0)


def test_cli_defaults_are_the_recipe():
    import argparse

    from vizkit.cli import train as train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args([])
    recipe = train.TrainingSettings()
    assert (args.epochs, args.batch, args.lr, args.seed) == \
        (recipe.epochs, recipe.batch, recipe.lr, recipe.seed)


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
