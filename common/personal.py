"""A site's own head: fine-tuned with DP from the final global head, kept at the site.

Only its accuracy leaves the site. The head is stored per run in the site's state folder, so
a personalization request repeated after a server restart re-reads it instead of spending
the budget again.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from common.errors import ConfigError
from common.storage import write_atomically

HEAD_FILE = "head.npz"
MODEL_FILE = "model.keras"


def personal_dir(state: Path, run_key: str) -> Path:
    """Where a site keeps its personal head (and Keras model) of run ``run_key``."""
    return run_dir(state, run_key, "personal")


def run_dir(state: Path, run_key: str, kind: str = "runs") -> Path:
    """The site's folder for run ``run_key`` under ``kind`` in its state folder.

    The run key comes from the server: one that would lead out of the state folder is
    refused (callers check its format first; this is the last line).
    """
    root = (Path(state) / kind).resolve()
    folder = (root / run_key).resolve()
    if folder.parent != root:
        raise ConfigError(f"run id {run_key[:40]!r} is not a plain name; refused")
    return folder


def save_head(folder: Path, weights: list[np.ndarray]) -> None:
    """The head's arrays, written atomically, readable by the site only."""
    buffer = io.BytesIO()
    np.savez(buffer, *weights)
    write_atomically(folder / HEAD_FILE, lambda handle: handle.write(buffer.getvalue()))


def load_head(folder: Path, shapes: list[tuple[int, ...]]) -> list[np.ndarray] | None:
    """The saved head if it is there, readable and of ``shapes``; else None (train again)."""
    path = folder / HEAD_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = [data[f"arr_{i}"] for i in range(len(data.files))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if [tuple(w.shape) for w in weights] != [tuple(s) for s in shapes]:
        return None
    return weights
