"""Weights: the real torchvision-cache path, offline errors, pickle refusal, bad files, the import command."""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from support import zoo_model
from vizkit.cli import main as cli_main
from vizkit.models import registry as models
from vizkit.models.registry import get_spec, load_model, weights_available
from vizkit.models.torchvision_zoo import import_zoo_weights
from vizkit.models.weights import WeightsError, expected_hash_prefix, read_state_dict, zoo_checkpoint_path

SMALL_ZOO = "squeezenet1_1"  # the smallest zoo model: 1.2 M parameters


class FileCreatingPayload:
    """Unpickling this would create ``marker``: the test proves it never happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


class TorchHome(type(Path())):
    download_calls: list


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> TorchHome:
    """An empty TORCH_HOME; downloads fail like they do with no network (and are recorded)."""
    home = TorchHome(tmp_path / "torch-home")
    home.download_calls = []
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(url, dst, *args, **kwargs):
        home.download_calls.append((url, dst, kwargs))
        raise ConnectionError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


@pytest.fixture
def small_state() -> dict[str, torch.Tensor]:
    """The seeded weights=None state dict of the small zoo model (copied, so tests may edit it)."""
    return {k: v.clone() for k, v in zoo_model(SMALL_ZOO).module.state_dict().items()}


def assert_same_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key].cpu(), value), key


# ---------------------------------------------------------------- the torchvision cache

def test_checkpoint_path_follows_torch_home(torch_home):
    path = zoo_checkpoint_path(get_spec("alexnet"))
    assert path == torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert expected_hash_prefix(path.name) == "7be5be79"


def test_zoo_weights_load_from_cache_under_torchvision_name(torch_home, small_state):
    path = zoo_checkpoint_path(get_spec(SMALL_ZOO))
    path.parent.mkdir(parents=True)
    torch.save(small_state, path)
    assert weights_available(SMALL_ZOO)
    m = load_model(SMALL_ZOO, device="cpu")
    assert_same_state(m.module, small_state)
    assert not m.module.training
    assert torch_home.download_calls == []


def test_offline_error_names_file_folder_and_import_command(torch_home):
    spec = get_spec(SMALL_ZOO)
    path = zoo_checkpoint_path(spec)
    assert not weights_available(SMALL_ZOO)
    with pytest.raises(WeightsError) as info:
        load_model(SMALL_ZOO, device="cpu")
    message = str(info.value)
    assert path.name in message and str(path.parent) in message
    assert f"python -m vizkit weights import {path.name} --model {SMALL_ZOO}" in message
    assert spec.weights_enum.url in message
    assert not path.exists()
    # The download was attempted with torchvision's hash check.
    (url, dst, kwargs), = torch_home.download_calls
    assert url == spec.weights_enum.url and Path(dst) == path
    assert kwargs["hash_prefix"] == expected_hash_prefix(path.name)


# ---------------------------------------------------------------- pickle payloads

def test_pickle_payload_refused_and_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.ones(1), "x": FileCreatingPayload(marker)}, path)
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"x": FileCreatingPayload(marker)}, protocol=2))

    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    for bad in (path, legacy):
        with pytest.raises(WeightsError, match=r"pickled Python objects \((io|builtins)\.open\)"):
            read_state_dict(bad)
        with pytest.raises(WeightsError, match="refuses"):
            load_model(SMALL_ZOO, device="cpu", weights=bad)
    assert not marker.exists()
    assert loads and all(flag is True for flag in loads)  # never retried with weights_only=False


def test_pickle_payload_in_the_cache_refused(torch_home, tmp_path):
    marker = tmp_path / "pwned"
    path = zoo_checkpoint_path(get_spec(SMALL_ZOO))
    path.parent.mkdir(parents=True)
    torch.save({"x": FileCreatingPayload(marker)}, path)
    with pytest.raises(WeightsError, match="pickled"):
        load_model(SMALL_ZOO, device="cpu")
    assert not marker.exists()


# ---------------------------------------------------------------- bad files, clear errors

def test_wrong_keys_named(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(zoo_model("resnet18").module.state_dict(), path)
    expected = r"missing keys: features\.0\.weight.*unexpected keys: conv1\.weight"
    with pytest.raises(WeightsError, match=expected):
        load_model(SMALL_ZOO, device="cpu", weights=path)


def test_wrong_shape_named(tmp_path, small_state):
    small_state["classifier.1.weight"] = torch.zeros(10, 512, 1, 1)
    small_state["classifier.1.bias"] = torch.zeros(10)
    path = tmp_path / "ten-classes.safetensors"
    save_file(small_state, path)
    with pytest.raises(WeightsError, match=r"wrong shapes: classifier\.1\.weight: file \(10, 512, 1, 1\) "
                                           r"vs model \(1000, 512, 1, 1\)"):
        load_model(SMALL_ZOO, device="cpu", weights=path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_named(tmp_path, small_state, bad):
    small_state["features.3.squeeze.bias"][2] = bad
    path = tmp_path / "bad.pt"
    torch.save(small_state, path)
    with pytest.raises(WeightsError, match=r"'features\.3\.squeeze\.bias' contains NaN or Inf"):
        load_model(SMALL_ZOO, device="cpu", weights=path)


def test_truncated_safetensors_and_torch_files(tmp_path, small_state):
    good = tmp_path / "good.safetensors"
    save_file(small_state, good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        read_state_dict(cut)
    header_cut = tmp_path / "header-cut.safetensors"
    header_cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(WeightsError, match="safetensors"):
        read_state_dict(header_cut)
    pt = tmp_path / "good.pt"
    torch.save(small_state, pt)
    cut_pt = tmp_path / "cut.pt"
    cut_pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        read_state_dict(cut_pt)


@pytest.mark.parametrize("content,fragment", [
    (b"", "empty"),
    (b"just some text, not weights\n", "neither a safetensors file nor a torch.save file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "neither"),
])
def test_not_weights_files(tmp_path, content, fragment):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=fragment):
        read_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(SMALL_ZOO, device="cpu", weights=tmp_path / "nope.safetensors")


def test_non_tensor_entries_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"weight": torch.ones(2), "epoch": 3}, path)
    with pytest.raises(WeightsError, match="epoch"):
        read_state_dict(path)


# ---------------------------------------------------------------- a user's own weights

@pytest.mark.parametrize("fmt", ["safetensors", "state-dict", "checkpoint-dataparallel"])
def test_users_own_weights(tmp_path, small_state, fmt):
    path = tmp_path / ("mine.safetensors" if fmt == "safetensors" else "mine.pt")
    if fmt == "safetensors":
        save_file(small_state, path)
    elif fmt == "state-dict":
        torch.save(small_state, path)
    else:
        torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in small_state.items()}}, path)
    m = load_model(SMALL_ZOO, device="cpu", weights=path)
    assert_same_state(m.module, small_state)


# ---------------------------------------------------------------- python -m vizkit weights

@pytest.fixture
def importable(tmp_path, small_state, monkeypatch):
    """A checkpoint file plus a registry spec whose torchvision URL carries that file's hash prefix."""
    source = tmp_path / "downloaded.pth"
    torch.save(small_state, source)
    prefix = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    url = f"https://download.pytorch.org/models/squeezenet1_1-{prefix}.pth"
    spec = dataclasses.replace(get_spec(SMALL_ZOO), weights_enum=SimpleNamespace(url=url, meta={}))
    monkeypatch.setitem(models.REGISTRY, SMALL_ZOO, spec)
    return source


def listing(out: str) -> dict[str, str]:
    return {line.split()[0]: line.split()[1] for line in out.splitlines()}


def test_import_command_round_trip(torch_home, importable, small_state, capsys):
    target = zoo_checkpoint_path(get_spec(SMALL_ZOO))
    assert cli_main(["weights", "list"]) == 0
    assert listing(capsys.readouterr().out)[SMALL_ZOO] == "missing"
    assert cli_main(["weights", "import", str(importable), "--model", SMALL_ZOO]) == 0
    assert str(target) in capsys.readouterr().out
    assert target.read_bytes() == importable.read_bytes()
    assert weights_available(SMALL_ZOO)
    assert cli_main(["weights", "list"]) == 0
    after = listing(capsys.readouterr().out)
    assert after[SMALL_ZOO] == "available" and after["alexnet"] == "missing"
    assert_same_state(load_model(SMALL_ZOO, device="cpu").module, small_state)
    assert torch_home.download_calls == []


def test_import_refuses_wrong_hash(torch_home, tmp_path, small_state, capsys):
    source = tmp_path / "squeezenet1_1-b8a52dc0.pth"  # a plausible name does not help
    torch.save(small_state, source)
    assert cli_main(["weights", "import", str(source), "--model", SMALL_ZOO]) == 1
    err = capsys.readouterr().err
    assert "sha256" in err and expected_hash_prefix(zoo_checkpoint_path(get_spec(SMALL_ZOO)).name) in err
    assert not zoo_checkpoint_path(get_spec(SMALL_ZOO)).exists()


def test_import_refuses_pickle_payload_with_matching_hash(torch_home, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pth"
    torch.save({"x": FileCreatingPayload(marker)}, source)
    prefix = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    spec = dataclasses.replace(get_spec(SMALL_ZOO), weights_enum=SimpleNamespace(
        url=f"https://download.pytorch.org/models/squeezenet1_1-{prefix}.pth", meta={}))
    with pytest.raises(WeightsError, match="pickled"):
        import_zoo_weights(source, spec)
    assert not marker.exists() and not zoo_checkpoint_path(spec).exists()


def test_import_refuses_wrong_architecture(torch_home, tmp_path, monkeypatch):
    source = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, source)
    prefix = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    spec = dataclasses.replace(get_spec(SMALL_ZOO), weights_enum=SimpleNamespace(
        url=f"https://download.pytorch.org/models/squeezenet1_1-{prefix}.pth", meta={}))
    with pytest.raises(WeightsError, match="do not fit"):
        import_zoo_weights(source, spec)
    assert not zoo_checkpoint_path(spec).exists()


def test_weights_list_command_in_subprocess(tmp_path):
    env = {"TORCH_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "vizkit", "weights", "list"], capture_output=True,
                            text=True, env=env, cwd=Path(__file__).resolve().parent.parent, timeout=600)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == models.list_models()
    assert str(tmp_path / "hub" / "checkpoints") in result.stdout
