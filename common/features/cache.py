"""A site's feature cache: one row of frozen-base features per image content, in shard files.

Rows are keyed by the SHA-256 of the image's bytes under a namespace that names everything
else the features depend on (base fingerprint, which covers weights, preprocessing, input
size and layer; the augmentation view). Each extraction chunk is one shard written
atomically, so an interrupted extraction keeps the chunks it finished and a reader never
sees half a file. Folders are 0700 and files 0600: the features are as private as the images.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.storage import write_atomically

MAX_SHARDS = 32  # more than this and they are merged into one on the next write


def namespace(fingerprint: str, view: str) -> str:
    """The folder name for features of ``view`` under the base ``fingerprint``."""
    return hashlib.sha256(f"{fingerprint}|{view}".encode()).hexdigest()[:24]


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class FeatureCache:
    """Features by image digest, on disk in ``folder`` or, when it is None, in memory only."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._rows: dict[str, np.ndarray] = {}
        self.bad: set[str] = set()
        if folder is not None and folder.is_dir():
            for shard in self._shards():
                self._read(shard)

    def _shards(self) -> list[Path]:
        assert self.folder is not None
        return sorted(self.folder.glob("shard-*.npz"))

    def _read(self, shard: Path) -> None:
        try:
            with np.load(shard, allow_pickle=False) as data:
                keys, rows, bad = data["keys"], data["features"], data["bad"]
        except FileNotFoundError:
            return  # merged away by a concurrent writer; its rows are in the merged shard
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            shard.unlink(missing_ok=True)  # a damaged shard is dropped and its rows recomputed
            return
        if rows.ndim != 2 or len(rows) != len(keys):
            shard.unlink(missing_ok=True)
            return
        self._rows.update(zip((str(k) for k in keys), rows))
        self.bad.update(str(k) for k in bad)

    def __contains__(self, digest: str) -> bool:
        return digest in self._rows

    def get(self, digests: Sequence[str]) -> np.ndarray:
        """Stacked rows for ``digests`` (all must be present)."""
        return np.stack([self._rows[d] for d in digests]).astype(np.float32, copy=False)

    def add(self, digests: Sequence[str], features: np.ndarray, bad: Sequence[str] = ()) -> None:
        """Keep ``features`` (one row per digest) and the digests of unreadable images."""
        self._rows.update(zip(digests, features))
        self.bad.update(bad)
        if self.folder is None:
            return
        private_dir(self.folder)
        self._write(digests, features, bad)
        shards = self._shards()
        if len(shards) > MAX_SHARDS:
            keys = list(self._rows)
            merged = self._write(keys, np.stack([self._rows[k] for k in keys]), sorted(self.bad))
            for shard in shards:
                if shard != merged:
                    shard.unlink(missing_ok=True)

    def _write(self, digests: Sequence[str], features: np.ndarray, bad: Sequence[str]) -> Path:
        assert self.folder is not None
        path = self.folder / f"shard-{os.getpid()}-{os.urandom(6).hex()}.npz"
        arrays = {"keys": np.asarray(list(digests), dtype="U64"),
                  "features": np.asarray(features, dtype=np.float32).reshape(len(digests), -1),
                  "bad": np.asarray(list(bad), dtype="U64")}
        write_atomically(path, lambda handle: np.savez(handle, **arrays))
        return path


class DigestMemo:
    """Content digests remembered by (item, size:mtime) so unchanged files are not re-read.

    The same trade git's index makes: a file rewritten with its old size and mtime to the
    nanosecond keeps its old digest.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.known: dict[tuple[str, str], str] = {}
        if path is not None and path.exists():
            try:
                with np.load(path, allow_pickle=False) as data:
                    self.known = {(str(i), str(s)): str(d) for i, s, d in
                                  zip(data["items"], data["stamps"], data["digests"])}
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                path.unlink(missing_ok=True)

    def save(self, items: Sequence[str], stamps: Sequence[str], digests: Sequence[str]) -> None:
        if self.path is None:
            return
        fresh = {(i, s): d for i, s, d in zip(items, stamps, digests)}
        if all(self.known.get(key) == d for key, d in fresh.items()):
            return
        self.known.update(fresh)
        keys = list(self.known)
        arrays = {"items": np.asarray([k[0] for k in keys], dtype=str),
                  "stamps": np.asarray([k[1] for k in keys], dtype=str),
                  "digests": np.asarray([self.known[k] for k in keys], dtype="U64")}
        private_dir(self.path.parent)
        write_atomically(self.path, lambda handle: np.savez(handle, **arrays))
