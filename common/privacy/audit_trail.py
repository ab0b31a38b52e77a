"""A site's audit trail: every run it was asked to join, with its settings and the site's
decision, and every approval an operator gave; one JSON line each in ``<state>/audit.jsonl``.

Lines are only ever appended (under the state folder's lock, fsynced). A request repeating a
decision already on record (the same run, settings and outcome) adds nothing, so the trail
lists decisions, not messages.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.privacy.ledger import LOCK_FILE
from common.storage import append_line_durably, exclusive_lock

AUDIT_FILE = "audit.jsonl"
APPROVED = "approved"


@dataclass(frozen=True)
class Decision:
    """One line of the trail."""

    run_id: str
    decision: str  # admitted | tightened | refused | approved
    reason: str = ""
    changes: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)  # the run as the server asked it
    at: float = 0.0

    @property
    def digest(self) -> str:
        """What makes two requests the same decision (time aside)."""
        key = json.dumps([self.run_id, self.decision, self.reason, list(self.changes),
                          self.settings], sort_keys=True, default=str)
        return hashlib.sha256(key.encode()).hexdigest()


class AuditTrail:
    """The ``audit.jsonl`` of one state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = Path(state_dir)
        self.path = self.folder / AUDIT_FILE
        self.lock_path = self.folder / LOCK_FILE

    def record(self, decision: Decision) -> bool:
        """Append ``decision`` unless the same one is on record; True if it was appended."""
        with exclusive_lock(self.lock_path):
            if any(d.digest == decision.digest for d in self._decisions()):
                return False
            stamped = Decision(**{**asdict(decision), "at": decision.at or time.time()})
            append_line_durably(self.path, json.dumps(asdict(stamped), default=str))
            return True

    def approve(self, run_id: str, by: str) -> None:
        """An operator's approval of ``run_id`` (for policies with require-approval)."""
        self.record(Decision(run_id=run_id, decision=APPROVED, reason=f"approved by {by}"))

    def approved(self, run_id: str) -> bool:
        return any(d.decision == APPROVED and d.run_id == run_id for d in self.decisions())

    def decisions(self) -> list[Decision]:
        """Every readable line, oldest first."""
        with exclusive_lock(self.lock_path):
            return self._decisions()

    def damaged_lines(self) -> int:
        """Lines that could not be read (e.g. the last one, cut by a power loss)."""
        if not self.path.exists():
            return 0
        return sum(1 for line in self.path.read_text(errors="replace").splitlines()
                   if line.strip() and _parse(line) is None)

    def _decisions(self) -> list[Decision]:
        if not self.path.exists():
            return []
        parsed = (_parse(line) for line in self.path.read_text(errors="replace").splitlines())
        return [d for d in parsed if d is not None]


def _parse(line: str) -> Decision | None:
    # A damaged line is skipped, never trusted: at worst an approval is lost (the run is then
    # refused), never a refusal turned into an admission.
    try:
        raw = json.loads(line)
        return Decision(run_id=str(raw["run_id"]), decision=str(raw["decision"]),
                        reason=str(raw.get("reason", "")),
                        changes=tuple(str(c) for c in raw.get("changes", ())),
                        settings=dict(raw.get("settings", {})), at=float(raw.get("at", 0.0)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
