"""Training the bundled model (vizkit/data/training.py, ``python -m vizkit train``): the model
card's figures are what ``--eval-only`` measures; a stopped run continues to the same weights;
outputs are written atomically; the held-out background family is scored apart."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vizkit.cli import main as cli_main
from vizkit.cli import train as train_cli
from vizkit.data import backgrounds, scenes
from vizkit.data import training as train
from vizkit.models.fashion_zf import FashionZF


@pytest.fixture(autouse=True)
def _keep_threads():
    """The train command sets torch's thread count for its process; put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run_eval_only(capsys) -> str:
    assert cli_main(["train", "--eval-only", "--threads", str(torch.get_num_threads())]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_eval_only_reproduces_the_model_card_accuracy(capsys):
    scenes.fashion_mnist_files("test")  # where missing, DatasetMissing names the package to install
    out = _run_eval_only(capsys)
    card = train.MODEL_CARD.read_text()
    measured = re.search(r"accuracy on 10000 test scenes: ([\d.]+)%", out)
    claimed = re.search(r"\*\*([\d.]+)%\*\* on scenes built from the whole 10,000-item", card)
    assert measured and claimed
    # Equal up to a prediction or two flipping with another thread count's float rounding.
    assert abs(float(measured.group(1)) - float(claimed.group(1))) <= 0.02
    assert float(claimed.group(1)) >= 88.0, "the bundled model is below the 88% bar"

    family = train.weights_hold_out(train.WEIGHTS_FILE)
    assert family == backgrounds.HELD_OUT
    measured = re.search(rf"accuracy on 10000 held-out scenes \(background family {family}, never seen "
                         r"in training\): ([\d.]+)%", out)
    claimed = re.search(rf"\*\*([\d.]+)%\*\* on the same 10,000 test items rendered the same way on "
                        rf"backgrounds of\s+the held-out family `{family}`", card)
    assert measured and claimed
    assert abs(float(measured.group(1)) - float(claimed.group(1))) <= 0.02
    assert float(claimed.group(1)) >= 80.0, "the bundled model is below 80% on its held-out family"


# --- on a small synthetic dataset, so these run without Fashion-MNIST and in seconds --------------

def _fake_fashion(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Blocky random "items" (a filled rectangle per image) with labels 0..9."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    n = 160 if split == "train" else 40
    items = np.zeros((n, 28, 28), np.uint8)
    for item in items:
        r0, c0 = rng.integers(2, 12, 2)
        item[r0:r0 + rng.integers(8, 14), c0:c0 + rng.integers(8, 14)] = rng.integers(120, 256)
    return items, rng.integers(0, 10, n)


@pytest.fixture
def fake_dataset(monkeypatch):
    monkeypatch.setattr(train, "load_fashion_mnist", _fake_fashion)
    monkeypatch.setattr(scenes, "load_fashion_mnist", _fake_fashion)
    monkeypatch.setattr(train_cli, "fashion_mnist_files", lambda split: None)  # no dataset needed


class _Stop(Exception):
    pass


def _stop_at(message: str):
    def log(line: str) -> None:
        if line.startswith(message):
            raise _Stop(line)
    return log


@pytest.mark.parametrize("stop_at", ["epoch 2/2 step 3/5", '{"epoch": 1,'])
def test_a_stopped_run_continues_to_the_same_weights(fake_dataset, monkeypatch, tmp_path, stop_at):
    """Stopped mid-epoch (after a checkpoint) or between epochs, then continued: the same weights,
    bit for bit, and the same history as a run never stopped."""
    monkeypatch.setattr(train, "CHECKPOINT_EVERY", 3)
    config = train.TrainConfig(epochs=2, batch=32, lr=3e-3, items=160)
    whole = train.train(config, out=tmp_path / "a", checkpoint=tmp_path / "a.pt", checks={},
                        log=lambda line: None)
    stale = tmp_path / "b" / "snapshots" / "fashion-zf-epoch7.safetensors"  # an earlier run's
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    with pytest.raises(_Stop):
        train.train(config, out=tmp_path / "b", checkpoint=tmp_path / "b.pt", checks={},
                    log=_stop_at(stop_at))
    continued = train.train(config, out=tmp_path / "b", checkpoint=tmp_path / "b.pt", checks={},
                            continue_run=True, log=lambda line: None)
    for key, value in whole.module.state_dict().items():
        assert torch.equal(value, continued.module.state_dict()[key]), key
    strip = [{k: v for k, v in row.items() if k != "minutes"} for row in whole.history]
    assert strip == [{k: v for k, v in row.items() if k != "minutes"} for row in continued.history]
    assert [r["epoch"] for r in continued.history] == [1, 2]
    # Weights and the snapshots written, with the held-out family in their metadata.
    snaps = sorted(p.name for p in (tmp_path / "b" / "snapshots").iterdir())
    assert snaps == ["fashion-zf-epoch0.safetensors", "fashion-zf-epoch1.safetensors",
                     "fashion-zf-epoch2.safetensors"]
    assert train.weights_hold_out(tmp_path / "b" / "fashion-zf.safetensors") == backgrounds.HELD_OUT
    assert not list(tmp_path.rglob("*.tmp"))


def test_continuing_another_run_or_none_is_refused(fake_dataset, tmp_path):
    config = train.TrainConfig(epochs=1, batch=32, items=64)
    with pytest.raises(FileNotFoundError, match="no run to continue"):
        train.train(config, out=tmp_path, checkpoint=tmp_path / "none.pt", continue_run=True, checks={})
    train.train(config, out=tmp_path, checkpoint=tmp_path / "c.pt", checks={}, log=lambda line: None)
    other = train.TrainConfig(epochs=1, batch=32, items=64, hold_out="cellular")
    with pytest.raises(ValueError, match="another run"):
        train.train(other, out=tmp_path, checkpoint=tmp_path / "c.pt", continue_run=True, checks={})


def test_training_never_draws_the_held_out_family(fake_dataset, monkeypatch, tmp_path):
    """With the held-out family's generator made to fail, a whole run still goes through; with
    another family held out, it is the one never drawn."""
    def refuse(n, size, g):
        raise AssertionError("the held-out family was drawn for training")

    for held in (backgrounds.HELD_OUT, "cellular"):
        with monkeypatch.context() as patch:
            patch.setitem(backgrounds.FAMILIES, held, backgrounds.BackgroundFamily(held, refuse, ""))
            config = train.TrainConfig(epochs=1, batch=32, items=64, hold_out=held)
            train.train(config, out=tmp_path, checkpoint=tmp_path / f"{held}.pt", checks={},
                        log=lambda line: None)


def test_held_out_and_test_scenes_draw_their_families(fake_dataset, monkeypatch):
    drawn: list[str] = []
    for name, family in list(backgrounds.FAMILIES.items()):
        def draw(n, size, g, name=name, real=family.draw):
            drawn.append(name)
            return real(n, size, g)
        monkeypatch.setitem(backgrounds.FAMILIES, name, backgrounds.BackgroundFamily(name, draw, ""))
    held = scenes.held_out_scenes("cellular", count=30)
    assert set(drawn) == {"cellular"} and len(held) == 30
    drawn.clear()
    test = scenes.evaluation_scenes("cellular")
    assert "cellular" not in drawn and len(set(drawn)) >= 5 and len(test) == 40
    # Same items, same seed: same labels and a like-for-like comparison.
    assert np.array_equal(held.labels, test.labels[:30])


def test_weights_metadata_names_the_held_out_family(tmp_path):
    module = FashionZF()
    for held in ("cellular", None):
        path = tmp_path / f"{held}.safetensors"
        train.save_weights(module, path, held)
        assert train.weights_hold_out(path) == held
        assert torch.equal(train.load_trained(path).fc.weight, module.fc.weight)
    # Weights from before the families existed carry no metadata: HELD_OUT is what they never saw.
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(bare))
    assert train.weights_hold_out(bare) == backgrounds.HELD_OUT


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "card.md"
    path.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        train.write_atomically(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["card.md"]
    path.chmod(0o640)
    train.write_atomically(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640
    # A new file gets the usual mode (what the umask leaves of 0666), not a writer's 0600.
    fresh = tmp_path / "w.safetensors"
    train.save_weights(FashionZF(), fresh, None)
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask


def test_eval_only_reports_the_held_out_family(fake_dataset, capsys):
    """On the synthetic test items: the model card's test scenes, then the held-out family, named."""
    out = _run_eval_only(capsys)
    assert re.search(r"accuracy on 40 test scenes: [\d.]+%", out)
    assert re.search(rf"accuracy on 40 held-out scenes \(background family {backgrounds.HELD_OUT}, "
                     r"never seen in training\): [\d.]+%", out)
    assert cli_main(["train", "--eval-only", "--hold-out", "cellular", "--threads", "1"]) == 0
    assert "background family cellular, seen in training" in capsys.readouterr().out


def test_train_command_refuses_bad_families_and_weights_as_a_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--hold-out", "plaid"])
    assert "unknown background family 'plaid'" in capsys.readouterr().err
    assert cli_main(["train", "--resume", str(tmp_path / "x.safetensors")]) == 2
    assert "holds weights only" in capsys.readouterr().out


def test_model_card_states_both_figures_and_the_families(tmp_path):
    history = [{"epoch": 1, "loss": 1.0, "test_accuracy": 0.5, "held_out_accuracy": 0.4, "minutes": 1.0}]
    path = tmp_path / "MODEL_CARD.md"
    config = train.TrainConfig(epochs=1)
    run = train.TrainingRun(history, 1.0, torch.nn.Identity())
    train.write_model_card(0.8912, [0.9] * 10, ("photos", 0.8345), run, config,
                           "python -m vizkit train --epochs 1", path=path)
    card = path.read_text()
    assert "**89.12%** on scenes built from the whole 10,000-item" in card
    assert re.search(r"\*\*83\.45%\*\* on the same 10,000 test items rendered the same way on "
                     r"backgrounds of\s+the held-out family `photos`", card)
    for name in backgrounds.FAMILIES:
        assert f"`{name}`" in card
    assert "| 1 | 1.000 | 50.0% | 40.0% | 1.0 |" in card



def test_cli_defaults_are_the_recipe():
    import argparse

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args([])
    recipe = train.TrainConfig()
    assert (args.epochs, args.batch, args.lr, args.seed) == \
        (recipe.epochs, recipe.batch, recipe.lr, recipe.seed)


@pytest.mark.parametrize("extra", [["--eval-only"], ["--epochs", "1"]])
def test_train_without_the_dataset_says_what_to_install(no_fashion_mnist, capsys, extra):
    """Measuring and training both stop before any work (nothing in assets/ is touched)."""
    card = train.MODEL_CARD.read_bytes()
    assert cli_main(["train", "--threads", str(torch.get_num_threads()), *extra]) == 2
    err = capsys.readouterr().err
    assert "dataset-fashion-mnist" in err and str(no_fashion_mnist) in err
    assert train.MODEL_CARD.read_bytes() == card
