"""A site's rounds: charged to its ledger before training, declined once the budget is spent."""

import json
from pathlib import Path

import numpy as np
import pytest

from common.config import RunConfig
from common.errors import BudgetExhaustedError, ConfigError, DataError
from common.privacy.ledger import PrivacyLedger, SiteBudget
from common.features.model import initial_head_weights
from common.site import SiteAccount, SiteData, evaluate, sgd_settings, train_round

RNG = np.random.default_rng(0)


def site(n: int = 200) -> SiteData:
    centers = RNG.normal(size=(3, 8)) * 3
    y = RNG.integers(0, 3, n)
    x = (centers[y] + RNG.normal(size=(n, 8))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return SiteData(name="site-a", train_x=x[: n // 2], train_y=y[: n // 2],
                    test_x=x[n // 2:], test_y=y[n // 2:], skipped=(),
                    extraction_seconds=0.0, cache_hit=True)


CFG = RunConfig(classes=("a", "b", "c"), rounds=3, batch_size=50, target_epsilon=2.0,
                head_method="sgd",
                learning_rate=1.0)


def start() -> list[np.ndarray]:
    return initial_head_weights(8, 3, 0, seed=0)


def account(ledger: PrivacyLedger | Path, run: str = "run-1",
            budget: SiteBudget | None = None, cfg: RunConfig = CFG) -> SiteAccount:
    """The site's account for ``run``: by default its budget is the run's own target."""
    ledger = ledger if isinstance(ledger, PrivacyLedger) else PrivacyLedger(ledger)
    return SiteAccount(ledger, run, budget or SiteBudget(cfg.target_epsilon, cfg.delta))


def test_planned_rounds_spend_exactly_the_budget_and_one_more_is_declined(
        tmp_path: Path) -> None:
    data, ledger = site(), PrivacyLedger(tmp_path)
    weights = start()
    spent = []
    for _ in range(CFG.rounds):
        result = train_round(CFG, data, weights, account(ledger, "run-1", cfg=CFG), RNG)
        weights = result.weights
        spent.append(result.epsilon)
    assert spent == sorted(spent) and spent[-1] == pytest.approx(2.0, abs=1e-3)
    assert spent[-1] <= 2.0 + 1e-6
    with pytest.raises(BudgetExhaustedError, match="past the run's target of 2.0"):
        train_round(CFG, data, weights, account(ledger, "run-1", cfg=CFG), RNG)
    entry = ledger.get("run-1")
    assert entry.steps == 3 * sgd_settings(CFG, entry.public_count).steps


def test_a_second_run_fits_what_the_first_left_of_the_site_budget(tmp_path: Path) -> None:
    from common.privacy.ledger import SiteBudget

    data, ledger = site(), PrivacyLedger(tmp_path)
    # Two runs at the first run's noise would compose to epsilon 2.83 (RDP): over 2.5.
    budget = SiteBudget(epsilon=2.5, delta=CFG.delta)
    for run in ("run-1", "run-2"):
        weights = start()
        for _ in range(CFG.rounds):
            weights = train_round(CFG, data, weights, account(ledger, run, budget), RNG).weights
    first, second = ledger.get("run-1"), ledger.get("run-2")
    assert first.epsilon == pytest.approx(2.0, abs=1e-3)
    # The second run was given more noise so that both together stay within 2.5.
    assert second.header.noise_multiplier > first.header.noise_multiplier
    assert second.epsilon < 2.0
    assert ledger.spent(budget) == pytest.approx(2.5, abs=1e-3)
    assert ledger.summary().remaining == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(BudgetExhaustedError, match="site's budget"):
        train_round(CFG, data, start(), account(ledger, "run-3", budget), RNG)
    assert set(ledger.runs()) == {"run-1", "run-2"}  # a declined run charges nothing


def test_the_budget_holds_across_a_restart_of_the_site(tmp_path: Path) -> None:
    from common.privacy.ledger import SiteBudget

    budget = SiteBudget(epsilon=2.0, delta=CFG.delta)
    weights = start()
    for _ in range(CFG.rounds):
        # A new ledger object per round: as if the site process restarted between rounds.
        weights = train_round(CFG, site(), weights, account(tmp_path, "run-1", budget), RNG).weights
    with pytest.raises(BudgetExhaustedError):
        train_round(CFG, site(), weights, account(tmp_path, "run-1", budget), RNG)
    assert PrivacyLedger(tmp_path).summary().spent == pytest.approx(2.0, abs=1e-3)


def test_spending_is_on_disk_before_the_update_is_returned(tmp_path: Path,
                                                           monkeypatch) -> None:
    import common.privacy.dp

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(common.privacy.dp, "train_head", crash)
    with pytest.raises(RuntimeError):
        train_round(CFG, site(), start(), account(tmp_path, "run-1", cfg=CFG), RNG)
    saved = json.loads((tmp_path / "privacy-ledger.json").read_text())
    assert saved["runs"]["run-1"]["epsilon"] > 0


def test_ledger_is_per_run_and_survives_a_new_ledger_object(tmp_path: Path) -> None:
    train_round(CFG, site(), start(), account(tmp_path, "run-1", cfg=CFG), RNG)
    again = PrivacyLedger(tmp_path)
    assert again.get("run-1").steps > 0
    assert again.get("run-2") is None


def test_a_damaged_ledger_stops_the_site(tmp_path: Path) -> None:
    (tmp_path / "privacy-ledger.json").write_text("{not json")
    with pytest.raises(DataError, match="privacy ledger .* is damaged"):
        train_round(CFG, site(), start(), account(tmp_path, "run-1", cfg=CFG), RNG)


def test_a_non_private_round_is_recorded_as_spending_everything(tmp_path: Path) -> None:
    # Only a site whose policy allows runs without DP trains one (common.privacy.policy); its ledger
    # then says the truth: this data's guarantee is gone, and later DP runs decline.
    result = train_round(CFG.replace(dp=False), site(), start(), account(tmp_path), RNG)
    entry = PrivacyLedger(tmp_path).get("run-1")
    assert entry is not None and not entry.private and entry.epsilon == float("inf")
    assert result.epsilon == 0.0  # no DP figure to report to the server
    assert PrivacyLedger(tmp_path).spent(SiteBudget(100.0)) == float("inf")
    with pytest.raises(BudgetExhaustedError):
        train_round(CFG, site(), start(), account(tmp_path, "run-2", SiteBudget(100.0)), RNG)


def test_training_beats_chance_on_separable_features(tmp_path: Path) -> None:
    data, weights = site(), start()
    cfg = CFG.replace(target_epsilon=8.0)
    for _ in range(cfg.rounds):
        weights = train_round(cfg, data, weights, account(tmp_path, "r", cfg=cfg), RNG).weights
    assert evaluate(cfg, data, weights) > 0.6


def test_delta_must_be_below_one_over_n() -> None:
    with pytest.raises(ConfigError, match="1/n"):
        sgd_settings(CFG.replace(delta=0.05), 100)


def test_a_target_the_one_shot_release_leaves_nothing_of_names_ridge_share() -> None:
    cfg = RunConfig(target_epsilon=0.5, ridge_share=0.99)  # ridge+sgd, RDP
    with pytest.raises(ConfigError, match=r"leaves nothing for the DP-SGD steps: .*"
                       r"--ridge-share 0.99 .*compose to [0-9.]+ \(rdp\); lower "
                       r"--ridge-share or raise --target-epsilon \(or --head-method ridge"):
        sgd_settings(cfg, 480)


def test_personalization_is_planned_into_the_noise_and_spends_the_rest_of_the_budget(
        tmp_path: Path) -> None:
    cfg = CFG.replace(personalize=True, personal_epochs=2)
    data, ledger = site(), PrivacyLedger(tmp_path)
    weights = start()
    for _ in range(cfg.rounds):
        result = train_round(cfg, data, weights, account(ledger, "run-p", cfg=cfg), RNG)
        weights = result.weights
    assert result.epsilon < 2.0 - 0.05  # the rounds leave room for the fine-tuning
    assert sgd_settings(cfg, 100).noise_multiplier > sgd_settings(CFG, 100).noise_multiplier
    personal = train_round(cfg, data, weights, account(ledger, "run-p", cfg=cfg), RNG, personal=True)
    assert personal.epsilon == pytest.approx(2.0, abs=1e-3)
    per_round = sgd_settings(cfg, 100).steps
    assert ledger.get("run-p").steps == 3 * per_round + 2 * per_round
    with pytest.raises(BudgetExhaustedError, match="personal fine-tuning"):
        train_round(cfg, data, weights, account(ledger, "run-p", cfg=cfg), RNG, personal=True)


def test_rounds_after_a_one_shot_head_step_at_their_own_learning_rate() -> None:
    cfg = CFG.replace(learning_rate=16.0, ridge_sgd_learning_rate=5.0)
    assert sgd_settings(cfg.replace(head_method="sgd"), 100).learning_rate == 16.0
    assert sgd_settings(cfg.replace(head_method="ridge+sgd"), 100).learning_rate == 5.0
    # FedProx's bound on the proximal step holds for the learning rate the rounds use.
    RunConfig(head_method="ridge+sgd", strategy="fedprox", learning_rate=16.0,
              ridge_sgd_learning_rate=5.0, proximal_mu=0.1)
    with pytest.raises(ConfigError, match="5.0 x 0.25"):
        RunConfig(head_method="ridge+sgd", strategy="fedprox", ridge_sgd_learning_rate=5.0,
                  proximal_mu=0.25)


def test_the_personal_fine_tuning_has_its_own_learning_rate_and_moves_the_bias_unless_told(
        ) -> None:
    cfg = CFG.replace(personalize=True, personal_learning_rate=3.0)
    rounds, personal = sgd_settings(cfg, 100), sgd_settings(cfg, 100, personal=True)
    assert (rounds.learning_rate, rounds.bias_only) == (CFG.learning_rate, False)
    assert (personal.learning_rate, personal.bias_only) == (3.0, True)
    assert personal.noise_multiplier == rounds.noise_multiplier  # one plan for every step
    whole = sgd_settings(cfg.replace(personal_tuning="head"), 100, personal=True)
    assert not whole.bias_only


def test_a_personal_head_reads_back_and_a_foreign_one_is_ignored(tmp_path: Path) -> None:
    from common.personal import load_head, personal_dir, save_head

    folder = personal_dir(tmp_path, "run-1")
    weights = start()
    assert load_head(folder, [w.shape for w in weights]) is None
    save_head(folder, weights)
    again = load_head(folder, [w.shape for w in weights])
    assert again is not None and all(np.array_equal(a, b) for a, b in zip(again, weights))
    assert (folder / "head.npz").stat().st_mode & 0o777 == 0o600  # private to the site
    assert load_head(folder, [(8, 4), (4,)]) is None  # another head shape: train again
    (folder / "head.npz").write_bytes(b"garbage")
    assert load_head(folder, [w.shape for w in weights]) is None


def test_the_noised_count_is_released_once_accounted_and_drives_the_settings(
        tmp_path: Path) -> None:
    from common.privacy.accounting import composed_epsilon

    data, ledger = site(), PrivacyLedger(tmp_path)
    weights = start()
    counts = set()
    for _ in range(CFG.rounds):
        result = train_round(CFG, data, weights, account(ledger, "run-1", cfg=CFG), np.random.default_rng())
        weights = result.weights
        counts.add(result.num_examples)
    entry = ledger.get("run-1")
    assert counts == {entry.public_count}  # drawn once per run, reused every round
    assert abs(entry.public_count - 100) < 6 * CFG.count_noise
    assert entry.last_training.sampling_rate == pytest.approx(
        CFG.batch_size / entry.public_count)
    assert result.settings.expected_batch == pytest.approx(CFG.batch_size)
    # The count's Gaussian query is part of the run's epsilon, and the run still lands on
    # its target: the training noise was calibrated with the count composed in.
    assert [e.kind for e in entry.events] == ["count"] + ["dp-sgd"] * CFG.rounds
    assert entry.events[0].noise_multiplier == CFG.count_noise
    training = [e.mechanism for e in entry.events if e.kind == "dp-sgd"]
    assert composed_epsilon(training, delta=CFG.delta) < entry.epsilon
    assert entry.epsilon == pytest.approx(CFG.target_epsilon, abs=1e-3)


@pytest.mark.parametrize(("mode", "expected"), [("exact", 100), ("rounded", 100)])
def test_exact_and_rounded_counts_spend_nothing_on_the_count(
        tmp_path: Path, mode: str, expected: int) -> None:
    cfg = CFG.replace(example_counts=mode, count_rounding=40)
    result = train_round(cfg, site(), start(), account(tmp_path, "run-1", cfg=cfg), RNG)
    assert result.num_examples == (expected if mode == "exact" else 80)
    assert len(PrivacyLedger(tmp_path).get("run-1").mechanisms) == 1


def test_noised_accuracy_releases_are_planned_charged_and_declined_past_the_plan(
        tmp_path: Path) -> None:
    from common.site import released_accuracies

    cfg = CFG.replace(site_metrics="noised", metric_noise=30.0)
    data, ledger = site(4000), PrivacyLedger(tmp_path)
    weights = start()
    released = []
    for _ in range(cfg.rounds):
        weights = train_round(cfg, data, weights, account(ledger, "run-1", cfg=cfg), RNG).weights
        (accuracy,), weight = released_accuracies(cfg, data, [weights], account(ledger, cfg=cfg), RNG)
        released.append(accuracy)
        assert 0.0 <= accuracy <= 1.0
    entry = ledger.get("run-1")
    figures = [e for e in entry.events if e.kind == "figures"]
    assert entry.metric_releases == cfg.rounds
    assert all(e.noise_multiplier == pytest.approx(30.0 / np.sqrt(2)) for e in figures)
    assert entry.epsilon == pytest.approx(cfg.target_epsilon, abs=1e-3)
    assert weight == round(entry.public_count * cfg.holdout / (1 - cfg.holdout))
    # Noise of std 30 images on 2,000 held-out images: close to the exact accuracy.
    assert released[-1] == pytest.approx(evaluate(cfg, data, weights), abs=0.1)
    with pytest.raises(BudgetExhaustedError, match="held-out accuracy"):
        released_accuracies(cfg, data, [weights], account(ledger, cfg=cfg), RNG)
    assert ledger.get("run-1").metric_releases == cfg.rounds  # the declined one is not charged


def test_a_site_releasing_no_figures_sends_no_accuracy_and_spends_nothing_on_it(
        tmp_path: Path) -> None:
    from common.site import released_accuracies

    cfg = CFG.replace(site_metrics="none")
    data, ledger = site(), PrivacyLedger(tmp_path)
    weights = train_round(cfg, data, start(), account(ledger, "run-1", cfg=cfg), RNG).weights
    before = ledger.get("run-1")
    assert released_accuracies(cfg, data, [weights], account(ledger, cfg=cfg), RNG)[0] == []
    assert ledger.get("run-1") == before


def test_a_site_whose_noise_outweighs_every_gradient_is_told_it_will_not_learn(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from dataclasses import replace

    tiny, usual = sgd_settings(CFG, 3), sgd_settings(CFG, 600)
    assert tiny.noise_multiplier > tiny.expected_batch == 3.0
    assert "exceeds any gradient it averages" in tiny.noise_swamps
    assert usual.noise_swamps is None
    assert replace(tiny, noise_multiplier=3.0).noise_swamps is None  # the bound is the batch
    assert replace(tiny, private=False).noise_swamps is None
    # A deployed site says so in its own log when it plans the run, and trains all the same
    # (exact counts: a noised count of 3 images could come out anywhere from 1 to ~30).
    exact = CFG.replace(example_counts="exact")
    with caplog.at_level("WARNING", logger="fedtl.site"):
        train_round(exact, site(6), start(), account(tmp_path, cfg=exact), RNG)
    assert any("exceeds any gradient" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="fedtl.site"):
        train_round(exact, site(), start(), account(tmp_path / "usual", cfg=exact), RNG)
    assert not any("exceeds any gradient" in r.getMessage() for r in caplog.records)
