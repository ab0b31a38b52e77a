"""The server's strategy: Flower's FedAvg behind fedtl's reply checks, and the run book."""

import time

import numpy as np
import pytest
from flwr.app import (ArrayRecord, ConfigRecord, Error, Message, MessageType, Metadata,
                      MetricRecord, RecordDict)
from flwr.serverapp.strategy import FedAvg

from common import protocol
from common.config import RunConfig
from server.replies import ReplyRules, capped_weights
from server.runbook import RoundRecord, RunBook
from server.strategy import (Validated, flower_strategy, optimizer_state,
                             restore_optimizer_state, validated)

FP = "f" * 64
GLOBAL = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
BATCH = 5
RULES = ReplyRules(fingerprint=FP, max_update_norm=100.0, batch_size=BATCH, private=True,
                   target_epsilon=3.0)
KEYS = dict(weighted_by_key=protocol.NUM_EXAMPLES, arrayrecord_key=protocol.ARRAYS,
            configrecord_key=protocol.CONFIG)


def metadata(node: int, kind: str = MessageType.TRAIN) -> Metadata:
    return Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=60,
                    message_type=kind)


def reply(node: int, arrays: list[np.ndarray], n: int, eps: float = 1.0,
          fingerprint: str = FP, exact: bool = True, name: str | None = None) -> Message:
    figures = {protocol.NUM_EXAMPLES: n, protocol.EPSILON: eps,
               protocol.SAMPLING_RATE: min(1.0, BATCH / n) if n > 0 else 0.5,
               protocol.NOISE_MULTIPLIER: 1.2, protocol.STEPS: 4}
    if exact:  # a site that also releases its exact figures (--site-metrics exact)
        figures.update({protocol.TRAIN_LOSS: 0.5, protocol.EXTRACT_SECONDS: 0.0,
                        protocol.SKIPPED_IMAGES: 0})
    content = RecordDict({
        protocol.ARRAYS: ArrayRecord(arrays),
        protocol.METRICS: MetricRecord(figures),
        protocol.SITE: ConfigRecord({protocol.SITE_NAME: name or f"site-{node}",
                                     protocol.FINGERPRINT: fingerprint,
                                     protocol.TIGHTENED: ""}),
    })
    return Message(content=content, metadata=metadata(node))


def strategy(required: int = 1, inner=None, **kwargs) -> Validated:  # noqa: ANN001
    book = RunBook([a.copy() for a in GLOBAL])
    s = Validated(inner or FedAvg(**KEYS), book, RULES, min_train_nodes=required, **kwargs)
    book.begin_round(1, [a.copy() for a in GLOBAL])
    return s


def full(value: float) -> list[np.ndarray]:
    return [np.full((3, 2), value, np.float32), np.full(2, value, np.float32)]


def test_accepted_updates_are_averaged_weighted_by_example_count() -> None:
    s = strategy()
    arrays, _ = s.aggregate_train(1, [reply(1, full(1.0), 10, eps=0.5),
                                      reply(2, full(4.0), 30, eps=0.8)])
    expected = np.average([1.0, 4.0], weights=[10, 30])
    for got in arrays.to_numpy_ndarrays():
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    record = s.book.current
    assert record.sites_trained == ["site-1", "site-2"]
    assert record.epsilon_max == 0.8
    assert record.train_loss == pytest.approx(0.5)
    assert s.book.epsilon_by_site == {"site-1": 0.5, "site-2": 0.8}


def _extra_record() -> Message:
    bad = reply(9, full(1.0), 10)
    bad.content["more-arrays"] = ArrayRecord(full(1.0))
    return bad


def _extra_metric() -> Message:
    bad = reply(9, full(1.0), 10)
    bad.content[protocol.METRICS]["favourite-number"] = 7
    return bad


def _extra_site_key() -> Message:
    bad = reply(9, full(1.0), 10)
    bad.content[protocol.SITE]["note"] = "hello"
    return bad


def _second_metric_record() -> Message:
    bad = reply(9, full(1.0), 10)
    bad.content["metrics-2"] = MetricRecord({protocol.NUM_EXAMPLES: 10})
    return bad


def _inconsistent_rate() -> Message:
    bad = reply(9, full(1.0), 10)
    bad.content[protocol.METRICS][protocol.SAMPLING_RATE] = 0.01  # would mean 500 examples
    return bad


def _bad_arrays(eps: float = 1.0) -> dict[str, Message]:
    """Replies whose figures are sound and whose arrays are not."""
    return {"nan": reply(9, [np.full((3, 2), np.nan, np.float32), np.zeros(2, np.float32)], 10,
                         eps=eps),
            "shape": reply(9, [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)], 10,
                           eps=eps),
            "norm": reply(9, full(1e4), 10, eps=eps),
            "unchanged": reply(9, full(0.0), 10, eps=eps)}  # the global head: no training


BAD_FIGURES = {
    "fingerprint": reply(9, full(1.0), 10, fingerprint="0" * 64),
    "zero-count": reply(9, full(1.0), 0),
    "nan-eps": reply(9, full(1.0), 10, eps=float("nan")),
    "negative-eps": reply(9, full(1.0), 10, eps=-1.0),
    "eps-past-target": reply(9, full(1.0), 10, eps=3.5),  # no honest site claims that
    "extra-array-record": _extra_record(), "extra-metric-key": _extra_metric(),
    "extra-site-key": _extra_site_key(), "second-metric-record": _second_metric_record(),
    "rate-not-from-count": _inconsistent_rate()}


@pytest.mark.parametrize("bad", [*_bad_arrays().values(), *BAD_FIGURES.values()],
                         ids=[*_bad_arrays(), *BAD_FIGURES])
def test_a_bad_reply_is_rejected_alone_and_the_round_goes_on(bad: Message) -> None:
    s = strategy()
    arrays, _ = s.aggregate_train(1, [reply(1, full(2.0), 10), bad])
    for got in arrays.to_numpy_ndarrays():
        np.testing.assert_allclose(got, 2.0)
    assert len(s.book.current.rejected) == 1
    assert s.book.current.sites_trained == ["site-1"]


@pytest.mark.parametrize("kind", list(_bad_arrays()))
def test_a_reply_rejected_for_its_arrays_still_counts_what_the_site_says_it_spent(
        kind: str) -> None:
    # The release left the site: a report showing less than the site's ledger would lie.
    s = strategy()
    s.aggregate_train(1, [reply(1, full(2.0), 10, eps=1.0), _bad_arrays(eps=2.5)[kind]])
    assert s.book.current.rejected == ["site-9"]
    assert s.book.epsilon_by_site == {"site-1": 1.0, "site-9": 2.5}
    assert s.book.current.epsilon_max == 2.5
    s.book.begin_round(2, [a.copy() for a in GLOBAL])
    s.aggregate_train(2, [reply(1, full(2.0), 10, eps=1.5), _bad_arrays(eps=0.5)[kind]])
    assert s.book.epsilon_by_site["site-9"] == 2.5  # a lower claim lowers nothing


@pytest.mark.parametrize("bad", BAD_FIGURES.values(), ids=BAD_FIGURES)
def test_a_reply_whose_figures_fail_adds_nothing_to_the_sites_spending(bad: Message) -> None:
    s = strategy()
    s.aggregate_train(1, [reply(1, full(2.0), 10), bad])
    assert s.book.current.rejected == ["node 9"]
    assert s.book.epsilon_by_site == {"site-1": 1.0}


def test_a_mixed_exact_and_noised_federation_aggregates() -> None:
    # Flower's FedAvg alone raises on replies with different metric keys; rebuilt replies
    # carry only the weight.
    s = strategy()
    arrays, _ = s.aggregate_train(1, [reply(1, full(1.0), 10, exact=True),
                                      reply(2, full(3.0), 10, exact=False)])
    for got in arrays.to_numpy_ndarrays():
        np.testing.assert_allclose(got, 2.0, rtol=1e-6)
    assert s.book.current.sites_trained == ["site-1", "site-2"]


def test_a_malformed_figure_is_rejected_not_a_crash() -> None:
    bad = reply(9, full(1.0), 10)
    bad.content[protocol.METRICS][protocol.EXTRACT_SECONDS] = [1.0, 2.0]
    s = strategy()
    arrays, _ = s.aggregate_train(1, [reply(1, full(2.0), 10), bad])
    assert s.book.current.rejected == ["node 9"]
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[1], 2.0)


def test_declines_and_policy_refusals_are_recorded_apart_and_skipped() -> None:
    s = strategy()
    declined = Message(error=Error(code=protocol.BUDGET_EXHAUSTED, reason="spent"),
                       metadata=metadata(5))
    refused = Message(error=Error(code=protocol.POLICY_REFUSED, reason="policy"),
                      metadata=metadata(6))
    arrays, _ = s.aggregate_train(1, [reply(1, full(3.0), 10), declined, refused])
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], 3.0)
    assert s.book.current.declined == ["node 5"] and s.book.current.refused == ["node 6"]


def test_a_round_where_nobody_trains_keeps_the_global_head() -> None:
    s = strategy()
    assert s.aggregate_train(1, [reply(1, full(1e9), 10)]) == (None, None)


def test_fewer_accepted_updates_than_required_sites_keep_the_global_head() -> None:
    s = strategy(required=2)
    assert s.aggregate_train(1, [reply(1, full(1.0), 10), reply(2, full(1e9), 10)]) == (None, None)
    assert s.book.current.sites_trained == ["site-1"] and s.book.current.rejected == ["site-2"]
    np.testing.assert_array_equal(s.book.head[0], GLOBAL[0])  # the round's head stands
    # The round says so: a site that trained is not evidence that the head moved.
    assert s.book.current.failure == ("only 1 accepted update(s), fewer than the 2 required "
                                      "(--min-sites)")


def test_a_site_is_known_by_its_node_not_by_the_name_it_asserts() -> None:
    s = strategy()
    s.aggregate_train(1, [reply(1, full(1.0), 10, eps=0.5, name="hospital"),
                          reply(2, full(1.0), 10, eps=0.9, name="hospital")])
    assert s.book.current.sites_trained == ["hospital", "hospital@node-2"]
    assert s.book.epsilon_by_site == {"hospital": 0.5, "hospital@node-2": 0.9}
    # A later round: node 2 cannot take node 1's name (or its figures) by renaming itself.
    s.book.begin_round(2, full(1.0))
    s.aggregate_train(2, [reply(2, full(2.0), 10, eps=1.5, name="hospital")])
    assert s.book.current.sites_trained == ["hospital@node-2"]
    assert s.book.epsilon_by_site["hospital"] == 0.5


def test_a_name_that_is_not_a_plain_name_is_made_one() -> None:
    s = strategy()
    s.aggregate_train(1, [reply(1, full(1.0), 10, name="../../etc\n" + "x" * 200)])
    (site,) = s.book.current.sites_trained
    assert "/" not in site and "\n" not in site and len(site) <= 64


def test_one_site_claiming_a_huge_count_cannot_take_over_the_average() -> None:
    s = strategy(weight_ratio=10.0)
    # A consistent claim (rate = batch / count) of a million examples.
    arrays, _ = s.aggregate_train(1, [reply(1, full(1.0), 10), reply(2, full(1.0), 10),
                                      reply(3, full(20.0), 1_000_000)])
    weights = capped_weights([10, 10, 1_000_000], 10.0)
    assert weights == [10, 10, 100]
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0],
                               np.average([1.0, 1.0, 20.0], weights=weights), rtol=1e-5)
    assert capped_weights([10, 1_000_000], 10.0) == [10, 100]  # two sites: still capped
    assert capped_weights([7], 10.0) == [7] and capped_weights([5, 500], 0.0) == [5, 500]


def test_an_aggregation_that_fails_keeps_the_head_and_the_run_goes_on() -> None:
    class Broken(FedAvg):
        def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201
            raise RuntimeError("inconsistent replies")

    s = strategy(inner=Broken(**KEYS))
    assert s.aggregate_train(1, [reply(1, full(1.0), 10)]) == (None, None)
    assert "inconsistent replies" in s.book.current.failure
    np.testing.assert_array_equal(s.book.head[0], GLOBAL[0])


def evaluation(node: int, accuracy: object, n: int) -> Message:
    content = RecordDict({
        protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: n,
                                        protocol.ACCURACY: accuracy}),
        protocol.SITE: ConfigRecord({protocol.SITE_NAME: f"site-{node}",
                                     protocol.FINGERPRINT: FP}),
    })
    return Message(content=content, metadata=metadata(node, MessageType.EVALUATE))


def test_evaluation_replies_average_by_held_out_count_beside_the_mean_site_and_bad_ones_are_dropped(
        ) -> None:
    seen: list[RoundRecord] = []
    s = strategy()
    s.book.on_round = seen.append
    extra = evaluation(4, 0.9, 10)
    extra.content[protocol.METRICS]["loss"] = 0.1
    s.aggregate_evaluate(1, [evaluation(1, 0.5, 10), evaluation(2, 1.0, 30),
                             evaluation(3, 7.0, 10), extra])
    assert s.book.current.accuracy == pytest.approx(np.average([0.5, 1.0], weights=[10, 30]))
    assert s.book.current.mean_site_accuracy == pytest.approx(0.75)  # each site counts once
    assert s.book.current.site_accuracy == {"site-1": 0.5, "site-2": 1.0}
    assert s.book.current.site_held_out == {"site-1": 10, "site-2": 30}  # what they weighed
    assert seen == [s.book.current]


def configure(s: Validated, arrays: list[np.ndarray]) -> list[RecordDict]:
    """The RecordDicts configure_train would send (Messages need a running Flower run)."""
    class FakeGrid:
        def get_node_ids(self) -> list[int]:
            return [1, 2]

    s.strategy._construct_messages = lambda record, node_ids, message_type: (
        [record] * len(node_ids))
    return list(s.configure_train(1, ArrayRecord(arrays), ConfigRecord({}), FakeGrid()))


def make(cfg: RunConfig) -> Validated:
    return validated(flower_strategy(cfg), RunBook(GLOBAL), cfg, FP)


def test_a_first_round_begun_while_sites_still_connect_is_sent_to_every_required_site(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.serverapp.strategy.strategy_utils as utils

    monkeypatch.setattr(utils, "sleep", lambda seconds: None)

    class LateGrid:  # one site connected when the round starts, the other two a moment later
        calls = 0

        def get_node_ids(self) -> list[int]:
            self.calls += 1
            return [1] if self.calls == 1 else [1, 2, 3]

    for min_sites, sent in ((0, 3), (2, 2)):  # all --clients, or the --min-sites asked for
        s = make(RunConfig(clients=3, min_sites=min_sites))
        s.strategy._construct_messages = lambda record, node_ids, message_type: list(node_ids)
        nodes = list(s.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord({}), LateGrid()))
        assert len(nodes) == sent and len(set(nodes)) == sent
        nodes = list(s.configure_evaluate(1, ArrayRecord(GLOBAL), ConfigRecord({}), LateGrid()))
        assert len(nodes) == sent


def test_fedprox_sends_its_mu_to_the_sites_in_the_train_config() -> None:
    s = make(RunConfig(strategy="fedprox", proximal_mu=0.25, ridge_sgd_learning_rate=1.0,
                       clients=1))
    records = configure(s, GLOBAL)
    assert len(records) == 2
    assert all(r.config_records[protocol.CONFIG][protocol.PROXIMAL_MU] == 0.25 for r in records)


def test_fedadam_steps_by_about_the_server_lr_per_coordinate_and_keeps_its_moments() -> None:
    cfg = RunConfig(strategy="fedadam", server_lr=0.1, clients=1, batch_size=BATCH)
    s = make(cfg)
    configure(s, GLOBAL)
    arrays, _ = s.aggregate_train(1, [reply(1, full(2.0), 10), reply(2, full(2.0), 10)])
    # Adam's first step moves each coordinate by ~eta in the update's direction, whatever
    # its size (here 2.0): the server's step size, not the sites', sets the pace.
    for got, want in zip(arrays.to_numpy_ndarrays(), GLOBAL):
        assert np.all(got > 0.05) and np.all(got < 0.5)
        assert got.dtype == want.dtype  # the next round's replies are checked against it
    state = optimizer_state(s)
    assert len(state) == 4
    resumed = make(cfg)
    restore_optimizer_state(resumed, state)
    assert all(np.array_equal(a, b) for a, b in zip(optimizer_state(resumed), state))
    assert optimizer_state(make(RunConfig())) == []


def test_each_round_records_the_worst_site_and_the_spread() -> None:
    s = strategy()
    replies = [evaluation(1, 0.9, 10), evaluation(2, 0.5, 30), evaluation(3, 0.7, 20)]
    s.aggregate_evaluate(1, replies)
    record = s.book.current
    assert record.worst_site_accuracy == pytest.approx(0.5)
    assert record.site_accuracy_std == pytest.approx(np.std([0.9, 0.5, 0.7]))


def test_sites_releasing_only_dp_figures_are_aggregated_and_their_guarantee_kept() -> None:
    s = strategy()
    arrays, _ = s.aggregate_train(1, [reply(1, full(1.0), 10, eps=0.5, exact=False),
                                      reply(2, full(3.0), 10, eps=0.7, exact=False)])
    assert arrays is not None
    assert s.book.current.train_loss is None  # no site sent a loss
    assert s.book.skipped == {}
    privacy = s.book.privacy["site-2"]
    assert (privacy.epsilon, privacy.sampling_rate, privacy.noise_multiplier, privacy.steps) \
        == (0.7, 0.5, 1.2, 4)


def test_a_reply_without_its_dp_settings_is_rejected() -> None:
    s = strategy()
    bad = reply(1, full(1.0), 10)
    del bad.content[protocol.METRICS][protocol.NOISE_MULTIPLIER]
    assert s.aggregate_train(1, [bad]) == (None, None)
    assert s.book.current.rejected == ["node 1"]


def test_the_run_book_round_trips_through_its_snapshot() -> None:
    s = strategy()
    s.aggregate_train(1, [reply(1, full(1.0), 10, name="a"), reply(2, full(2.0), 20)])
    s.book.tightened["a"] = ["target-epsilon 8.0 -> 3.0"]
    s.aggregate_evaluate(1, [evaluation(1, 0.5, 10)])
    state, head = s.book.snapshot()
    import json

    state = json.loads(json.dumps(state))  # what a checkpoint stores
    again = RunBook(GLOBAL)
    again.restore(state, head)
    assert again.history == s.book.history and again.privacy == s.book.privacy
    assert again.names == s.book.names and again.tightened == s.book.tightened
    assert again.round_offset == 1 and again.run_round(1) == 2
    assert all(np.array_equal(a, b) for a, b in zip(again.head, s.book.head))
    assert again.snapshot()[0] == state
