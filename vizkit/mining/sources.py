"""What is mined: an ordered list of items, decoded in chunks, each image identified by its content.

A folder's items are its files, recursively, in the order ``sorted(Path.iterdir())`` gives a flat
folder (``top_patches``'s order), so ranks tie-break the same way. Every file goes through
``vizkit.load_image``'s checks; files it refuses are skipped with its reason. Items are read in
chunks of ``chunk_size`` consecutive items: a chunk is one forward batch in every engine, so a
resumed or distributed run batches exactly as an uninterrupted local one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vizkit.core.images import MAX_BYTES, ImageError, load_image
from vizkit.data.scenes import Scenes
from vizkit.models.base import resize_image

# Temporary files of atomic writes start with this, so a job writing inside the folder it
# mines never lists them.
TEMP_PREFIX = ".vizkit-tmp-"


def pixels_hash(img: np.ndarray) -> str:
    """sha256 of an in-memory image: its shape and uint8 pixels (what a scene's content hash is)."""
    arr = np.ascontiguousarray(img)
    return hashlib.sha256(f"{arr.shape}|{arr.dtype}\n".encode() + arr.tobytes()).hexdigest()


@dataclass
class DecodedChunk:
    """The readable images of one chunk at the model's input size, and what could not be read.

    Attributes:
        chunk: chunk number.
        indices: dataset indices of the readable items (ascending).
        images: len(indices)×S×S×3 uint8.
        names: their names (relative paths; empty for in-memory images).
        hashes: their content hashes (sha256 of the file's bytes, or ``pixels_hash``).
        skipped: (index, name, reason) of each unreadable item.
    """

    chunk: int
    indices: np.ndarray
    images: np.ndarray
    names: list[str]
    hashes: list[str]
    skipped: list[tuple[int, str, str]] = field(default_factory=list)


class FolderSource:
    """The image files under a folder, recursively, in name order."""

    kind = "folder"

    def __init__(self, root: str | Path, exclude: Sequence[str | Path] = ()):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"Image folder not found: {root}")
        self.root = root.resolve()
        skip = {Path(p).resolve() for p in exclude}
        files = [p for p in self.root.rglob("*")
                 if p.is_file() and not p.name.startswith(TEMP_PREFIX) and p.resolve() not in skip]
        files.sort(key=lambda p: p.relative_to(self.root).parts)
        if not files:
            raise ValueError(f"The folder {root} has no files to mine.")
        self.names = [p.relative_to(self.root).as_posix() for p in files]

    def __len__(self) -> int:
        return len(self.names)

    def fingerprint(self) -> str:
        """Names, sizes and modification times: a resumed job must see the same files."""
        digest = hashlib.sha256()
        for name in self.names:
            try:
                st = (self.root / name).stat()
                digest.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{name}|missing\n".encode())
        return digest.hexdigest()

    def describe(self) -> dict:
        return {"kind": self.kind, "root": str(self.root), "items": len(self)}

    def read(self, i: int) -> tuple[np.ndarray, str, str]:
        """Item ``i``: (RGB uint8 image, sha256 of the file, name); ``ImageError`` if unreadable."""
        name = self.names[i]
        try:
            with open(self.root / name, "rb") as fh:
                data = fh.read(MAX_BYTES + 1)  # load_image refuses anything longer
        except OSError as error:
            raise ImageError(f"Cannot read the file ({error.strerror or error}).") from None
        return load_image(data), hashlib.sha256(data).hexdigest(), name


class ImagesSource:
    """In-memory images (a ``Scenes`` or an N×H×W×3 array / list), identified by index and pixels."""

    kind = "images"

    def __init__(self, images: Sequence[np.ndarray] | np.ndarray):
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = images[None]
        if len(images) == 0:
            raise ValueError("The dataset has no images.")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for img in self.images:
            digest.update(pixels_hash(img).encode())
        return digest.hexdigest()

    def describe(self) -> dict:
        return {"kind": self.kind, "items": len(self)}

    def read(self, i: int) -> tuple[np.ndarray, str, str]:
        img = np.asarray(self.images[i])
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ImageError(f"Image {i} is not uint8 H×W×3 (shape {img.shape}, {img.dtype}).")
        return img, pixels_hash(img), ""


Source = FolderSource | ImagesSource


def make_source(dataset, exclude: Sequence[str | Path] = ()) -> Source:
    """A source for a folder path, a ``Scenes``, or images (a list or an N×H×W×3 array)."""
    if isinstance(dataset, (FolderSource, ImagesSource)):
        return dataset
    if isinstance(dataset, (str, os.PathLike)):
        return FolderSource(dataset, exclude)
    if isinstance(dataset, Scenes):
        return ImagesSource(dataset.images)
    return ImagesSource(dataset)


def chunk_count(n: int, chunk_size: int) -> int:
    return (n + chunk_size - 1) // chunk_size


def decode_chunk(source: Source, chunk: int, chunk_size: int, input_size: int) -> DecodedChunk:
    """Reads, checks, hashes and resizes the items of ``chunk`` (as ``LoadedModel.resize`` does)."""
    start = chunk * chunk_size
    stop = min(start + chunk_size, len(source))
    indices, images, names, hashes, skipped = [], [], [], [], []
    for i in range(start, stop):
        try:
            img, digest, name = source.read(i)
        except ImageError as error:
            skipped.append((i, source.names[i] if isinstance(source, FolderSource) else "", str(error)))
            continue
        if img.shape[:2] != (input_size, input_size):
            img = resize_image(img, input_size)
        indices.append(i)
        images.append(img)
        names.append(name)
        hashes.append(digest)
    stacked = np.stack(images) if images else np.zeros((0, input_size, input_size, 3), np.uint8)
    return DecodedChunk(chunk, np.asarray(indices, dtype=np.int64), stacked, names, hashes, skipped)


class ChunkDataset(torch.utils.data.Dataset):
    """Chunks as items of a torch ``DataLoader`` (``batch_size=None``): workers decode whole chunks."""

    def __init__(self, source: Source, chunks: Sequence[int], chunk_size: int, input_size: int):
        self.source, self.chunks = source, list(chunks)
        self.chunk_size, self.input_size = chunk_size, input_size

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, j: int) -> DecodedChunk:
        return decode_chunk(self.source, self.chunks[j], self.chunk_size, self.input_size)


def keep_as_is(item):
    """The DataLoader's collate function: a chunk is already a batch (module level: picklable)."""
    return item
