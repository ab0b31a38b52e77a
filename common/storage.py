"""Durable file writes and an inter-process lock: a reader sees the old file or the new one,
never half of one, and a rename survives a power cut."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX keeps names in the directory)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[IO[bytes]], None], mode: int = 0o600) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it, rename it over ``path``
    and fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomically(path: Path, obj: Any, mode: int = 0o600) -> None:
    """Pretty-printed JSON, written atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    write_atomically(path, lambda handle: handle.write(data), mode)


def append_line_durably(path: Path, line: str, mode: int = 0o600) -> None:
    """Append one line to ``path`` and fsync it (callers hold `exclusive_lock`)."""
    path = Path(path)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def cached_arrays(path: Path | None, compute: Callable[[], dict[str, np.ndarray]],
                  sane: Callable[[dict[str, np.ndarray]], bool]) -> dict[str, np.ndarray]:
    """The arrays kept in ``path`` (an .npz) if a readable copy passes ``sane``, else
    ``compute()``'s, kept there for the next process (``path`` None: always computed)."""
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {name: saved[name] for name in saved.files}
            if sane(arrays):
                return arrays
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged copy is computed again
    arrays = compute()
    if path is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        try:
            write_atomically(path, lambda handle: handle.write(buffer.getvalue()))
        except OSError:
            pass  # a cache that cannot be written is only slower next time
    return arrays


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Every process that reads, checks and rewrites a shared state file takes it first, so two
    processes on one state folder cannot lose each other's writes. The kernel drops the lock
    when its holder dies, so a crash never leaves the folder locked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
