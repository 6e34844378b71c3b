"""The mining index (Parquet) and the checkpoints of a running job.

Parquet, because the index is a table read by column and filtered (a layer's rows, a channel's
nine), it is compressed (names and hashes repeat: dictionary encoding), carries its metadata in
its schema, and pyarrow (already installed with Streamlit) reads it without loading torch. One row per
(layer, channel, rank): model, weights_hash, layer, channel, rank, image_index, image (path relative
to the dataset root; empty for in-memory images), content_hash (sha256 of the file, or of the
pixels), unit_y, unit_x (the maximum's position in the layer's map), score (the channel maximum).
The schema metadata (key ``vizkit.mining``) holds the model, the layers' shapes, k, the dataset,
the skipped files with their reasons, and the settings.

Both files are written atomically: to a temporary file in the same folder, then renamed over
the target, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vizkit.core.assets import ASSETS
from vizkit.mining.sources import TEMP_PREFIX, pixels_hash
from vizkit.mining.topk import LayerTopK

FORMAT = "vizkit-mining-1"
META_KEY = b"vizkit.mining"
INDEX_DIR = ASSETS / "indexes"
# Where the app looks for indexes besides INDEX_DIR: files or folders, separated by os.pathsep.
INDEX_PATH_ENV = "VIZKIT_INDEX_PATH"
SCORE_DEFINITION = ("the channel's maximum over positions of the layer's output (its first call in "
                    "the forward), one entry per image; ties by dataset order")

SCHEMA = pa.schema([
    ("model", pa.string()), ("weights_hash", pa.string()), ("layer", pa.string()),
    ("channel", pa.int32()), ("rank", pa.int16()), ("image_index", pa.int64()),
    ("image", pa.string()), ("content_hash", pa.string()),
    ("unit_y", pa.int32()), ("unit_x", pa.int32()), ("score", pa.float32()),
])


class StaleIndexError(ValueError):
    """The index's images are missing or have changed since it was mined."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Calls ``write(tmp)`` for a temporary file beside ``path``, then renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}")
    # Created like any new file (0666 less the umask; mkstemp's 0600 would survive the rename).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class Winner:
    """One row of the index: rank-th strongest image of a channel."""

    rank: int
    image_index: int
    image: str
    content_hash: str
    unit: tuple[int, int]
    score: float


class MiningIndex:
    """A mining index: its table and metadata, read from Parquet or just mined.

    Attributes:
        table: the rows (``SCHEMA``), sorted by layer (mining order), channel, rank.
        meta: the metadata dict (``model``, ``weights_hash``, ``layers`` with shapes, ``k``,
            ``dataset``, ``skipped``, ``settings``, ``complete``).
        path: where it was read from or written to, if anywhere.
    """

    def __init__(self, table: pa.Table, meta: dict, path: Path | None = None):
        self.table, self.meta, self.path = table, meta, path

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def weights_hash(self) -> str:
        return self.meta["weights_hash"]

    @property
    def layers(self) -> list[str]:
        return list(self.meta["layers"])

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete", True))

    def fits(self, model: str, weights_hash: str, layer: str) -> bool:
        """Whether this index was mined from exactly these weights (name and hash) at ``layer``."""
        return self.model == model and self.weights_hash == weights_hash and layer in self.meta["layers"]

    def top(self, layer: str, channel: int) -> list[Winner]:
        """The ranked winners of one channel (at most k)."""
        if layer not in self.meta["layers"]:
            raise ValueError(f"Layer {layer!r} is not in this index; it has {', '.join(self.layers)}.")
        channels = self.meta["layers"][layer][0]
        if not 0 <= int(channel) < channels:
            raise ValueError(f"Channel {channel} is outside layer {layer!r}'s {channels} channels.")
        mask = pc.and_(pc.equal(self.table["layer"], layer), pc.equal(self.table["channel"], int(channel)))
        rows = self.table.filter(mask).sort_by("rank").to_pylist()
        return [Winner(r["rank"], r["image_index"], r["image"], r["content_hash"],
                       (r["unit_y"], r["unit_x"]), r["score"]) for r in rows]

    def load_images(self, winners: Sequence[Winner],
                    images: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """The winners' images, each checked against its content hash.

        Args:
            winners: from ``top``.
            images: the in-memory dataset an ``images`` index was mined from (e.g. the bundled
                scenes); folder indexes read their files under the dataset root.

        Raises:
            StaleIndexError: an image is missing or no longer what was mined.
        """
        from vizkit.core.images import MAX_BYTES, ImageError, load_image

        kind = self.meta["dataset"]["kind"]
        out = []
        for w in winners:
            if kind == "folder":
                path = Path(self.meta["dataset"]["root"]) / w.image
                try:
                    with open(path, "rb") as fh:
                        data = fh.read(MAX_BYTES + 1)  # load_image refuses anything longer
                except OSError as error:
                    raise StaleIndexError(f"{w.image} of the mined folder cannot be read ({error})") from None
                if hashlib.sha256(data).hexdigest() != w.content_hash:
                    raise StaleIndexError(f"{w.image} has changed since the index was mined.")
                try:
                    out.append(load_image(data))
                except ImageError as error:
                    raise StaleIndexError(f"{w.image}: {error}") from None
            else:
                if images is None or not 0 <= w.image_index < len(images):
                    raise StaleIndexError(f"Image {w.image_index} of the mined dataset is not available.")
                img = np.asarray(images[w.image_index])
                if pixels_hash(img) != w.content_hash:
                    raise StaleIndexError(f"Image {w.image_index} is not the one that was mined "
                                          "(the dataset was regenerated?).")
                out.append(img)
        return out

    def top_patches(self, m, layer: str, channel: int, images: Sequence[np.ndarray] | None = None,
                    projections: bool = False):
        """``TopPatches`` of one channel from the index: crops at once, deconvnet only if asked.

        Raises:
            ValueError: the index does not fit ``m`` (name and weights hash) and ``layer``.
            StaleIndexError: the winners' images are missing or changed.
        """
        from vizkit.methods.patches import patches_at
        from vizkit.models.weights import weights_hash

        if not self.fits(m.spec.name, weights_hash(m.module), layer):
            raise ValueError(f"This index was not mined from {m.spec.name}'s current weights "
                             f"at layer {layer!r}.")
        winners = self.top(layer, channel)
        return patches_at(
            m, layer, channel, self.load_images(winners, images),
            scores=[w.score for w in winners], indices=[w.image_index for w in winners],
            units=np.asarray([w.unit for w in winners], dtype=np.int64).reshape(-1, 2),
            projections=projections, dataset_size=self.meta["dataset"]["readable"],
            layer_shape=tuple(self.meta["layers"][layer]), index=str(self.path or ""),
        )


def build_table(model: str, weights: str, tops: dict[str, LayerTopK], shapes: dict[str, tuple],
                images: dict[int, tuple[str, str]]) -> pa.Table:
    """The index rows from the final top-ks (unfilled slots, when fewer than k images, dropped)."""
    from vizkit.mining.topk import EMPTY

    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    for layer, t in tops.items():
        w = shapes[layer][2]
        c, k = t.index.shape
        valid = t.index != EMPTY
        ch, rank = np.nonzero(valid)
        idx = t.index[valid]
        y, x = np.divmod(t.unit[valid], w)
        cols["layer"] += [layer] * len(idx)
        cols["channel"].append(ch)
        cols["rank"].append(rank)
        cols["image_index"].append(idx)
        cols["image"] += [images[int(i)][0] for i in idx]
        cols["content_hash"] += [images[int(i)][1] for i in idx]
        cols["unit_y"].append(y)
        cols["unit_x"].append(x)
        cols["score"].append(t.scores[valid])
    n = len(cols["layer"])
    arrays = {}
    for name in SCHEMA.names:
        if name in ("model", "weights_hash"):
            arrays[name] = [model if name == "model" else weights] * n
        elif name in ("layer", "image", "content_hash"):
            arrays[name] = cols[name]
        else:
            arrays[name] = np.concatenate(cols[name]) if cols[name] else np.zeros(0)
    return pa.Table.from_pydict({k: pa.array(v, type=SCHEMA.field(k).type) for k, v in arrays.items()},
                                schema=SCHEMA)


def write_index(index: MiningIndex, path: str | Path) -> Path:
    """Writes the index atomically (Parquet, metadata in the schema)."""
    table = index.table.replace_schema_metadata({META_KEY: json.dumps(index.meta).encode()})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_index(path: str | Path) -> MiningIndex:
    """Reads an index written by ``write_index`` (``vizkit.mine``)."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"{path.name} is not a readable mining index ({error}).") from None
    meta = _meta_of(table.schema, path)
    return MiningIndex(table.replace_schema_metadata(None), meta, path)


def _meta_of(schema: pa.Schema, path: Path) -> dict:
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path.name} is a Parquet file but not a vizkit mining index.")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path.name} has index format {meta.get('format')!r}; this vizkit reads {FORMAT}.")
    return meta


_META_CACHE: dict[tuple[str, int, int], dict | None] = {}


def _cached_meta(path: Path) -> dict | None:
    """The metadata of a candidate file (None if it is not an index), cached by mtime and size."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _META_CACHE:
        try:
            _META_CACHE[key] = _meta_of(pq.read_schema(path), path)
        except (OSError, ValueError, pa.ArrowException):
            _META_CACHE[key] = None
    return _META_CACHE[key]


def index_places() -> list[Path]:
    """Where indexes are looked for: ``assets/indexes/`` and the entries of ``$VIZKIT_INDEX_PATH``."""
    extra = [Path(p) for p in os.environ.get(INDEX_PATH_ENV, "").split(os.pathsep) if p]
    return [INDEX_DIR, *extra]


def find_index(model: str, weights: str, layer: str,
               places: Iterable[str | Path] | None = None) -> MiningIndex | None:
    """The first complete index mined from ``model`` with weights hash ``weights`` at ``layer``.

    An index whose weights hash differs (the model was retrained) is never returned: its
    patches would belong to other weights.
    """
    for place in index_places() if places is None else [Path(p) for p in places]:
        files = sorted(place.glob("*.parquet")) if place.is_dir() else [place]
        for path in files:
            if path.name.startswith(TEMP_PREFIX):
                continue
            meta = _cached_meta(path)
            if (meta and meta.get("complete", True) and meta["model"] == model
                    and meta["weights_hash"] == weights and layer in meta["layers"]):
                return _cached_index(path)
    return None


_INDEX_CACHE: dict[tuple[str, int, int], MiningIndex] = {}


def _cached_index(path: Path) -> MiningIndex:
    """``read_index`` once per file version (the app asks on every rerun; indexes are read-only)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _INDEX_CACHE:
        for old in [k for k in _INDEX_CACHE if k[0] == key[0]]:
            _INDEX_CACHE.pop(old, None)
        _INDEX_CACHE[key] = read_index(path)
    return _INDEX_CACHE[key]


# ---------------------------------------------------------------- checkpoints


def checkpoint_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".checkpoint.npz")


def save_checkpoint(path: Path, tops: dict[str, LayerTopK], done: np.ndarray, meta: dict) -> None:
    """The running top-ks, which chunks are done, and the job's metadata, written atomically (npz)."""
    arrays = {"done": done}
    for j, t in enumerate(tops.values()):
        arrays[f"s{j}"], arrays[f"i{j}"], arrays[f"u{j}"] = t.scores, t.index, t.unit
    arrays["meta"] = np.array(json.dumps({**meta, "top_layers": list(tops)}))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def load_checkpoint(path: Path) -> tuple[dict[str, LayerTopK], np.ndarray, dict]:
    """What ``save_checkpoint`` wrote (no pickle)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            tops = {name: LayerTopK(z[f"s{j}"], z[f"i{j}"], z[f"u{j}"])
                    for j, name in enumerate(meta.pop("top_layers"))}
            done = z["done"].astype(bool)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"The checkpoint {path} cannot be read ({error}); "
                         "delete it to start over.") from None
    return tops, done, meta


def index_for(m, layer: str, places: Iterable[str | Path] | None = None) -> MiningIndex | None:
    """The index mined from model ``m``'s current weights at ``layer`` (see ``find_index``), or None."""
    from vizkit.models.weights import weights_hash

    with m.lock:  # a method holding the lock may be changing the weights (never for long)
        digest = weights_hash(m.module)
    return find_index(m.spec.name, digest, layer, places)
