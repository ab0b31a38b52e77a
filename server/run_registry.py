"""The daemon's list of runs it has hosted, so that a restarted daemon relaunches unfinished ones.

One small JSON file per run in ``<server state>/runs/``, written atomically: the run's output
folder and settings, and whether it finished.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.storage import write_json_atomically

# `fedtl server` tells its SuperLink's ServerApps where the daemon keeps its state.
SERVER_STATE_ENV = "FEDTL_SERVER_STATE"
RUNNING, FINISHED, FAILED = "running", "finished", "failed"
# Lost its SuperLink (the daemon died or restarted under it): resumable, unlike a failure.
INTERRUPTED = "interrupted"
RESUMABLE = (RUNNING, INTERRUPTED)


@dataclass(frozen=True)
class RegisteredRun:
    run_id: str
    out: str
    settings: dict[str, Any]
    status: str
    reason: str = ""  # why a failed or interrupted run stopped


class RunRegistry:
    """``<state>/runs/<run id>.json`` for every run the daemon's ServerApp has started."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = Path(state_dir) / "runs"

    def _path(self, run_id: str) -> Path:
        return self.folder / f"{run_id}.json"

    def started(self, run_id: str, out: str, settings: dict[str, Any]) -> None:
        write_json_atomically(self._path(run_id),
                              asdict(RegisteredRun(run_id, out, settings, RUNNING)))

    def finished(self, run_id: str) -> None:
        self._set_status(run_id, FINISHED)

    def failed(self, run_id: str, reason: str = "") -> None:
        """The run stopped on an error that a relaunch would repeat: do not relaunch it."""
        self._set_status(run_id, FAILED, reason)

    def interrupted(self, run_id: str, reason: str = "") -> None:
        """The run lost its link to the SuperLink: a restarted daemon relaunches it and it
        resumes from its checkpoint."""
        self._set_status(run_id, INTERRUPTED, reason)

    def _set_status(self, run_id: str, status: str, reason: str = "") -> None:
        run = self.get(run_id)
        if run is not None:
            write_json_atomically(self._path(run_id),
                                  {**asdict(run), "status": status, "reason": reason[:2000]})

    def get(self, run_id: str) -> RegisteredRun | None:
        path = self._path(run_id)
        if not path.exists():
            return None
        return _read(path)

    def scan(self) -> tuple[list[RegisteredRun], list[str]]:
        """Every readable run file, oldest first, and what is wrong with the others (a
        damaged file is named, left in place and skipped: it never stops the daemon)."""
        if not self.folder.is_dir():
            return [], []
        runs, damaged = [], []
        for path in sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                runs.append(_read(path))
            except (OSError, ValueError, TypeError) as exc:
                damaged.append(f"{path}: {exc}")
        return runs, damaged

    def unfinished(self) -> list[RegisteredRun]:
        """Runs that started and neither finished nor failed (the running and the
        interrupted), oldest first (damaged files skipped)."""
        return [r for r in self.scan()[0] if r.status in RESUMABLE]


def _read(path: Path) -> RegisteredRun:
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    return RegisteredRun(**raw)
