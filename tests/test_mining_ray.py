"""The Ray engine (a local Ray on this machine) mines the same index as the local engine, resumes
an interrupted Ray run to that index, and sizes its actors so decode tasks still run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_interrupts import RerunLike, raise_on_call
from test_mining import TINY_LAYERS, _folder, table_of

from support import TINY_SPEC, make_tiny_cnn, random_image
from vizkit.core.hooks import hook_count
from vizkit.mining import index as ix
from vizkit.mining.engine import mine
from vizkit.mining.ray_engine import actor_plan
from vizkit.models.registry import wrap_module


def test_actor_plan_leaves_cpus_for_decoding():
    # 2 cores: the two 1-CPU actors that hung Ray 2.60 become two half-CPU actors
    two = actor_plan(2, 0, 2)
    assert (two.actors, two.cpus, two.gpus) == (2, 0.5, 0)
    one = actor_plan(2, 0, None)
    assert (one.actors, one.cpus) == (1, 1.0)
    big = actor_plan(64, 0, None)  # one per 8 CPUs, 4 threads each, half the CPUs left to decoding
    assert (big.actors, big.cpus) == (8, 4.0)
    assert actor_plan(16, 0, 3).cpus == 2.0  # whole CPUs above one (Ray refuses 2.67)
    gpus = actor_plan(32, 4, None)
    assert (gpus.actors, gpus.gpus) == (4, 1.0) and gpus.cpus <= 1
    assert actor_plan(32, 4, 2).actors == 2


def ray_case(tmp_path: Path) -> None:
    """The local engine's index, then a Ray run interrupted after 3 chunks and resumed on Ray with
    two fractional-CPU actors: the same table and metadata, skipped files listed, no hooks left."""
    tiny = wrap_module(make_tiny_cnn(), TINY_SPEC, device="cpu")
    folder = _folder(tmp_path / "imgs", [random_image(20, 20, seed=s) for s in range(40)])
    (folder / "notes.txt").write_text("not an image")
    local = tmp_path / "local.parquet"
    mine(tiny, TINY_LAYERS, folder, k=4, out=local, batch_size=6, workers=1)

    out = tmp_path / "ray.parquet"
    progress, calls = raise_on_call(3, RerunLike)
    with pytest.raises(RerunLike):
        mine(tiny, TINY_LAYERS, folder, k=4, out=out, batch_size=6, engine="ray", progress=progress)
    _, done, _ = ix.load_checkpoint(ix.checkpoint_path(out))
    assert calls["n"] == 3 and done.sum() == 3 and not done.all()
    # resumed on Ray with two fractional-CPU actors (two 1-CPU actors would starve the decode tasks)
    mine(tiny, TINY_LAYERS, folder, k=4, out=out, batch_size=6, engine="ray", actors=2)
    assert table_of(out).equals(table_of(local))
    assert ix.read_index(out).meta == ix.read_index(local).meta
    assert ix.read_index(out).meta["skipped"][0]["image"] == "notes.txt"
    assert hook_count(tiny.module) == 0


@pytest.mark.slow
def test_ray_engine_equals_local_engine_and_resumes(tmp_path):
    """``ray_case`` in a process of its own: a Ray that fails (its driver can exit the process
    when the local cluster dies) is then this test's failure, with Ray's output, and not the end
    of the whole test session."""
    pytest.importorskip("ray", reason="Ray is an optional extra: make test installs requirements-test.txt")
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], cwd=tests.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "RAY CASE PASSED" in proc.stdout, (
        f"exit code {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}\n"
        f"--- stderr ---\n{proc.stderr[-6000:]}")


if __name__ == "__main__":
    ray_case(Path(sys.argv[1]))
    print("RAY CASE PASSED", flush=True)
