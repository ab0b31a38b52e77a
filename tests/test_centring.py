"""--feature-centring site: each site's features centred on its own noised mean, charged once
per run before anything leaves, kept, and folded into the models it saves."""

from pathlib import Path

import numpy as np
import pytest

from common.config import RunConfig
from common.errors import BudgetExhaustedError, ConfigError
from common.features.model import head_logits
from common.privacy.accounting import composed_epsilon
from common.privacy.centring import CLIP_NORM, folded_head, noised_mean
from common.privacy.ledger import PrivacyLedger, SiteBudget
from common.privacy.oneshot import class_sums, embed, public_basis
from common.privacy.release import releases, sums_noise
from common.site import (SiteAccount, SiteData, centred, centring_dir, evaluate,
                         release_sums, released_accuracies, train_round)
from common.features.model import initial_head_weights

RNG = np.random.default_rng(3)
D = 8
CFG = RunConfig(classes=("a", "b", "c"), rounds=3, batch_size=50, target_epsilon=2.0,
                head_method="sgd", learning_rate=1.0, feature_centring="site")


def site(n: int = 200, offset: float = 0.0) -> SiteData:
    centers = np.random.default_rng(0).normal(size=(3, D)) * 3
    y = RNG.integers(0, 3, n)
    x = centers[y] + RNG.normal(size=(n, D))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True) + offset).astype(np.float32)
    return SiteData(name="site-a", train_x=x[: n // 2], train_y=y[: n // 2],
                    test_x=x[n // 2:], test_y=y[n // 2:], skipped=(),
                    extraction_seconds=0.0, cache_hit=True)


def account(tmp_path: Path, run: str = "run-1", cfg: RunConfig = CFG) -> SiteAccount:
    return SiteAccount(PrivacyLedger(tmp_path), run, SiteBudget(cfg.target_epsilon, cfg.delta))


def test_the_mean_is_the_clipped_sum_with_noise_of_the_calibrated_std_over_the_released_count(
        ) -> None:
    x = np.zeros((50, D))
    x[0, 0] = 100.0  # one far row moves the sum by CLIP_NORM at most
    exact = noised_mean(x, 40, 0.0, RNG)
    assert exact[0] == pytest.approx(CLIP_NORM / 40)
    draws = np.stack([noised_mean(x, 40, 3.0, RNG) for _ in range(400)])
    # 3,200 draws: the sample std is within ~1.3 % (1 s.e.); 5 s.e. allowed.
    assert np.std(draws - exact) == pytest.approx(3.0 * CLIP_NORM / 40, rel=0.07)


def test_a_site_joining_a_centred_run_charges_its_feature_sum_once_and_keeps_one_mean(
        tmp_path: Path) -> None:
    data, acc = site(offset=0.5), account(tmp_path)
    weights = initial_head_weights(D, 3, 0, seed=0)
    kept = None
    for _ in range(CFG.rounds):
        weights = train_round(CFG, data, weights, acc, RNG).weights
        mean = np.load(centring_dir(tmp_path, "run-1") / "mean.npy")
        kept = mean if kept is None else kept
        np.testing.assert_array_equal(mean, kept)  # no second draw
    entry = acc.ledger.get("run-1")
    assert [e.kind for e in entry.events].count("centring") == 1
    (event,) = [e for e in entry.events if e.kind == "centring"]
    assert event.noise_multiplier == CFG.centring_noise
    # Planned into the noise: the rounds and the mean's release spend exactly the target.
    assert entry.epsilon == pytest.approx(CFG.target_epsilon, rel=1e-3)
    # The mean is the site's own, within its noise (std 8 * 2 / ~100 per coordinate).
    assert np.linalg.norm(kept - data.train_x.mean(axis=0)) < 0.16 * 5 * np.sqrt(D) / 2
    view = centred(CFG, data, acc)
    np.testing.assert_allclose(view.test_x, data.test_x - kept, rtol=1e-6)
    np.testing.assert_allclose(view.extracted_train_x, data.train_x, atol=1e-6)
    assert centred(CFG, view, acc) is view  # never centred twice


def test_the_release_is_computed_from_features_centred_on_the_kept_mean(
        tmp_path: Path) -> None:
    cfg = CFG.replace(head_method="ridge", dp=False, public_components=D)
    data, acc = site(offset=0.3), account(tmp_path, cfg=cfg)  # norms < CLIP_NORM: no clipping
    b = public_basis(site(400).train_x, D, "test")
    result = release_sums(cfg, data, b, acc, RNG)
    mean = data.train_x.mean(axis=0)  # a non-private run centres on the exact mean
    np.testing.assert_allclose(
        result.sums, class_sums(embed(data.train_x - mean, b), data.train_y, 3), atol=1e-4)


def test_held_out_figures_score_the_features_the_head_was_trained_on(tmp_path: Path) -> None:
    cfg = CFG.replace(noise_multiplier=0.01, learning_rate=4.0)
    data, acc = site(offset=0.3), account(tmp_path, cfg=cfg)
    weights = initial_head_weights(D, 3, 0, seed=0)
    for _ in range(cfg.rounds):
        weights = train_round(cfg, data, weights, acc, RNG).weights
    (released,), _ = released_accuracies(cfg, data, [weights], acc, RNG)
    view = centred(cfg, data, acc)
    assert view.centre is not None
    assert released == evaluate(cfg, view, weights) > 0.6


def test_a_site_that_lost_its_kept_mean_refuses_to_go_on(tmp_path: Path) -> None:
    data, acc = site(), account(tmp_path)
    weights = train_round(CFG, data, initial_head_weights(D, 3, 0, seed=0), acc, RNG).weights
    (centring_dir(tmp_path, "run-1") / "mean.npy").unlink()
    before = acc.ledger.get("run-1").events
    with pytest.raises(ConfigError, match="keeps no charged feature mean"):
        train_round(CFG, data, weights, acc, RNG)
    assert acc.ledger.get("run-1").events == before
    (centring_dir(tmp_path, "run-1") / "mean.npy").write_bytes(b"not an array")
    with pytest.raises(ConfigError, match="unreadable"):
        train_round(CFG, data, weights, acc, RNG)


def test_without_centring_nothing_is_charged_kept_or_moved(tmp_path: Path) -> None:
    cfg = CFG.replace(feature_centring="public")
    data, acc = site(offset=0.5), account(tmp_path, cfg=cfg)
    train_round(cfg, data, initial_head_weights(D, 3, 0, seed=0), acc, RNG)
    assert "centring" not in [e.kind for e in acc.ledger.get("run-1").events]
    assert not centring_dir(tmp_path, "run-1").exists()
    assert centred(cfg, data, acc) is data


@pytest.mark.parametrize("head_width", [0, 5])
def test_the_folded_head_gives_on_raw_features_what_the_head_gives_on_centred_ones(
        head_width: int) -> None:
    rng = np.random.default_rng(1)
    weights = [w + rng.normal(size=w.shape).astype(np.float32)
               for w in initial_head_weights(D, 3, head_width, seed=0)]
    x, mean = rng.normal(size=(20, D)), rng.normal(size=D).astype(np.float32)
    np.testing.assert_allclose(head_logits(x, folded_head(weights, mean)),
                               head_logits(x - mean, weights), rtol=1e-4, atol=1e-4)


def test_the_mean_release_is_planned_so_a_ridge_head_alone_spends_exactly_the_target() -> None:
    cfg = CFG.replace(head_method="ridge")
    planned = list(releases(cfg).mechanisms)
    assert sorted(m.noise_multiplier for m in planned) == sorted(
        [cfg.count_noise, cfg.centring_noise, sums_noise(cfg)])
    assert composed_epsilon(planned, delta=cfg.delta) == pytest.approx(cfg.target_epsilon,
                                                                      rel=1e-3)
    assert sums_noise(cfg) > sums_noise(cfg.replace(feature_centring="public"))
    assert any("feature sum" in c for c in releases(cfg).covered)


def test_a_mean_whose_charge_never_reached_the_ledger_is_not_used(tmp_path: Path) -> None:
    data, acc = site(offset=0.3), account(tmp_path)
    folder = centring_dir(tmp_path, "run-1")
    folder.mkdir(parents=True)
    np.save(folder / "mean.npy", np.ones(D, np.float32))  # a join that crashed before its charge
    assert centred(CFG, data, acc) is data
    train_round(CFG, data, initial_head_weights(D, 3, 0, seed=0), acc, RNG)
    assert not np.allclose(np.load(folder / "mean.npy"), 1.0)  # drawn again, and charged
    assert "centring" in [e.kind for e in acc.ledger.get("run-1").events]


def test_a_run_joined_without_centring_cannot_be_centred_later(tmp_path: Path) -> None:
    data, acc = site(), account(tmp_path)
    weights = train_round(CFG.replace(feature_centring="public"), data,
                          initial_head_weights(D, 3, 0, seed=0), acc, RNG).weights
    before = acc.ledger.get("run-1").events
    with pytest.raises(ConfigError, match="keeps no charged feature mean"):
        train_round(CFG, data, weights, acc, RNG)
    assert acc.ledger.get("run-1").events == before  # refused before anything was charged


def test_a_tiny_centring_noise_is_refused_before_anything_is_charged_or_kept(
        tmp_path: Path) -> None:
    cfg = CFG.replace(centring_noise=0.05)  # alone an epsilon far past the target
    data, acc = site(), account(tmp_path, cfg=cfg)
    with pytest.raises((BudgetExhaustedError, ConfigError)):
        train_round(cfg, data, initial_head_weights(D, 3, 0, seed=0), acc, RNG)
    assert acc.ledger.get("run-1") is None
    assert not centring_dir(tmp_path, "run-1").exists()


def test_the_sites_noise_floor_applies_to_the_mean_release(tmp_path: Path) -> None:
    import dataclasses

    from common.privacy.policy import SitePolicy

    policy = dataclasses.replace(SitePolicy.unrestricted(), min_noise_multiplier=12.0)
    acc = dataclasses.replace(account(tmp_path), policy=policy)
    train_round(CFG.replace(noise_multiplier=12.0), site(), initial_head_weights(D, 3, 0, seed=0),
                acc, RNG)
    (event,) = [e for e in acc.ledger.get("run-1").events if e.kind == "centring"]
    assert event.noise_multiplier == 12.0  # raised from the run's 8
