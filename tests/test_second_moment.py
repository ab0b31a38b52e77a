"""`--second-moment private`: sites release their Z^T Z in the one-shot query; with it the
server's ridge solution is the pooled (Fed3R) one, and the query's sensitivity covers it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, \
    RecordDict

from common import protocol
from common.errors import UpdateRejectedError
from common.privacy.ledger import PrivacyLedger, SiteBudget
from common.privacy.oneshot import (COUNT_RATIO, class_sums, diagonal_positions,
                                    embed, moment_matrix, public_basis, release_shapes,
                                    ridge_solution, second_moment, sensitivity,
                                    triangle_size)
from common.privacy.release import sums_noise
from common.site import SiteAccount, release_sums

from .test_oneshot import CFG, CLASSES, D, K, RNG, basis, features, hostile_embeddings, site

PRIVATE = CFG.replace(head_method="ridge", second_moment="private", public_components=D)


def test_with_the_sites_own_moment_ridge_is_the_pooled_least_squares_solution() -> None:
    x, y = features(300)
    b = basis()
    z = embed(x, b)
    onehot = np.eye(CLASSES)[y]
    n = len(y)
    moment = moment_matrix(second_moment(z), K)
    np.testing.assert_allclose(moment, z.T @ z, atol=1e-9)
    lam = 2.0 * n * float(np.mean(b.variances))
    design = np.hstack([z, np.ones((n, 1))])
    reg = lam * np.eye(K + 1)
    reg[K, K] = 0
    expected = np.linalg.solve(design.T @ design + reg, design.T @ onehot)
    weights, intercept = ridge_solution(class_sums(z, y, CLASSES), n, b.variances, 2.0,
                                        moment)
    np.testing.assert_allclose(weights, expected[:K], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(intercept, expected[K], rtol=1e-6, atol=1e-9)


def test_one_image_moves_sums_counts_and_moment_together_by_at_most_the_sensitivity() -> None:
    x, y = features(200, scale=100.0)
    for z in hostile_embeddings(x)[1]:
        for i in range(0, 200, 37):
            rest = np.delete(np.arange(200), i)
            sums = class_sums(z, y, CLASSES) - class_sums(z[rest], y[rest], CLASSES)
            moment = second_moment(z) - second_moment(z[rest])
            joint = np.concatenate([sums[:-1].ravel(), sums[-1] / COUNT_RATIO, moment])
            assert np.linalg.norm(joint) <= sensitivity(moment=True) + 1e-9
    assert sensitivity(moment=True) == pytest.approx(np.sqrt(2 + 1 / 9))


def test_the_released_moment_carries_the_joint_querys_noise_and_the_same_charge(
        tmp_path: Path) -> None:
    data, b = site(), public_basis(features(400)[0], D, "test")
    exact = second_moment(embed(data.train_x, b))
    draws = []
    for k in range(20):
        account = SiteAccount(PrivacyLedger(tmp_path), f"run-{k}", SiteBudget(1000.0))
        result = release_sums(PRIVATE, data, b, account, RNG)
        draws.append(result.moment - exact)
        assert [a.shape for a in result.arrays] == [(D + 1, CLASSES), (triangle_size(D),)]
    sigma = sums_noise(PRIVATE)
    assert np.std(np.concatenate(draws)) == pytest.approx(sigma * sensitivity(True), rel=0.05)
    # The moment rides in the same Gaussian query: the same noise multiplier, the same charge.
    entry = PrivacyLedger(tmp_path).runs()["run-0"]
    assert [e.noise_multiplier for e in entry.events if e.kind == "sums"] == [sigma]


def _reply(arrays: list[np.ndarray], n: int, fingerprint: str) -> Message:
    meta = Metadata(run_id=1, message_id="m", src_node_id=4, dst_node_id=0,
                    reply_to_message_id="x", group_id="1", created_at=0.0, ttl=60,
                    message_type=MessageType.TRAIN)
    return Message(RecordDict({
        protocol.ARRAYS: ArrayRecord(arrays),
        protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: n, protocol.EPSILON: 2.9,
                                        protocol.SAMPLING_RATE: 1.0,
                                        protocol.NOISE_MULTIPLIER: 1.5, protocol.STEPS: 1}),
        protocol.SITE: ConfigRecord({protocol.SITE_NAME: "clinic", protocol.FINGERPRINT: "f" * 64,
                                     protocol.PUBLIC_FINGERPRINT: fingerprint}),
    }), metadata=meta)


def test_the_server_refuses_a_moment_larger_than_the_sites_count_allows() -> None:
    from server.replies import ReplyRules, check_sums_reply

    rules = ReplyRules(fingerprint="f" * 64, max_update_norm=100.0, batch_size=40,
                       private=True, target_epsilon=3.0)
    x, y = features(200)
    b = basis()
    z = embed(x, b)
    sums = class_sums(z, y, CLASSES).astype(np.float32)
    moment = second_moment(z).astype(np.float32)
    shapes = release_shapes(K, CLASSES, moment=True)
    assert shapes == [(K + 1, CLASSES), (triangle_size(K),)]
    update = check_sums_reply(_reply([sums, moment], 200, b.fingerprint), shapes,
                              b.fingerprint, rules)
    assert len(update.arrays) == 2
    with pytest.raises(UpdateRejectedError, match="shapes"):
        check_sums_reply(_reply([sums], 200, b.fingerprint), shapes, b.fingerprint, rules)
    inflated = moment.copy()
    inflated[diagonal_positions(K)] += 1e4
    with pytest.raises(UpdateRejectedError, match="second moment"):
        check_sums_reply(_reply([sums, inflated], 200, b.fingerprint), shapes,
                         b.fingerprint, rules)
