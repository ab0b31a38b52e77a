"""A site's privacy ledger: what it has spent, written before any update leaves the site.

One JSON file in the site's state folder holds the site's budget and, per run, the DP-SGD
mechanism it ran (sampling rate, noise multiplier, steps so far) and the Gaussian releases of
its count and figures. The site's total spending composes every run's mechanisms in one
accountant, so the budget holds across runs and restarts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.accounting import ACCOUNTANTS, Mechanism, composed_epsilon
from common.errors import ConfigError, DataError
from common.release import count_mechanism, metric_mechanism
from common.storage import write_json_atomically

LEDGER_FILE = "privacy-ledger.json"


@dataclass(frozen=True)
class SiteBudget:
    """The most a site will ever spend, over all runs, as (epsilon, delta) under an accountant."""

    epsilon: float
    delta: float = 1e-5
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise ConfigError(f"the site's budget must be a positive epsilon. Found {self.epsilon}.")
        if not 0 < self.delta < 1:
            raise ConfigError(f"the site's delta must be in (0, 1). Found {self.delta}.")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be one of {ACCOUNTANTS}. Found {self.accountant!r}.")


@dataclass(frozen=True)
class RunSpending:
    """One run at one site: its DP-SGD mechanism and steps, and what else it released.

    ``public_count`` is the training-example count the site released (exact, rounded or
    noised with std ``count_noise``); ``metric_releases`` noised (correct, total) pairs of
    std ``metric_noise`` went out so far. ``epsilon`` composes all of it.
    """

    sampling_rate: float
    noise_multiplier: float
    steps: int
    epsilon: float
    delta: float
    target_epsilon: float
    accountant: str
    public_count: int = 0
    count_noise: float = 0.0  # 0: the count was not noised (exact or rounded: not DP)
    metric_noise: float = 0.0
    metric_releases: int = 0

    @property
    def mechanism(self) -> Mechanism:
        """The DP-SGD steps alone."""
        return Mechanism(self.sampling_rate, self.noise_multiplier, self.steps)

    @property
    def mechanisms(self) -> list[Mechanism]:
        """Everything this run released under DP: the steps, the count, the figures."""
        extra = [count_mechanism("noised", self.count_noise) if self.count_noise else None,
                 metric_mechanism(self.metric_noise, self.metric_releases)]
        return [self.mechanism, *(m for m in extra if m is not None)]


@dataclass(frozen=True)
class LedgerSummary:
    """What `fedtl budget` prints."""

    state: str
    budget: float | None
    delta: float | None
    accountant: str | None
    spent: float
    remaining: float | None
    runs: dict[str, dict[str, Any]]


class PrivacyLedger:
    """JSON file in the site's state folder; replaced atomically on each write."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LEDGER_FILE

    def _read(self) -> tuple[SiteBudget | None, dict[str, RunSpending]]:
        if not self.path.exists():
            return None, {}
        try:
            raw = json.loads(self.path.read_text())
            budget = SiteBudget(**raw["budget"]) if raw.get("budget") else None
            runs = {key: RunSpending(**value) for key, value in raw["runs"].items()}
            return budget, runs
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            # Never guess at spending: a damaged ledger stops the site until someone looks.
            raise DataError(f"privacy ledger {self.path} is unreadable ({exc}); restore it "
                            "from a backup before this site trains again") from exc

    def _write(self, budget: SiteBudget | None, runs: dict[str, RunSpending]) -> None:
        write_json_atomically(self.path, {
            "budget": asdict(budget) if budget else None,
            "runs": {k: asdict(v) for k, v in runs.items()},
        })

    def runs(self) -> dict[str, RunSpending]:
        return self._read()[1]

    def budget(self) -> SiteBudget | None:
        return self._read()[0]

    def get(self, run_key: str) -> RunSpending | None:
        return self.runs().get(run_key)

    def set_budget(self, budget: SiteBudget) -> None:
        _, runs = self._read()
        self._write(budget, runs)

    def record(self, run_key: str, spending: RunSpending,
               budget: SiteBudget | None = None) -> None:
        """Store ``run_key``'s spending (and the budget it was checked against) in one write."""
        old_budget, runs = self._read()
        runs[run_key] = spending
        self._write(budget or old_budget, runs)

    def prior(self, run_key: str) -> list[Mechanism]:
        """The mechanisms of every run except ``run_key``."""
        return [m for key, s in self.runs().items() if key != run_key for m in s.mechanisms]

    def spent(self, budget: SiteBudget) -> float:
        """Epsilon at the budget's delta of all runs composed."""
        return composed_epsilon([m for s in self.runs().values() for m in s.mechanisms],
                                delta=budget.delta, accountant=budget.accountant)

    def summary(self) -> LedgerSummary:
        budget, runs = self._read()
        per_run = {key: asdict(s) for key, s in runs.items()}
        if budget is None:
            # No budget recorded: compose at the smallest delta any run used (the larger epsilon).
            delta = min((s.delta for s in runs.values()), default=1e-5)
            spent = composed_epsilon([m for s in runs.values() for m in s.mechanisms],
                                     delta=delta)
            return LedgerSummary(state=str(self.path.parent), budget=None, delta=None,
                                 accountant=None, spent=spent, remaining=None, runs=per_run)
        spent = self.spent(budget)
        return LedgerSummary(state=str(self.path.parent), budget=budget.epsilon,
                             delta=budget.delta, accountant=budget.accountant, spent=spent,
                             remaining=max(0.0, budget.epsilon - spent), runs=per_run)
