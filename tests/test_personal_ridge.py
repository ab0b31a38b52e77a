"""Personal heads from the one-shot release (``--personal-tuning ridge``): the site re-solves
the ridge head with its own kept release counted more, moves the global head by the
difference, and spends nothing; the server's totals are checked like any input from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from common import protocol
from common.config import RunConfig
from common.errors import ConfigError, UpdateRejectedError
from common.personal import (OWN_RELEASE_FILE, OwnRelease, exact_release, load_own_release,
                             logistic_toward, ridge_personal_head, save_own_release)
from common.privacy.ledger import PrivacyLedger, SiteBudget
from common.privacy.oneshot import (LOGIT_SCALE, class_sums, embed, public_basis,
                                    release_shapes, second_moment)
from common.privacy.policy import SitePolicy
from common.privacy.release import (one_shot_split, planned_figure_releases, releases,
                                    sums_noise)
from common.site import SiteAccount, planned_steps, release_sums
from server.federation import personalize
from server.runbook import RunBook

from .test_oneshot import CLASSES, D, RNG, features, site

K = 5
RIDGE = RunConfig(classes=("a", "b", "c"), head_method="ridge", rounds=1, personalize=True,
                  personal_tuning="ridge", public_components=K)


def test_auto_tuning_starts_from_the_release_with_a_one_shot_head_and_tunes_the_bias_without(
        ) -> None:
    assert RunConfig(personalize=True).personal_method == "ridge+bias"
    assert RunConfig(personalize=True).personal_from_release
    sgd = RunConfig(head_method="sgd", personalize=True)
    assert sgd.personal_method == "bias" and not sgd.personal_from_release
    assert RunConfig(personalize=True, personal_tuning="ridge").personal_sgd is False
    assert RunConfig(personalize=True, personal_tuning="ridge+bias").personal_sgd is True


def test_ridge_tuning_needs_a_one_shot_head() -> None:
    with pytest.raises(ConfigError, match="--personal-tuning ridge"):
        RunConfig(head_method="sgd", personalize=True, personal_tuning="ridge")
    RunConfig(head_method="sgd", personal_tuning="ridge")  # not personalizing: nothing to check


def exact_ridge(z: np.ndarray, y: np.ndarray, weights: np.ndarray, penalty: float,
                variances: np.ndarray) -> np.ndarray:
    """Weighted least squares with an unpenalised intercept, by numpy's lstsq on rows scaled
    by the square roots of their weights: (K + 1, classes)."""
    lam = penalty * weights.sum() * float(np.mean(variances))
    root = np.sqrt(weights)[:, None]
    design = np.vstack([np.hstack([z, np.ones((len(z), 1))]) * root,
                        np.hstack([np.sqrt(lam) * np.eye(z.shape[1]), np.zeros((z.shape[1], 1))])])
    target = np.vstack([np.eye(CLASSES)[y] * root, np.zeros((z.shape[1], CLASSES))])
    return np.linalg.lstsq(design, target, rcond=None)[0]


def test_the_personal_head_moves_the_global_head_by_the_ridge_with_the_sites_images_counted_more(
        ) -> None:
    basis = public_basis(features(400)[0], K, "test")
    (xa, ya), (xb, yb) = features(150), features(90)
    za, zb = embed(xa, basis), embed(xb, basis)

    def release(z: np.ndarray, y: np.ndarray) -> list[np.ndarray]:  # noise off
        return [class_sums(z, y, CLASSES), second_moment(z)]

    totals = [a + b for a, b in zip(release(za, ya), release(zb, yb))]
    own = OwnRelease(release(zb, yb), 90.0, basis)
    global_head = [RNG.normal(size=(D, CLASSES)), RNG.normal(size=CLASSES)]  # after rounds
    weight, penalty = 2.0, 0.5
    head = ridge_personal_head(global_head, totals, 240.0, own, penalty, weight)

    z, y, x = np.vstack([za, zb]), np.concatenate([ya, yb]), np.vstack([xa, xb])
    weighted = exact_ridge(z, y, np.r_[np.ones(150), np.full(90, 1 + weight)], penalty,
                           basis.variances)
    plain = exact_ridge(z, y, np.ones(240), penalty, basis.variances)

    def logits(solution: np.ndarray) -> np.ndarray:  # the solution applied to raw features
        return LOGIT_SCALE * ((x - basis.mean) @ basis.components @ solution[:K] + solution[K])

    np.testing.assert_allclose(
        x @ head[0] + head[1],
        x @ global_head[0] + global_head[1] + logits(weighted) - logits(plain),
        rtol=1e-3, atol=1e-3)
    assert not np.allclose(logits(weighted), logits(plain), atol=0.1)  # the weight moved it


def test_the_kept_release_reads_back_and_an_unreadable_one_is_named(tmp_path: Path) -> None:
    basis = public_basis(features(400)[0], K, "test")
    kept = OwnRelease([RNG.normal(size=(K + 1, CLASSES)).astype(np.float32)], 37.0, basis,
                      noise_multiplier=2.5)
    save_own_release(tmp_path / "exact", dataclasses.replace(kept, noise_multiplier=None))
    assert load_own_release(tmp_path / "exact", D).noise_multiplier is None
    save_own_release(tmp_path, kept)
    back = load_own_release(tmp_path, D)
    assert back is not None and back.count == 37.0 and back.noise_multiplier == 2.5
    assert back.basis.fingerprint == basis.fingerprint
    assert all(np.array_equal(a, b) for a, b in zip(back.arrays, kept.arrays, strict=True))
    assert load_own_release(tmp_path / "elsewhere", D) is None
    (tmp_path / OWN_RELEASE_FILE).write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=OWN_RELEASE_FILE):
        load_own_release(tmp_path, D)


SHAPES = release_shapes(K, CLASSES, False)


@pytest.mark.parametrize("arrays, count, reason", [
    ([np.zeros((K, CLASSES))], 100.0, "shapes"),
    ([np.zeros((K + 1, CLASSES)), np.zeros(3)], 100.0, "shapes"),
    ([np.full((K + 1, CLASSES), np.nan)], 100.0, "non-finite"),
    ([np.zeros((K + 1, CLASSES))], 10.0, "own released count"),
    ([np.zeros((K + 1, CLASSES))], float("inf"), "own released count"),
    ([np.zeros((K + 1, CLASSES))], True, "own released count"),
    ([np.zeros((K + 1, CLASSES))], "100", "own released count"),
    ([np.zeros((K + 1, CLASSES))], None, "own released count"),
])
def test_the_servers_totals_are_checked_before_a_site_uses_them(arrays, count, reason) -> None:
    with pytest.raises(UpdateRejectedError, match=reason):
        protocol.check_one_shot_totals(arrays, count, SHAPES, own_count=50.0)
    good, n = protocol.check_one_shot_totals([np.ones((K + 1, CLASSES), np.float32)], 50,
                                             SHAPES, own_count=50.0)
    assert good[0].dtype == np.float64 and n == 50.0


def test_totals_that_pass_the_checks_but_overflow_the_head_are_refused() -> None:
    # Finite, the run's shapes, a plausible count: only the solved head shows the harm.
    basis = public_basis(features(400)[0], K, "test")
    own = OwnRelease([np.ones((K + 1, CLASSES))], 90.0, basis)
    totals, count = protocol.check_one_shot_totals([np.full((K + 1, CLASSES), 1e300)], 240.0,
                                                   SHAPES, own_count=90.0)
    global_head = [np.zeros((D, CLASSES), np.float32), np.zeros(CLASSES, np.float32)]
    with np.errstate(all="ignore"), pytest.raises(UpdateRejectedError, match="not finite"):
        ridge_personal_head(global_head, totals, count, own, 0.5, 2.0)
    sane = ridge_personal_head(global_head, [np.full((K + 1, CLASSES), 3.0)], count, own, 0.5,
                               2.0)
    assert all(np.all(np.isfinite(w)) for w in sane)


def test_a_local_release_is_kept_as_released(tmp_path: Path) -> None:
    account = SiteAccount(PrivacyLedger(tmp_path), "run", SiteBudget(10.0))
    result = release_sums(RIDGE, site(), public_basis(features(400)[0], K, "test"), account,
                          RNG)
    assert result.own is not None and np.array_equal(result.own[0], result.sums)
    assert release_sums(RIDGE.replace(personalize=False), site(),
                        public_basis(features(400)[0], K, "test"),
                        SiteAccount(PrivacyLedger(tmp_path), "run-2", SiteBudget(10.0)),
                        RNG).own is None  # nothing kept that no personal head needs


def test_with_distributed_noise_the_kept_copy_carries_the_sites_full_noise(
        tmp_path: Path) -> None:
    cfg = RIDGE.replace(secure_aggregation=True, sums_noise="distributed", public_components=D)
    data, basis = site(), public_basis(features(400)[0], D, "test")
    policy = dataclasses.replace(SitePolicy.unrestricted(), distributed_noise_sites=4)
    exact = class_sums(embed(data.train_x, basis), data.train_y, CLASSES)[:-1]
    released, kept = [], []
    for k in range(40):
        account = SiteAccount(PrivacyLedger(tmp_path), f"run-{k}", SiteBudget(1000.0), policy)
        result = release_sums(cfg, data, basis, account, RNG)
        released.append(result.sums[:-1] - exact)
        kept.append(result.own[0][:-1] - exact)
    sigma = sums_noise(cfg) * np.sqrt(1 + 1 / 9)
    # 1,920 draws each: the sample std is within ~1.6 % (1 s.e.); 5 s.e. allowed.
    assert np.std(np.concatenate(released).ravel()) == pytest.approx(sigma / 2, rel=0.08)
    assert np.std(np.concatenate(kept).ravel()) == pytest.approx(sigma, rel=0.08)


def test_ridge_tuning_spends_nothing_so_a_ridge_head_releases_with_the_whole_target() -> None:
    alone = RIDGE.replace(personalize=False)
    assert sums_noise(RIDGE) == sums_noise(alone)
    assert sums_noise(RIDGE.replace(personal_tuning="bias")) > sums_noise(alone)
    assert planned_steps(RIDGE.replace(head_method="ridge+sgd", rounds=3), 1.0) == \
        planned_steps(RIDGE.replace(head_method="ridge+sgd", rounds=3, personalize=False), 1.0)
    assert "personal" not in one_shot_split(RIDGE)["rest_for"]


class Grid:
    """Records what the server sends; the sites answer with ``replies`` (none by default)."""

    def __init__(self, replies: list[Message] | None = None) -> None:
        self.sent: list[Message] = []
        self.replies = replies or []

    def get_node_ids(self) -> list[int]:
        return [4, 5]

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        self.sent += list(messages)
        return self.replies


@pytest.fixture
def server_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a running ServerApp has set before it builds a message."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def test_the_server_sends_the_runs_summed_release_with_a_ridge_personalization_request(
        server_app: None) -> None:
    from server.replies import ReplyRules

    head = [np.zeros((D, CLASSES), np.float32), np.zeros(CLASSES, np.float32)]
    book = RunBook(head)
    totals = [RNG.normal(size=(K + 1, CLASSES))]
    grid, rules = Grid(), ReplyRules("fp", 1e3, 32, True, 3.0)
    personalize(grid, head, {}, 5.0, book, rules, with_one_shot=True)
    assert grid.sent == []  # no summed release in this run: nothing asked, nothing lost
    book.one_shot = (totals, 321.0)
    book.begin_round(1, head)
    book.current.ridge_lambda = 3.25  # what round 1 solved the head with
    personalize(grid, head, {}, 5.0, book, rules, with_one_shot=True)
    for msg in grid.sent:
        sent = msg.content.array_records[protocol.ONE_SHOT_TOTALS].to_numpy_ndarrays()
        assert np.array_equal(sent[0], totals[0])
        assert msg.content.config_records[protocol.CONFIG][protocol.ONE_SHOT_COUNT] == 321.0
        # The sites solve their personal heads with the same penalty.
        assert msg.content.config_records[protocol.CONFIG][protocol.ONE_SHOT_PENALTY] == 3.25
    plain = Grid()
    personalize(plain, head, {}, 5.0, book, rules)
    assert len(plain.sent) == 2
    assert all(protocol.ONE_SHOT_TOTALS not in m.content.array_records for m in plain.sent)


def personal_reply(node: int, eps: float, accuracy: float) -> Message:
    from flwr.app import ConfigRecord, Metadata, MetricRecord, RecordDict

    metrics = {protocol.NUM_EXAMPLES: 10, protocol.EPSILON: eps, protocol.STEPS: 9,
               protocol.ACCURACY: accuracy, protocol.GLOBAL_ACCURACY: 0.5}
    content = RecordDict({protocol.METRICS: MetricRecord(metrics),
                          protocol.SITE: ConfigRecord({protocol.SITE_NAME: f"site-{node}",
                                                       protocol.FINGERPRINT: "fp"})})
    return Message(content=content, metadata=Metadata(
        run_id=7, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="",
        group_id="", created_at=0.0, ttl=60, message_type="train.personalize"))


def test_personal_heads_count_what_each_site_says_it_spent_never_less(
        server_app: None) -> None:
    from server.replies import ReplyRules, SitePrivacy

    head = [np.zeros(2, np.float32)]
    book = RunBook(head)
    for node in (1, 2, 3):
        book.label(node, f"site-{node}")
        book.privacy[f"site-{node}"] = SitePrivacy(2.0, 0.1, 1.2, 4)
    grid = Grid([personal_reply(1, 2.5, 0.8),
                 personal_reply(2, 2.8, 7.0),    # an accuracy no head can have
                 personal_reply(3, 1.0, 0.9)])   # below what site-3 stated in training
    result = personalize(grid, head, {}, 5.0, book, ReplyRules("fp", 1e3, 32, True, 3.0))
    assert result.personal == {"site-1": 0.8, "site-3": 0.9}
    assert result.refused == ["site-2"]
    # Site-2's figures were dropped, but it fine-tuned and spent 2.8 all the same (its ledger
    # says so); site-3's lower figure cannot undo the 2.0 it stated in training.
    assert book.epsilon_by_site == {"site-1": 2.5, "site-2": 2.8, "site-3": 2.0}
    assert book.privacy["site-2"].steps == 9


def test_the_summed_release_survives_a_checkpoint(tmp_path: Path) -> None:
    from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    head = [np.zeros(2, np.float32)]
    book = RunBook(head)
    book.one_shot = ([RNG.normal(size=(K + 1, CLASSES)), RNG.normal(size=7)], 99.0)
    state, arrays = book.snapshot()
    save_checkpoint(tmp_path, Checkpoint(run_id="r", settings={}, round=1, arrays=arrays,
                                         book=state, one_shot=book.one_shot[0]))
    loaded = load_checkpoint(tmp_path)
    again = RunBook(head)
    again.restore(loaded.book, loaded.arrays, loaded.one_shot)
    assert again.one_shot is not None and again.one_shot[1] == 99.0
    assert all(np.array_equal(a, b) for a, b in zip(again.one_shot[0], book.one_shot[0],
                                                    strict=True))


def test_joint_tuning_fits_without_noise_and_releases_no_figure_about_it() -> None:
    joint = RunConfig(personalize=True, personal_tuning="joint", site_metrics="noised")
    assert joint.personal_joint and joint.personal_from_release and not joint.personal_sgd
    bias = joint.replace(personal_tuning="ridge+bias")
    assert planned_figure_releases(joint) == planned_figure_releases(bias) - 2
    assert any("not DP with respect to that site's images" in o for o in releases(joint).outside)
    assert not any("joint" in o for o in releases(bias).outside)
    with pytest.raises(ConfigError, match="--personal-tuning joint"):
        RunConfig(head_method="sgd", personalize=True, personal_tuning="joint")


def test_the_joint_logistic_fit_from_a_zero_head_is_scikit_learns_l2_logistic_regression(
        ) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = features(300)
    x = x / 4.0
    strength = 0.05
    start = [np.zeros((D, CLASSES), np.float32), np.zeros(CLASSES, np.float32)]
    kernel, bias = logistic_toward(start, x, y, strength, max_iter=2000)
    # sklearn minimises ||W||^2 / 2 + C * sum(cross-entropy); ours is that divided by C * n.
    ref = LogisticRegression(C=1.0 / (strength * len(y)), tol=1e-10, max_iter=5000).fit(x, y)
    np.testing.assert_allclose(kernel, ref.coef_.T, atol=2e-3)
    # The intercept is unpenalised in both, so defined only up to a shared constant.
    np.testing.assert_allclose(bias - bias.mean(), ref.intercept_ - ref.intercept_.mean(),
                               atol=2e-3)


def test_a_strong_pull_keeps_the_federations_kernel_and_a_weak_one_fits_the_sites_images(
        ) -> None:
    x, y = features(300)
    start = [RNG.normal(size=(D, CLASSES)).astype(np.float32), np.zeros(CLASSES, np.float32)]
    held = logistic_toward(start, x, y, strength=1e6)
    np.testing.assert_allclose(held[0], start[0], atol=1e-3)
    free = logistic_toward(start, x, y, strength=1e-4)

    def accuracy(head: list[np.ndarray]) -> float:
        return float(np.mean(np.argmax(x @ head[0] + head[1], axis=1) == y))

    assert accuracy(free) > max(accuracy(start), accuracy(held)) and accuracy(free) > 0.9


def test_the_joint_release_is_the_sites_exact_statistics_in_the_runs_basis() -> None:
    x, y = features(120)
    b = public_basis(features(400)[0], K, "test")
    own = exact_release(x, y, CLASSES, b, moment=True)
    z = embed(x, b)
    np.testing.assert_allclose(own.arrays[0], class_sums(z, y, CLASSES))
    np.testing.assert_allclose(own.arrays[1], second_moment(z))
    assert own.count == 120 and own.basis is b
    assert len(exact_release(x, y, CLASSES, b, moment=False).arrays) == 1
