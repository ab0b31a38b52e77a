"""The one-shot DP head: the ridge solve, the release's noise and accounting, the bound on
features, the budget split, and the server's check of a sums reply."""

import dataclasses
import time
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, \
    RecordDict

from common import protocol
from common.config import RunConfig
from common.errors import BudgetExhaustedError, PolicyRefusedError, UpdateRejectedError
from common.privacy.accounting import Mechanism, composed_epsilon
from common.privacy.ledger import PrivacyLedger, SiteBudget
from common.privacy.oneshot import (COUNT_RATIO, LOGIT_SCALE, PublicBasis, bounded,
                                    class_sums, embed, public_basis, ridge_head,
                                    ridge_solution, sensitivity)
from common.privacy.release import one_shot_split, sums_noise
from common.site import SiteAccount, SiteData, charge, release_sums
from server.replies import ReplyRules, check_sums_reply

RNG = np.random.default_rng(7)
D, K, CLASSES = 16, 6, 3
CFG = RunConfig(classes=("a", "b", "c"), rounds=4, batch_size=40, head_method="ridge+sgd",
                public_components=K)


def features(n: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    centers = RNG.normal(size=(CLASSES, D))
    y = RNG.integers(0, CLASSES, n)
    return (scale * (centers[y] + RNG.normal(size=(n, D)))).astype(np.float32), y


def basis() -> PublicBasis:
    return public_basis(features(400)[0], K, "test")


def site(n: int = 200) -> SiteData:
    x, y = features(n)
    return SiteData(name="site-a", train_x=x, train_y=y, test_x=x[:10], test_y=y[:10],
                    skipped=(), extraction_seconds=0.0, cache_hit=True)


def account(tmp_path: Path, cfg: RunConfig = CFG) -> SiteAccount:
    return SiteAccount(PrivacyLedger(tmp_path), "run-1",
                       SiteBudget(cfg.target_epsilon, cfg.delta, cfg.accountant))


def test_ridge_equals_numpys_closed_form_with_the_public_second_moment() -> None:
    public, _ = features(500)
    b = public_basis(public, K, "test")
    # The public second moment, computed here independently, seen in the kept components.
    centred = bounded(public - public.mean(axis=0))
    moment = b.components.T.astype(np.float64) @ (centred.T @ centred / len(centred)) \
        @ b.components
    x, y = features(300)
    z = embed(x, b)
    release = class_sums(z, y, CLASSES)
    onehot = np.eye(CLASSES)[y]
    np.testing.assert_allclose(release, np.vstack([z.T @ onehot, onehot.sum(axis=0)]))
    # Least squares with an unpenalised intercept, the private Z^T Z replaced by n times the
    # public moment about the sites' own mean: numpy's solve of the normal equations.
    n, m = 300, z.mean(axis=0)
    lam = 8.0 * n * np.trace(moment) / K
    gram = np.block([[n * (moment + np.outer(m, m)), n * m[:, None]],
                     [n * m[None], np.array([[n]])]])
    reg = lam * np.eye(K + 1)
    reg[K, K] = 0
    expected = np.linalg.solve(gram + reg, np.vstack([z.T @ onehot, onehot.sum(axis=0)]))
    weights, intercept = ridge_solution(release, n, b.variances, 8.0)
    np.testing.assert_allclose(weights, expected[:K], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(intercept, expected[K], rtol=1e-3, atol=1e-6)
    kernel, bias = ridge_head(release, n, b, 8.0)
    logits = x @ kernel + bias  # the head on raw features is the solution on centred ones
    np.testing.assert_allclose(
        logits, LOGIT_SCALE * ((x - b.mean) @ b.components @ expected[:K] + expected[K]),
        rtol=1e-3, atol=1e-3)


def hostile_embeddings(x: np.ndarray) -> tuple[PublicBasis, list[np.ndarray]]:
    """A stretched basis (a hostile server's), and ``x`` embedded with it and with the run's."""
    b = basis()
    stretched = PublicBasis(b.mean, b.components * 50, b.variances, "hostile")
    return stretched, [embed(x, used) for used in (b, stretched)]


def test_features_are_norm_bounded_before_the_release_whatever_the_basis() -> None:
    x, y = features(200, scale=100.0)
    stretched, embedded = hostile_embeddings(x)
    for z in embedded:
        assert np.linalg.norm(z, axis=1).max() <= 1 + 1e-9
        # One image more or less moves the sums by at most 1 and the counts by 1 (L2): with
        # the counts scaled down by COUNT_RATIO, the sensitivity the noise is calibrated to.
        diff = class_sums(z, y, CLASSES) - class_sums(z[1:], y[1:], CLASSES)
        assert np.linalg.norm(diff[:-1]) <= 1 + 1e-9 and np.abs(diff[-1]).sum() == 1
        scaled = np.vstack([diff[:-1], diff[-1] / COUNT_RATIO])
        assert np.linalg.norm(scaled) <= sensitivity() + 1e-9
    with pytest.raises(ValueError, match="not orthonormal"):
        PublicBasis.from_arrays(stretched.arrays(), D, "hostile")


def test_released_sums_carry_noise_of_the_calibrated_std(tmp_path: Path) -> None:
    cfg = CFG.replace(head_method="ridge", public_components=D)
    data, b = site(), public_basis(features(400)[0], D, "test")
    noise = []
    for k in range(40):  # 40 releases x (48 sums + 3 counts), each its own run
        acc = SiteAccount(PrivacyLedger(tmp_path), f"run-{k}",
                          SiteBudget(1000.0, cfg.delta))
        result = release_sums(cfg, data, b, acc, RNG)
        noise.append(result.sums - class_sums(embed(data.train_x, b), data.train_y, CLASSES))
    sigma = sums_noise(cfg)
    assert result.noise_multiplier == sigma
    std = sigma * sensitivity()  # the noise multiplier is std over sensitivity
    on_sums = np.concatenate([n[:-1].ravel() for n in noise])
    on_counts = np.concatenate([n[-1] for n in noise])
    # 1,920 draws on the sums: the sample std is within ~1.6 % (1 s.e.); 5 s.e. allowed.
    assert np.std(on_sums) == pytest.approx(std, rel=0.08)
    assert abs(np.mean(on_sums)) < 5 * std / np.sqrt(on_sums.size)
    # 120 draws on the counts: ~6.5 % (1 s.e.); 5 s.e. allowed.
    assert np.std(on_counts) == pytest.approx(COUNT_RATIO * std, rel=0.33)


@pytest.mark.parametrize("sigma", [0.8, 1.5, 4.0])
def test_the_one_shot_releases_epsilon_is_dp_accountings_gaussian_mechanism(
        sigma: float) -> None:
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(dp_accounting.GaussianDpEvent(sigma))
    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(dp_accounting.GaussianDpEvent(sigma))
    one_shot = [Mechanism(1.0, sigma, 1)]
    assert composed_epsilon(one_shot, delta=1e-5) == pytest.approx(rdp.get_epsilon(1e-5),
                                                                    rel=1e-9)
    assert composed_epsilon(one_shot, delta=1e-5, accountant="pld") == pytest.approx(
        pld.get_epsilon(1e-5), rel=1e-6)


@pytest.mark.parametrize("changes", [
    dict(head_method="ridge"), dict(head_method="ridge", personalize=True),
    dict(ridge_share=0.1), dict(ridge_share=0.5), dict(ridge_share=0.95),
    dict(ridge_share=0.5, site_metrics="noised", personalize=True),
    dict(ridge_share=0.7, target_epsilon=8.0),
    dict(head_method="ridge", personalize=True, personal_tuning="ridge"),
    dict(personalize=True, personal_tuning="ridge"),
    dict(personalize=True, personal_tuning="ridge+bias"),
    dict(feature_centring="site"), dict(head_method="ridge", feature_centring="site")])
def test_the_budget_split_never_exceeds_the_target_and_is_stated_as_charged(
        tmp_path: Path, changes: dict) -> None:
    cfg = CFG.replace(**changes)
    data, acc = site(), account(tmp_path, cfg)
    release_sums(cfg, data, basis(), acc, RNG)
    sums_alone = composed_epsilon([Mechanism(1.0, sums_noise(cfg), 1)], delta=cfg.delta,
                                  accountant=cfg.accountant)
    share = cfg.ridge_share if cfg.sgd_rounds or cfg.personal_sgd else 1.0
    assert sums_alone <= share * cfg.target_epsilon * (1 + 1e-6)
    for _ in range(cfg.sgd_rounds):
        charge(cfg, data.name, len(data.train_y), acc, RNG)
    if cfg.personal_sgd:  # a ridge personal head is built from the release: no charge
        charge(cfg, data.name, len(data.train_y), acc, RNG, personal=True)
    entry = acc.ledger.get("run-1")
    first = ["count", "centring", "sums"] if cfg.site_centred else ["count", "sums"]
    assert [e.kind for e in entry.events][:len(first)] == first
    assert entry.epsilon <= cfg.target_epsilon * (1 + 1e-6)
    if cfg.site_metrics == "exact":  # every planned release made: the target is spent
        assert entry.epsilon == pytest.approx(cfg.target_epsilon, rel=0.02)
    # The split the report states is the one the ledger charged.
    split, (sums_event,) = one_shot_split(cfg), [e for e in entry.events if e.kind == "sums"]
    assert split["noise_multiplier"] == pytest.approx(sums_event.noise_multiplier, rel=1e-12)
    assert split["epsilon_alone"] == pytest.approx(sums_alone, rel=1e-9)
    assert split["planned_share"] <= share * (1 + 1e-6)
    assert ("dp-sgd rounds" in split["rest_for"]) == bool(cfg.sgd_rounds)


def test_a_run_releases_its_class_sums_once(tmp_path: Path) -> None:
    data, acc = site(), account(tmp_path)
    release_sums(CFG, data, basis(), acc, RNG)
    with pytest.raises(PolicyRefusedError, match="once per run"):
        release_sums(CFG, data, basis(), acc, RNG)
    assert [e.kind for e in acc.ledger.get("run-1").events] == ["count", "sums"]


def test_a_release_calibrated_with_pld_fits_a_budget_of_its_target_only_under_pld(
        tmp_path: Path) -> None:
    cfg = dataclasses.replace(CFG, head_method="ridge", accountant="pld")
    data = site()
    strict = SiteAccount(PrivacyLedger(tmp_path / "rdp"), "run-1", SiteBudget(3.0, 1e-5, "rdp"))
    with pytest.raises(BudgetExhaustedError, match=r"to 3\.2\d\d, past its budget of 3\.0.*"
                       r"under the run's, pld, the same releases spend 3\.000.*--accountant pld"):
        release_sums(cfg, data, basis(), strict, RNG)
    assert strict.ledger.get("run-1") is None  # declined before anything was charged
    same = SiteAccount(PrivacyLedger(tmp_path / "pld"), "run-1", SiteBudget(3.0, 1e-5, "pld"))
    release_sums(cfg, data, basis(), same, RNG)
    spent = [e.mechanism for e in same.ledger.get("run-1").events]
    assert composed_epsilon(spent, delta=1e-5, accountant="pld") == pytest.approx(3.0, abs=1e-3)


RULES = ReplyRules(fingerprint="f" * 64, max_update_norm=100.0, batch_size=40, private=True,
                   target_epsilon=3.0)


def sums_reply(sums: np.ndarray, public: str = "p", n: int = 100) -> Message:
    content = RecordDict({
        protocol.ARRAYS: ArrayRecord([sums]),
        protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: n, protocol.EPSILON: 3.0,
                                        protocol.SAMPLING_RATE: 1.0,
                                        protocol.NOISE_MULTIPLIER: 1.5, protocol.STEPS: 1}),
        protocol.SITE: ConfigRecord({protocol.SITE_NAME: "s", protocol.FINGERPRINT: "f" * 64,
                                     protocol.PUBLIC_FINGERPRINT: public})})
    return Message(content=content, metadata=Metadata(
        run_id=1, message_id="", src_node_id=3, dst_node_id=0, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=60, message_type=MessageType.TRAIN))


def test_the_server_checks_a_sums_reply_alone() -> None:
    shape = (K + 1, CLASSES)
    good = np.full(shape, 5.0, np.float32)
    update = check_sums_reply(sums_reply(good), [shape], "p", RULES)
    assert update.num_examples == 100 and update.privacy.noise_multiplier == 1.5
    huge_sums, huge_counts = good.copy(), good.copy()
    huge_sums[0] = 1e6
    huge_counts[-1] = 1e6
    for bad, match in [(sums_reply(good, public="other"), "other public statistics"),
                       (sums_reply(good[:, :2]), "shape"),
                       (sums_reply(huge_sums), "longer than"),
                       (sums_reply(huge_counts), "exceeds its example count"),
                       (sums_reply(good * np.nan), "finite")]:
        with pytest.raises(UpdateRejectedError, match=match) as rejected:
            check_sums_reply(bad, [shape], "p", RULES)
        # Past the figures' checks, the release's stated spending goes with the rejection.
        spent = getattr(rejected.value, "privacy", None)
        assert (spent is None) == (match == "other public statistics")
        assert spent is None or (spent.epsilon, rejected.value.name) == (3.0, "s")
