"""The server's checkpoint: global head, last completed round, settings and accounting state.

One ``.npz`` file in the run's output folder, replaced atomically after every round, so a
killed server leaves either the previous round's checkpoint or this one, never half of one.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError
from common.storage import write_atomically

CHECKPOINT_FILE = "checkpoint.npz"


@dataclass(frozen=True)
class Checkpoint:
    """Everything a restarted server needs to go on after round ``round``: the owners'
    snapshots side by side (the run book's, the server optimizer's, client-level DP's)."""

    run_id: str
    settings: dict[str, Any]
    round: int
    arrays: list[np.ndarray]  # the global head
    book: dict[str, Any] = field(default_factory=dict)  # RunBook.snapshot()
    optimizer: list[np.ndarray] = field(default_factory=list)  # e.g. FedAdam's moments
    client_dp: dict[str, Any] = field(default_factory=dict)  # client-level DP's releases
    one_shot: list[np.ndarray] = field(default_factory=list)  # the summed one-shot release
    elapsed_seconds: float = 0.0


def save_checkpoint(out: Path, checkpoint: Checkpoint) -> Path:
    state = asdict(checkpoint)
    arrays = state.pop("arrays")
    payload = {f"array_{i}": a for i, a in enumerate(arrays)}
    payload.update({f"server_{i}": a for i, a in enumerate(state.pop("optimizer"))})
    payload.update({f"one_shot_{i}": a for i, a in enumerate(state.pop("one_shot"))})
    payload["state"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    path = Path(out) / CHECKPOINT_FILE
    write_atomically(path, lambda handle: np.savez(handle, **payload))
    return path


def load_checkpoint(out: Path) -> Checkpoint | None:
    """The checkpoint in ``out``, or None if there is none."""
    path = Path(out) / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            state = json.loads(npz["state"].tobytes().decode())
            count = sum(1 for key in npz.files if key.startswith("array_"))
            arrays = [npz[f"array_{i}"] for i in range(count)]
            kept = sum(1 for key in npz.files if key.startswith("server_"))
            optimizer = [npz[f"server_{i}"] for i in range(kept)]
            totals = sum(1 for key in npz.files if key.startswith("one_shot_"))
            one_shot = [npz[f"one_shot_{i}"] for i in range(totals)]
        if "book" not in state:
            state = _from_first_format(state)
        state.pop("server_state", None)
        return Checkpoint(arrays=arrays, optimizer=optimizer, one_shot=one_shot, **state)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"server checkpoint {path} is unreadable ({type(exc).__name__}: "
                          f"{exc}); move it away to start the run afresh, or restore it from "
                          "a backup") from exc


def _from_first_format(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint written before the run book owned its state (fields side by side)."""
    book = {"rounds_done": state["round"], "history": state.pop("history", []),
            "privacy": state.pop("privacy_by_site", {}),
            "skipped": state.pop("skipped_by_site", {}),
            "extract_seconds": state.pop("extract_seconds", 0.0)}
    state.pop("epsilon_by_site", None)
    return {**state, "book": book}


def check_resumable(checkpoint: Checkpoint, settings: dict[str, Any]) -> None:
    """Refuse to resume a run under other settings than it started with."""
    # Where and whether features are cached, and where sites compute, do not change the run.
    ignore = {"state", "cache", "ray-address", "gpus-per-site", "cache-dir"}
    differ = sorted(k for k in set(settings) | set(checkpoint.settings)
                    if k not in ignore and settings.get(k) != checkpoint.settings.get(k))
    if differ:
        details = ", ".join(f"{k}: {checkpoint.settings.get(k)!r} -> {settings.get(k)!r}"
                            for k in differ)
        raise ConfigError(
            f"the output folder holds a checkpoint of a run with other settings ({details}); "
            "resume it with the same settings, or choose another output folder")
