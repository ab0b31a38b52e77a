"""The site's ledger: append-only, composed across runs, locked, and stopped by damage."""

from __future__ import annotations

import json
import math
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.privacy.accounting import Mechanism, composed_epsilon, epsilon, noise_for_budget
from common.errors import ConfigError, DataError
from common.privacy.ledger import LedgerEvent, PrivacyLedger, RunHeader, SiteBudget

HEADER = RunHeader(target_epsilon=10.0, delta=1e-5, accountant="rdp", public_count=100,
                   noise_multiplier=1.1)


def charge(ledger: PrivacyLedger, run: str, sigma: float, steps: int, q: float = 0.01) -> None:
    with ledger.transaction() as book:
        book.append(run, [LedgerEvent("dp-sgd", q, sigma, steps)],
                    HEADER if run not in book.runs else None)


def test_composing_two_runs_equals_one_run_of_all_their_steps() -> None:
    a = Mechanism(0.01, 1.1, 700)
    assert composed_epsilon([a, Mechanism(0.01, 1.1, 300)], delta=1e-5) == pytest.approx(
        epsilon(sampling_rate=0.01, noise_multiplier=1.1, steps=1000, delta=1e-5), rel=1e-9)
    assert composed_epsilon([], delta=1e-5) == 0.0


def test_composed_spending_is_below_the_sum_of_per_run_epsilons(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    charge(ledger, "r1", 1.1, 1000)
    charge(ledger, "r2", 1.1, 1000)
    runs = ledger.runs()
    total = ledger.spent(SiteBudget(100.0))
    assert max(r.epsilon for r in runs.values()) < total < sum(r.epsilon for r in runs.values())


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


def test_pld_finds_room_that_rdp_does_not_after_a_one_shot_release_and_a_count() -> None:
    # ridge+sgd at epsilon 1: the release planned at 85 % of it under PLD, the count at 10.
    prior = [Mechanism(1.0, 10.0, 1), Mechanism(1.0, 4.3265, 1)]
    assert composed_epsilon(prior, delta=1e-5, accountant="rdp") > 1.0
    with pytest.raises(ConfigError, match="already spend"):
        noise_for_budget(target_epsilon=1.0, delta=1e-5, sampling_rate=1.0, steps=9,
                         prior=prior)
    sigma = noise_for_budget(target_epsilon=1.0, delta=1e-5, sampling_rate=1.0, steps=9,
                             accountant="pld", prior=prior)
    total = composed_epsilon([*prior, Mechanism(1.0, sigma, 9)], delta=1e-5, accountant="pld")
    assert total <= 1.0 + 1e-9 and total == pytest.approx(1.0, abs=2e-3)


def test_the_summary_reports_spent_and_remaining_of_the_recorded_budget(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    ledger.set_budget(SiteBudget(5.0))
    assert ledger.summary().spent == 0.0 and ledger.summary().remaining == 5.0
    charge(ledger, "r1", 1.1, 1000)
    charge(ledger, "r2", 1.1, 1000)
    summary = PrivacyLedger(tmp_path).summary()
    assert summary.budget == 5.0 and set(summary.runs) == {"r1", "r2"}
    assert summary.spent == pytest.approx(
        composed_epsilon([Mechanism(0.01, 1.1, 1000)] * 2, delta=1e-5))
    assert summary.remaining == pytest.approx(5.0 - summary.spent)


def test_a_changed_setting_is_a_new_event_and_nothing_is_rewritten(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    charge(ledger, "r1", 1.1, 100, q=0.01)
    charge(ledger, "r1", 1.1, 100, q=0.5)  # the server raised the batch size mid-run
    (first, second) = ledger.get("r1").events
    assert (first.sampling_rate, second.sampling_rate) == (0.01, 0.5)
    assert ledger.get("r1").epsilon == pytest.approx(composed_epsilon(
        [Mechanism(0.01, 1.1, 100), Mechanism(0.5, 1.1, 100)], delta=1e-5))


def test_a_transaction_cannot_shrink_or_rewrite_the_ledger(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    charge(ledger, "r1", 1.1, 100)
    before = ledger.path.read_text()
    with pytest.raises(AssertionError, match="shrink or change"):
        with ledger.transaction() as book:
            del book.runs["r1"]
            book.changed = True
    with pytest.raises(AssertionError, match="shrink or change"):
        with ledger.transaction() as book:
            entry = book.runs["r1"]
            book.runs["r1"] = type(entry)(entry.header, ())
            book.changed = True
    assert ledger.path.read_text() == before  # nothing written


def test_a_failed_charge_writes_nothing(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    charge(ledger, "r1", 1.1, 100)
    before = ledger.path.read_text()
    with pytest.raises(RuntimeError):
        with ledger.transaction() as book:
            book.append("r1", [LedgerEvent("dp-sgd", 0.01, 1.1, 100)])
            raise RuntimeError("declined after all")
    assert ledger.path.read_text() == before


def test_a_damaged_ledger_stops_the_site_naming_the_file(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    charge(ledger, "r1", 1.1, 10)
    raw = json.loads(ledger.path.read_text())
    raw["runs"]["r1"]["events"][0].pop("steps")
    ledger.path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="privacy-ledger.json"):
        ledger.summary()


@pytest.mark.parametrize(("field", "value"), [
    ("noise_multiplier", float("nan")), ("noise_multiplier", float("inf")),
    ("sampling_rate", float("nan")), ("sampling_rate", 1.5), ("steps", -3),
    ("steps", 2.5), ("noise_multiplier", 0.0), ("kind", "free-lunch")])
def test_a_field_that_is_not_a_sane_number_is_damage_not_zero(tmp_path: Path, field: str,
                                                              value: object) -> None:
    # A NaN once composed to "nothing spent": now the site stops until someone looks.
    ledger = PrivacyLedger(tmp_path)
    charge(ledger, "r1", 1.1, 10)
    raw = json.loads(ledger.path.read_text())
    raw["runs"]["r1"]["events"][0][field] = value
    ledger.path.write_text(json.dumps(raw))  # json writes NaN and Infinity literally
    with pytest.raises(DataError, match="damaged"):
        ledger.runs()
    with pytest.raises(DataError, match="damaged"):
        charge(ledger, "r1", 1.1, 10)


def test_a_ledger_of_the_first_format_reads_as_the_same_spending(tmp_path: Path) -> None:
    v1 = {"budget": {"epsilon": 5.0, "delta": 1e-5, "accountant": "rdp"},
          "runs": {"old": {"sampling_rate": 0.5, "noise_multiplier": 2.0, "steps": 20,
                           "epsilon": 1.0, "delta": 1e-5, "target_epsilon": 3.0,
                           "accountant": "rdp", "public_count": 90, "count_noise": 10.0,
                           "metric_noise": 30.0, "metric_releases": 4}}}
    (tmp_path / "privacy-ledger.json").write_text(json.dumps(v1))
    entry = PrivacyLedger(tmp_path).get("old")
    assert [e.kind for e in entry.events] == ["dp-sgd", "count", "figures"]
    assert entry.epsilon == pytest.approx(composed_epsilon(
        [Mechanism(0.5, 2.0, 20), Mechanism(1.0, 10.0, 1),
         Mechanism(1.0, 30.0 / math.sqrt(2), 4)], delta=1e-5))
    charge(PrivacyLedger(tmp_path), "new", 1.1, 10)  # written back in the new format
    assert json.loads((tmp_path / "privacy-ledger.json").read_text())["format"] == 2
    assert PrivacyLedger(tmp_path).get("old").events == entry.events


def _charge_many(state: str, run: str, times: int) -> None:
    import time

    ledger = PrivacyLedger(Path(state))
    for _ in range(times):
        with ledger.transaction() as book:
            time.sleep(0.002)  # widen the window between read and write
            book.append(run, [LedgerEvent("dp-sgd", 0.01, 1.1, 1)],
                        HEADER if run not in book.runs else None)


def test_two_processes_charging_one_ledger_at_once_lose_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_charge_many, args=(str(tmp_path), run, 25))
               for run in ("run-a", "run-b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    runs = PrivacyLedger(tmp_path).runs()
    assert set(runs) == {"run-a", "run-b"}
    assert [len(runs[r].events) for r in ("run-a", "run-b")] == [25, 25]


@pytest.mark.parametrize("kwargs", [{"epsilon": 0.0}, {"epsilon": 1.0, "delta": 1.0},
                                    {"epsilon": 1.0, "accountant": "moments"},
                                    {"epsilon": float("nan")}])
def test_an_impossible_site_budget_is_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        SiteBudget(**kwargs)


# --- whatever a server asks, spending only grows and never passes the budget ------------

REQUEST = st.one_of(
    st.tuples(st.just("train"), st.sampled_from(["r1", "r2", "r3"]),
              st.sampled_from([10, 50, 100, 400]),  # batch size: rate 0.1 .. 1
              st.sampled_from([0.3, 1.0, 3.0, 8.0]),  # target epsilon asked
              st.sampled_from([0.5, 1.0, 2.0, 5.0]),  # the noise the planner picks
              st.sampled_from(["exact", "noised"]),  # example counts
              st.booleans()),  # personal fine-tuning
    st.tuples(st.just("figures"), st.sampled_from(["r1", "r2", "r3"]),
              st.sampled_from([5.0, 30.0, 100.0]), st.integers(1, 3)),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(REQUEST, min_size=1, max_size=12))
def test_whatever_the_server_asks_spending_never_decreases_nor_passes_the_budget(
        tmp_path_factory, monkeypatch, requests: list[tuple]) -> None:
    import common.site as site
    from common.config import RunConfig
    from common.errors import BudgetExhaustedError, PolicyRefusedError
    from common.site import SiteAccount, charge as charge_round, charge_releases

    state = tmp_path_factory.mktemp("ledger")
    budget = SiteBudget(4.0)
    ledger = PrivacyLedger(state)
    rng = np.random.default_rng(0)
    spent = 0.0
    for request in requests:
        if request[0] == "train":
            _, run, batch, target, sigma, counts, personal = request
            # Whatever noise the planner picks: the ledger's checks alone keep the promise.
            monkeypatch.setattr(site, "noise_for_budget", lambda **_: sigma)
            cfg = RunConfig(classes=("a", "b"), batch_size=batch, target_epsilon=target,
                            example_counts=counts, rounds=2, personalize=personal)
            call = lambda: charge_round(cfg, "s", 100, SiteAccount(ledger, run, budget),  # noqa: E731
                                        rng, personal)
        else:
            _, run, noise, releases = request
            cfg = RunConfig(classes=("a", "b"), metric_noise=noise, site_metrics="noised")
            call = lambda: charge_releases(cfg, "s", SiteAccount(ledger, run, budget),  # noqa: E731
                                           releases)
        try:
            call()
        except (BudgetExhaustedError, PolicyRefusedError, ConfigError):
            pass
        now = ledger.spent(budget)
        assert now >= spent - 1e-9, "spending went down"
        assert now <= budget.epsilon * (1 + 1e-6), "spending passed the budget"
        for entry in ledger.runs().values():
            assert entry.epsilon <= entry.header.target_epsilon * (1 + 1e-6)
        spent = now


def test_every_write_makes_its_rename_durable(tmp_path: Path, monkeypatch) -> None:
    import os
    import stat

    synced: list[bool] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    charge(PrivacyLedger(tmp_path), "r1", 1.1, 10)
    assert synced == [False, True]  # the file's data, then the folder's new name
