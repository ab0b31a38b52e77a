"""The site's ledger: composed spending across runs, its budget, and damage that stops training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.accounting import Mechanism, composed_epsilon, epsilon, noise_for_budget
from common.errors import ConfigError, DataError
from common.ledger import PrivacyLedger, RunSpending, SiteBudget


def spending(sigma: float, steps: int, q: float = 0.01) -> RunSpending:
    eps = epsilon(sampling_rate=q, noise_multiplier=sigma, steps=steps, delta=1e-5)
    return RunSpending(sampling_rate=q, noise_multiplier=sigma, steps=steps, epsilon=eps,
                       delta=1e-5, target_epsilon=10.0, accountant="rdp")


def test_composing_two_runs_equals_one_run_of_all_their_steps() -> None:
    a = Mechanism(0.01, 1.1, 700)
    assert composed_epsilon([a, Mechanism(0.01, 1.1, 300)], delta=1e-5) == pytest.approx(
        epsilon(sampling_rate=0.01, noise_multiplier=1.1, steps=1000, delta=1e-5), rel=1e-9)
    assert composed_epsilon([], delta=1e-5) == 0.0


def test_composed_spending_is_below_the_sum_of_per_run_epsilons() -> None:
    runs = [spending(1.1, 1000), spending(1.1, 1000)]
    total = composed_epsilon([r.mechanism for r in runs], delta=1e-5)
    assert max(r.epsilon for r in runs) < total < sum(r.epsilon for r in runs)


def test_noise_for_what_is_left_of_a_budget_uses_it_exactly() -> None:
    prior = [Mechanism(0.01, 1.1, 1000)]
    sigma = noise_for_budget(target_epsilon=3.0, delta=1e-5, sampling_rate=0.01, steps=1000,
                             prior=prior)
    total = composed_epsilon([*prior, Mechanism(0.01, sigma, 1000)], delta=1e-5)
    assert total == pytest.approx(3.0, abs=1e-3) and total <= 3.0 + 1e-6


def test_no_noise_fits_a_budget_already_spent() -> None:
    prior = [Mechanism(0.5, 0.6, 1000)]
    with pytest.raises(ConfigError, match="already spend"):
        noise_for_budget(target_epsilon=1.0, delta=1e-5, sampling_rate=0.01, steps=10,
                         prior=prior)


def test_the_summary_reports_spent_and_remaining_of_the_recorded_budget(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    budget = SiteBudget(5.0)
    ledger.set_budget(budget)
    assert ledger.summary().spent == 0.0 and ledger.summary().remaining == 5.0
    ledger.record("r1", spending(1.1, 1000))
    ledger.record("r2", spending(1.1, 1000))
    summary = PrivacyLedger(tmp_path).summary()
    assert summary.budget == 5.0 and set(summary.runs) == {"r1", "r2"}
    assert summary.spent == pytest.approx(
        composed_epsilon([spending(1.1, 1000).mechanism] * 2, delta=1e-5))
    assert summary.remaining == pytest.approx(5.0 - summary.spent)


def test_a_damaged_ledger_stops_the_site_naming_the_file(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    ledger.record("r1", spending(1.1, 10))
    raw = json.loads(ledger.path.read_text())
    raw["runs"]["r1"].pop("steps")
    ledger.path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="privacy-ledger.json"):
        ledger.summary()


@pytest.mark.parametrize("kwargs", [{"epsilon": 0.0}, {"epsilon": 1.0, "delta": 1.0},
                                    {"epsilon": 1.0, "accountant": "moments"}])
def test_an_impossible_site_budget_is_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        SiteBudget(**kwargs)
