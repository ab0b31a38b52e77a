"""A site's privacy ledger: what it has spent, written before any update leaves the site."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from common.errors import DataError
from common.storage import write_json_atomically

LEDGER_FILE = "privacy-ledger.json"


@dataclass(frozen=True)
class RunSpending:
    """One run's DP-SGD at one site: the mechanism and how many steps it has taken."""

    sampling_rate: float
    noise_multiplier: float
    steps: int
    epsilon: float
    delta: float
    target_epsilon: float
    accountant: str


class PrivacyLedger:
    """JSON file in the site's state folder, keyed by run; replaced atomically on each write."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LEDGER_FILE

    def runs(self) -> dict[str, RunSpending]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {key: RunSpending(**value) for key, value in raw["runs"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            # Never guess at spending: a damaged ledger stops the site until someone looks.
            raise DataError(f"privacy ledger {self.path} is unreadable ({exc}); restore it "
                            "from a backup before this site trains again") from exc

    def get(self, run_key: str) -> RunSpending | None:
        return self.runs().get(run_key)

    def record(self, run_key: str, spending: RunSpending) -> None:
        runs = self.runs()
        runs[run_key] = spending
        write_json_atomically(self.path, {"runs": {k: asdict(v) for k, v in runs.items()}})
