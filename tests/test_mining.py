"""Mining (vizkit.mine): the index equals top_patches channel by channel (an independent ranking,
one pass per channel), resumes to the same index after an interruption or a kill, skips and lists
unreadable files, refuses bad layers and empty folders, and a stale index never fits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_interrupts import RerunLike, raise_on_call

from support import random_image
from vizkit.cli import main
from vizkit.core.hooks import hook_count
from vizkit.methods.patches import top_patches
from vizkit.mining import index as ix
from vizkit.mining.engine import mine
from vizkit.models.weights import weights_hash

ROOT = Path(__file__).resolve().parent.parent
TINY_LAYERS = ["conv1", "relu1", "pool1", "conv2", "relu2"]


def _images(n: int, size: int = 16, seed: int = 0) -> list[np.ndarray]:
    return [random_image(size, size, seed=seed + s) for s in range(n)]


def _folder(path: Path, images: list[np.ndarray]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(path / f"img{i:03d}.png")
    return path


def assert_matches_top_patches(m, index, dataset, layer: str, channels, k: int, names=None) -> None:
    """The index's winners of each channel are top_patches's: images, order, scores, units."""
    for channel in channels:
        expected = top_patches(m, layer, channel, dataset, k=k)
        got = index.top(layer, channel)
        if names is None:
            assert [w.image_index for w in got] == expected.indices.tolist(), (layer, channel)
        else:
            assert [w.image for w in got] == [names[i] for i in expected.indices], (layer, channel)
        assert np.array_equal(np.float32([w.score for w in got]), expected.scores), (layer, channel)
        assert [w.unit for w in got] == [tuple(u) for u in expected.units.tolist()], (layer, channel)
        assert [w.rank for w in got] == list(range(len(got)))


def table_of(path: Path):
    return pq.read_table(path).replace_schema_metadata(None)


def test_index_equals_top_patches_for_every_channel_of_every_layer(tiny):
    images = _images(45)
    index = mine(tiny, TINY_LAYERS, images, k=4, batch_size=8, workers=0)
    assert index.complete and index.layers == TINY_LAYERS
    assert index.meta["layers"]["relu2"] == [6, 8, 8]
    for layer in TINY_LAYERS:
        channels = index.meta["layers"][layer][0]
        assert_matches_top_patches(tiny, index, images, layer, range(channels), k=4)
    # one row per (layer, channel, rank), no more
    assert index.table.num_rows == 4 * (4 + 4 + 4 + 6 + 6)
    assert hook_count(tiny.module) == 0


def test_folder_index_names_files_and_matches_top_patches(tiny, tmp_path):
    images = _images(30, size=20)  # not the model's size: resized in the workers
    folder = _folder(tmp_path / "imgs", images)
    out = tmp_path / "index.parquet"
    index = mine(tiny, "relu2,pool1", folder, k=5, out=out, batch_size=7, workers=2)
    assert ix.read_index(out).layers == ["relu2", "pool1"]  # the order asked for, kept on disk
    names = sorted(p.name for p in folder.iterdir())
    assert_matches_top_patches(tiny, ix.read_index(out), folder, "relu2", range(6), k=5, names=names)
    assert_matches_top_patches(tiny, index, folder, "pool1", [0, 3], k=5, names=names)
    # content hashes are the files' sha256
    import hashlib

    for w in index.top("relu2", 2):
        assert w.content_hash == hashlib.sha256((folder / w.image).read_bytes()).hexdigest()
    # the patches of a folder index come from its files, checked against their hashes
    on_disk = ix.read_index(out)
    got = on_disk.top_patches(tiny, "relu2", 2, projections=True)
    want = top_patches(tiny, "relu2", 2, folder, k=5)
    for a, b in [(got.patches, want.patches), (got.projections, want.projections)]:
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    first = folder / on_disk.top("relu2", 2)[0].image
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(first)
    with pytest.raises(ix.StaleIndexError, match="changed since"):
        on_disk.top_patches(tiny, "relu2", 2)
    assert not ix.checkpoint_path(out).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


@pytest.mark.slow
def test_trained_fashion_zf_several_channels(fashion):
    from vizkit.data.scenes import bundled_subset

    scenes = bundled_subset().images[:128]
    index = mine(fashion, ["features.relu3", "features.pool4"], scenes, k=9, batch_size=64, workers=1)
    assert_matches_top_patches(fashion, index, scenes, "features.relu3", [0, 9, 77, 159], k=9)
    assert_matches_top_patches(fashion, index, scenes, "features.pool4", [3, 100], k=9)
    # patches from the index equal top_patches's crops and projections
    from vizkit.methods.patches import top_patches as live

    from_index = index.top_patches(fashion, "features.relu3", 9, images=scenes, projections=True)
    expected = live(fashion, "features.relu3", 9, scenes, k=9)
    for got, want in [(from_index.patches, expected.patches), (from_index.projections, expected.projections)]:
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert np.array_equal(from_index.boxes, expected.boxes)


def test_workers_and_batching_do_not_change_the_index(tiny, tmp_path):
    images = _images(40)
    a = mine(tiny, TINY_LAYERS, images, k=3, batch_size=16, workers=0)
    b = mine(tiny, TINY_LAYERS, images, k=3, batch_size=16, workers=2)
    assert a.table.equals(b.table)
    c = mine(tiny, TINY_LAYERS, images, k=3, batch_size=40, workers=0)
    assert c.table.equals(a.table)  # this CPU's convolutions do not depend on the batch


def test_resume_after_an_interruption_gives_the_same_index(tiny, tmp_path):
    folder = _folder(tmp_path / "imgs", _images(50))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    whole = tmp_path / "whole.parquet"
    mine(tiny, TINY_LAYERS, folder, k=4, out=whole, batch_size=6, workers=0)

    out = tmp_path / "resumed.parquet"
    progress, calls = raise_on_call(4, RerunLike)
    with pytest.raises(RerunLike):
        mine(tiny, TINY_LAYERS, folder, k=4, out=out, batch_size=6, workers=0, progress=progress,
             checkpoint_every=3600)
    assert calls["n"] == 4 and not out.exists()
    ckpt = ix.checkpoint_path(out)
    _, done, saved = ix.load_checkpoint(ckpt)
    assert done.sum() == 4 and not done.all()  # written on the way out, at the last whole chunk
    # memory and checkpoint hold channels × k winners, not images
    assert len(saved["images"]) <= 4 * sum(ix.read_index(whole).meta["layers"][n][0] for n in TINY_LAYERS)
    seen = []
    mine(tiny, TINY_LAYERS, folder, k=4, out=out, batch_size=6, workers=0,
         progress=lambda done, total: seen.append(done))
    assert seen[0] == 5 * 6  # resumed after the 4 done chunks (24 of 51 files), not from the start
    assert table_of(out).equals(table_of(whole))
    assert ix.read_index(out).meta == ix.read_index(whole).meta
    assert not ckpt.exists()
    assert hook_count(tiny.module) == 0


def test_stop_returns_a_partial_index_and_a_resumable_checkpoint(tiny, tmp_path):
    images = _images(30)
    out = tmp_path / "i.parquet"
    partial = mine(tiny, ["relu2"], images, k=3, out=out, batch_size=5, workers=0,
                   progress=lambda done, total: done < 10)
    assert not partial.complete and not out.exists() and ix.checkpoint_path(out).exists()
    assert partial.meta["dataset"]["readable"] == 10
    full = mine(tiny, ["relu2"], images, k=3, out=out, batch_size=5, workers=0)
    assert full.complete and full.table.equals(mine(tiny, ["relu2"], images, k=3, batch_size=5).table)


def test_a_checkpoint_of_another_job_is_refused_and_restart_deletes_it(tiny, tmp_path):
    images = _images(20)
    out = tmp_path / "i.parquet"
    mine(tiny, ["relu2"], images, k=3, out=out, batch_size=5, workers=0, progress=lambda d, t: False)
    with pytest.raises(ValueError, match="another job.*k"):
        mine(tiny, ["relu2"], images, k=4, out=out, batch_size=5, workers=0)
    index = mine(tiny, ["relu2"], images, k=4, out=out, batch_size=5, workers=0, resume=False)
    assert index.complete and index.meta["k"] == 4


KILL_SCRIPT = """
import sys, time
sys.path[:0] = [{tests!r}, {root!r}]
from support import TINY_SPEC, make_tiny_cnn
from vizkit.models.registry import wrap_module
from vizkit.mining.engine import mine
m = wrap_module(make_tiny_cnn(), TINY_SPEC, device="cpu")
slow = lambda done, total: time.sleep(0.3)  # time for the test to kill it half-way
mine(m, {layers!r}, {folder!r}, k=4, out={out!r}, batch_size=4, workers=1, checkpoint_every=0,
     progress=slow if {slow!r} else None)
"""


@pytest.mark.slow
def test_resume_after_the_process_is_killed(tiny, tmp_path):
    folder = _folder(tmp_path / "imgs", _images(60))
    out = tmp_path / "killed.parquet"
    ckpt = ix.checkpoint_path(out)
    script = KILL_SCRIPT.format(tests=str(ROOT / "tests"), root=str(ROOT), layers=TINY_LAYERS,
                                folder=str(folder), out=str(out), slow=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists() and ix.load_checkpoint(ckpt)[1].sum() >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # no finally, no cleanup: only periodic checkpoints survive
    finally:
        proc.wait(timeout=60)
    _, done, _ = ix.load_checkpoint(ckpt)
    assert 3 <= done.sum() < len(done) and not out.exists()
    resumed = mine(tiny, TINY_LAYERS, folder, k=4, out=out, batch_size=4, workers=1)
    whole = mine(tiny, TINY_LAYERS, folder, k=4, batch_size=4, workers=0)
    assert resumed.table.equals(whole.table)
    assert table_of(out).equals(whole.table)


def test_unreadable_files_are_skipped_counted_and_listed(tiny, tmp_path):
    images = _images(12)
    folder = _folder(tmp_path / "imgs", images)
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    good = (folder / "img000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    sub = folder / "more"
    sub.mkdir()
    Image.fromarray(random_image(16, 16, seed=99)).save(sub / "deep.png")
    out = tmp_path / "i.parquet"
    index = mine(tiny, ["relu2"], folder, k=3, out=out, batch_size=4, workers=1)
    meta = ix.read_index(out).meta
    assert meta["dataset"]["readable"] == 13 and meta["dataset"]["skipped"] == 3
    reasons = {e["image"]: e["reason"] for e in meta["skipped"]}
    assert set(reasons) == {"notes.txt", "empty.png", "truncated.png"}
    assert "text file" in reasons["notes.txt"] and "empty" in reasons["empty.png"]
    assert "truncated" in reasons["truncated.png"]
    # recursive: the image in the subfolder is mined too; names are relative paths
    names = {row for row in index.table["image"].to_pylist()}
    assert names <= {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}


def test_clear_errors_for_bad_input(tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no files"):
        mine(tiny, ["relu2"], empty)
    with pytest.raises(ValueError, match="not found"):
        mine(tiny, ["relu2"], tmp_path / "missing")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match="None of the 1 items.*text file"):
        mine(tiny, ["relu2"], junk, workers=0)
    with pytest.raises(ValueError, match="Valid layers.*relu2"):
        mine(tiny, ["relu2", "relu9"], _images(3))
    with pytest.raises(ValueError, match="'fc'.*C×h×w"):
        mine(tiny, ["fc"], _images(3))
    with pytest.raises(ValueError, match="No layers"):
        mine(tiny, "", _images(3))
    with pytest.raises(ValueError, match="k must"):
        mine(tiny, ["relu2"], _images(3), k=0)
    with pytest.raises(ValueError, match="engine"):
        mine(tiny, ["relu2"], _images(3), engine="spark")
    assert hook_count(tiny.module) == 0


def test_fewer_images_than_k(tiny):
    index = mine(tiny, ["relu2"], _images(3), k=9, workers=0)
    assert [len(index.top("relu2", c)) for c in range(6)] == [3] * 6


def test_a_stale_index_never_fits(tiny, tmp_path):
    images = _images(20)
    out = tmp_path / "tiny.parquet"
    mine(tiny, ["relu2"], images, k=3, out=out, workers=0)
    good = weights_hash(tiny.module)
    assert ix.find_index("tiny", good, "relu2", places=[tmp_path]) is not None
    assert ix.find_index("tiny", good, "relu1", places=[tmp_path]) is None  # layer not mined
    assert ix.find_index("other", good, "relu2", places=[tmp_path]) is None
    original = tiny.module.conv2.weight[0, 0, 0, 0].item()
    with torch.no_grad():
        tiny.module.conv2.weight[0, 0, 0, 0] += 1e-3  # "retrained"
    assert weights_hash(tiny.module) != good
    assert ix.find_index("tiny", weights_hash(tiny.module), "relu2", places=[tmp_path]) is None
    with pytest.raises(ValueError, match="current weights"):
        ix.read_index(out).top_patches(tiny, "relu2", 0, images=images)
    # the images changed (a regenerated dataset): the hashes say so
    with torch.no_grad():
        tiny.module.conv2.weight[0, 0, 0, 0] = original
    index = ix.find_index("tiny", weights_hash(tiny.module), "relu2", places=[tmp_path])
    assert index is not None
    changed = [img.copy() for img in images]
    for img in changed:
        img[0, 0, 0] ^= 1
    with pytest.raises(ix.StaleIndexError, match="regenerated"):
        index.top_patches(tiny, "relu2", 0, images=changed)
    result = index.top_patches(tiny, "relu2", 0, images=images)
    assert result.projections is None and len(result.patches) == 3


def test_weights_hash_follows_in_place_changes(tiny):
    before = weights_hash(tiny.module)
    assert weights_hash(tiny.module) == before
    state = {k: v.clone() for k, v in tiny.module.state_dict().items()}
    state["fc.bias"] += 1
    tiny.module.load_state_dict(state)
    assert weights_hash(tiny.module) != before


def test_index_file_is_parquet_with_the_documented_schema(tiny, tmp_path):
    out = tmp_path / "i.parquet"
    mine(tiny, ["relu2"], _images(10), k=2, out=out, workers=0, description="ten random images")
    schema = pq.read_schema(out)
    assert schema.names == ix.SCHEMA.names
    meta = json.loads(schema.metadata[ix.META_KEY])
    assert meta["model"] == "tiny" and meta["k"] == 2
    assert meta["dataset"]["description"] == "ten random images"
    assert meta["weights_hash"] == weights_hash(tiny.module) and meta["complete"] is True
    with pytest.raises(ValueError, match="not a vizkit mining index"):
        pq.write_table(table_of(out), tmp_path / "plain.parquet")
        ix.read_index(tmp_path / "plain.parquet")
    (tmp_path / "bad.parquet").write_text("nope")
    with pytest.raises(ValueError, match="not a readable mining index"):
        ix.read_index(tmp_path / "bad.parquet")


def test_cli_mines_a_folder_and_reports_errors(tmp_path, capsys):
    folder = _folder(tmp_path / "imgs", _images(8, size=64))
    (folder / "bad.jpg").write_text("not a jpeg")
    out = tmp_path / "fz.parquet"
    code = main(["mine", "--model", "fashion-zf", "--weights", "none", "--layers",
                 "features.relu1,features.relu2", "--images", str(folder), "--out", str(out),
                 "--k", "3", "--device", "cpu", "--workers", "0"])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert "8 images; 1 skipped" in text.out and "bad.jpg" in text.out
    index = ix.read_index(out)
    assert index.model == "fashion-zf" and index.layers == ["features.relu1", "features.relu2"]
    code = main(["mine", "--weights", "none", "--layers", "features.nope", "--images", str(folder),
                 "--out", str(tmp_path / "x.parquet"), "--device", "cpu"])
    assert code == 2 and "features.relu1" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["mine", "--weights", "none", "--layers", "features.relu1", "--images", str(empty),
                 "--out", str(tmp_path / "y.parquet"), "--device", "cpu"])
    assert code == 2 and "no files" in capsys.readouterr().err


REGENERATE = ("python -m vizkit mine --model fashion-zf --layers all "
              "--out assets/indexes/fashion-zf.parquet --restart")


@pytest.mark.slow
def test_the_shipped_index_fits_the_bundled_model_and_scenes(fashion):
    from vizkit.data.scenes import bundled_subset
    from vizkit.methods.receptive_fields import summarize

    index = ix.index_for(fashion, "features.relu5")
    assert index is not None, f"assets/indexes/fashion-zf.parquet is stale; regenerate it: {REGENERATE}"
    assert index.path == ix.INDEX_DIR / "fashion-zf.parquet"
    spatial = [row.name for row in summarize(fashion) if len(row.output_shape) == 3]
    assert index.layers == spatial  # every layer the Activations page offers
    scenes = bundled_subset()
    assert index.meta["dataset"]["readable"] == len(scenes) == 1000
    assert_matches_top_patches(fashion, index, scenes, "features.relu2", [5], k=9)
    assert_matches_top_patches(fashion, index, scenes, "features.relu5", [100, 255], k=9)
