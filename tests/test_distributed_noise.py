"""Distributed noise for the one-shot release: a site adds 1/N of the noise only when its
policy allows it and secure aggregation masks the release over at least N sites; its ledger
keeps both the epsilon it charged and the one it keeps on its own."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, \
    RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from client.secure_aggregation import SECAGG_CONFIGS, legacy_messages_mod, masked_over
from common import protocol
from common.config import RunConfig
from common.errors import ConfigError
from common.privacy.accounting import composed_epsilon
from common.privacy.ledger import LedgerEvent, PrivacyLedger, SiteBudget
from common.privacy.oneshot import class_sums, embed, public_basis, ridge_head
from common.privacy.policy import ADMITTED, REFUSED, TIGHTENED, SitePolicy, admit
from common.privacy.release import sums_noise
from common.site import SiteAccount, release_sums

from .test_oneshot import CLASSES, D, RNG, features, site

DISTRIBUTED = RunConfig(classes=("a", "b", "c"), head_method="ridge", rounds=1,
                        public_components=D, secure_aggregation=True,
                        sums_noise="distributed")


def test_distributed_noise_needs_secure_aggregation_dp_and_a_one_shot_head() -> None:
    with pytest.raises(ConfigError, match="--secure-aggregation"):
        RunConfig(sums_noise="distributed")
    with pytest.raises(ConfigError, match="--secure-aggregation"):
        RunConfig(sums_noise="distributed", secure_aggregation=True, head_method="sgd")
    with pytest.raises(ConfigError, match="distributed-noise-sites"):
        SitePolicy(distributed_noise_sites=1)


def test_a_site_adds_less_noise_only_if_its_own_policy_says_so() -> None:
    budget = SiteBudget(3.0)
    default = admit(DISTRIBUTED, SitePolicy(site_metrics="exact"), budget, run_id="r")
    assert default.decision == TIGHTENED and default.cfg.sums_noise == "local"
    assert "sums-noise distributed -> local" in default.changes
    strict = admit(DISTRIBUTED, SitePolicy(site_metrics="exact", on_violation="refuse"), budget,
                   run_id="r")
    assert strict.decision == REFUSED
    trusting = admit(DISTRIBUTED, SitePolicy(site_metrics="exact", distributed_noise_sites=4),
                     budget, run_id="r")
    assert trusting.decision == ADMITTED and trusting.cfg.sums_noise == "distributed"


def test_the_release_carries_one_over_n_of_the_variance_and_the_ledger_keeps_both_epsilons(
        tmp_path: Path) -> None:
    data, b = site(), public_basis(features(400)[0], D, "test")
    policy = dataclasses.replace(SitePolicy.unrestricted(), distributed_noise_sites=4)
    sigma = sums_noise(DISTRIBUTED)
    noise = []
    for k in range(40):
        account = SiteAccount(PrivacyLedger(tmp_path), f"run-{k}", SiteBudget(1000.0),
                              policy)
        result = release_sums(DISTRIBUTED, data, b, account, RNG)
        noise.append(result.sums[:-1] - class_sums(embed(data.train_x, b), data.train_y,
                                                   CLASSES)[:-1])
    # 1,920 draws: the sample std is within ~1.6 % (1 s.e.); 5 s.e. allowed.
    assert np.std(np.concatenate([n.ravel() for n in noise])) == pytest.approx(
        sigma / 2 * np.sqrt(1 + 1 / 9), rel=0.08)
    entry = PrivacyLedger(tmp_path).runs()["run-0"]
    (sums,) = [e for e in entry.events if e.kind == "sums"]
    assert sums.noise_multiplier == pytest.approx(sigma)  # charged: the sum's total noise
    assert sums.local_noise_multiplier == pytest.approx(sigma / 2)
    assert entry.epsilon == pytest.approx(3.0, abs=1e-3)
    alone = composed_epsilon([e.alone for e in entry.events], delta=entry.header.delta)
    assert entry.epsilon_on_its_own == pytest.approx(alone) and alone > 2 * entry.epsilon
    summary = PrivacyLedger(tmp_path).summary().runs["run-0"]
    assert summary["epsilon_on_its_own"] == pytest.approx(alone)


def test_a_local_release_records_no_epsilon_on_its_own(tmp_path: Path) -> None:
    local = DISTRIBUTED.replace(sums_noise="local")
    account = SiteAccount(PrivacyLedger(tmp_path), "run", SiteBudget(10.0))
    release_sums(local, site(), public_basis(features(400)[0], D, "test"), account, RNG)
    entry = PrivacyLedger(tmp_path).runs()["run"]
    assert entry.epsilon_on_its_own is None
    assert all(e.local_noise_multiplier is None for e in entry.events)


def test_the_ledger_refuses_a_local_noise_that_is_not_part_of_a_sums_events_noise() -> None:
    from common.privacy.ledger import _check_event

    with pytest.raises(ValueError, match="does not fit"):
        _check_event(LedgerEvent("dp-sgd", 0.5, 2.0, 3, local_noise_multiplier=1.0), "run")
    with pytest.raises(ValueError, match="does not fit"):
        _check_event(LedgerEvent("sums", 1.0, 2.0, 1, local_noise_multiplier=3.0), "run")
    _check_event(LedgerEvent("sums", 1.0, 2.0, 1, local_noise_multiplier=1.0), "run")


def _meta() -> Metadata:
    return Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=2,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=60,
                    message_type=MessageType.TRAIN)


def test_how_many_sites_mask_a_release_is_the_sites_own_reading_never_the_servers() -> None:
    seen: list[Message] = []

    def handler(msg: Message, ctxt: Context) -> Message:
        seen.append(msg)
        return Message(RecordDict(), reply_to=msg)

    ctxt = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    forged = Message(RecordDict({protocol.CONFIG: ConfigRecord({protocol.MASKED_OVER: 99}),
                                 protocol.ARRAYS: ArrayRecord([np.zeros(2)])}), metadata=_meta())
    legacy_messages_mod(forged, ctxt, handler)
    assert seen[-1].content.config_records[protocol.CONFIG][protocol.MASKED_OVER] == 0
    # Inside SecAgg+'s masking stage, the threshold its setup stored in the site's state.
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE

    masked = Message(RecordDict({SECAGG_CONFIGS: ConfigRecord({})}), metadata=_meta())
    assert masked_over(masked, ctxt) == 0  # no setup yet: not masked over anyone
    ctxt.state.config_records[RECORD_KEY_STATE] = ConfigRecord({"threshold": 5})
    assert masked_over(masked, ctxt) == 5
    plain = Message(RecordDict({protocol.CONFIG: ConfigRecord({})}), metadata=_meta())
    assert masked_over(plain, ctxt) == 0


def test_the_server_turns_the_masked_weighted_mean_into_the_sites_total_and_its_ridge_head(
        ) -> None:
    from server.replies import ReplyRules
    from server.runbook import RunBook
    from server.secure import SecureSums

    b = public_basis(features(400)[0], D, "test")
    cfg = DISTRIBUTED
    head = [np.zeros((512, 3), np.float32), np.zeros(3, np.float32)]
    book = RunBook(head)
    rules = ReplyRules(fingerprint="f" * 64, max_update_norm=100.0, batch_size=40,
                       private=True, target_epsilon=3.0)
    secure = SecureSums(book, cfg, b, {protocol.CLASSES: ["a", "b", "c"]}, rules)
    book.begin_round(1, book.head)
    sums = [RNG.normal(size=(D + 1, 3)) for _ in range(3)]
    counts = [120, 200, 80]
    # What SecAgg+ hands the strategy: the count-weighted mean of sums / count.
    mean = sum(s for s in sums) / sum(counts)

    def reply(name: str, n: int, stated: int | None = None) -> FitRes:
        metrics = {protocol.NUM_EXAMPLES: stated or n, protocol.EPSILON: 2.9,
                   protocol.SAMPLING_RATE: 1.0, protocol.NOISE_MULTIPLIER: 1.5,
                   protocol.STEPS: 1, protocol.SITE_NAME: name,
                   protocol.FINGERPRINT: "f" * 64, protocol.PUBLIC_FINGERPRINT: b.fingerprint}
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters([mean.astype(np.float32)]),
                      n, metrics)

    class Proxy:
        def __init__(self, node_id: int) -> None:
            self.node_id = node_id

    results = [(Proxy(1), reply("a", 120)), (Proxy(2), reply("b", 200)),
               (Proxy(3), reply("c", 80, stated=81))]
    params, _ = secure.aggregate_fit(1, results, [])
    expected = ridge_head(sum(sums), float(sum(counts)), b, cfg.ridge_lambda)
    for got, want in zip(parameters_to_ndarrays(params), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    record = book.current
    assert sorted(record.sites_trained) == ["a", "b"]  # c's figures disagree with its weight
    assert record.unconfirmed == ["c"] and record.rejected == []
    assert "c" in book.epsilon_by_site  # its release is inside the sum: its spending stands
