"""The server's checkpoint: global head, last completed round, settings and accounting state.

One ``.npz`` file in the run's output folder, replaced atomically after every round, so a
killed server leaves either the previous round's checkpoint or this one, never half of one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError
from common.storage import write_atomically

CHECKPOINT_FILE = "checkpoint.npz"


@dataclass(frozen=True)
class Checkpoint:
    """Everything a restarted server needs to go on after round ``round``."""

    run_id: str
    settings: dict[str, Any]
    round: int
    arrays: list[np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)
    epsilon_by_site: dict[str, float] = field(default_factory=dict)
    skipped_by_site: dict[str, int] = field(default_factory=dict)
    privacy_by_site: dict[str, dict[str, float]] = field(default_factory=dict)
    extract_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    server_state: list[np.ndarray] = field(default_factory=list)  # e.g. FedAdam's moments
    client_dp: dict[str, Any] = field(default_factory=dict)  # client-level DP's releases


def save_checkpoint(out: Path, checkpoint: Checkpoint) -> Path:
    state = asdict(checkpoint)
    arrays = state.pop("arrays")
    payload = {f"array_{i}": a for i, a in enumerate(arrays)}
    payload.update({f"server_{i}": a for i, a in enumerate(state.pop("server_state"))})
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
            server_state = [npz[f"server_{i}"] for i in range(kept)]
        return Checkpoint(arrays=arrays, server_state=server_state, **state)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"server checkpoint {path} is unreadable ({exc}); move it away to "
                          "start the run afresh, or restore it from a backup") from exc


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
