"""The server's FedAvg: weighted averaging and the updates it refuses."""

import time

import numpy as np
import pytest
from flwr.app import (ArrayRecord, ConfigRecord, Error, Message, MessageType, Metadata,
                      MetricRecord, RecordDict)

from common import protocol
from server.strategy import RoundRecord, ValidatingFedAdam, ValidatingFedAvg, make_strategy

FP = "f" * 64
GLOBAL = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]


def metadata(node: int) -> Metadata:
    return Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=60,
                    message_type=MessageType.TRAIN)


def reply(node: int, arrays: list[np.ndarray], n: int, eps: float = 1.0,
          fingerprint: str = FP, exact: bool = True) -> Message:
    figures = {protocol.NUM_EXAMPLES: n, protocol.EPSILON: eps,
               protocol.SAMPLING_RATE: 0.5, protocol.NOISE_MULTIPLIER: 1.2, protocol.STEPS: 4}
    if exact:  # a site that also releases its exact figures (--site-metrics exact)
        figures.update({protocol.TRAIN_LOSS: 0.5, protocol.EXTRACT_SECONDS: 0.0,
                        protocol.SKIPPED_IMAGES: 0})
    content = RecordDict({
        protocol.ARRAYS: ArrayRecord(arrays),
        protocol.METRICS: MetricRecord(figures),
        protocol.SITE: ConfigRecord({protocol.SITE_NAME: f"site-{node}",
                                     protocol.FINGERPRINT: fingerprint}),
    })
    return Message(content=content, metadata=metadata(node))


def strategy(required: int = 1) -> ValidatingFedAvg:
    s = ValidatingFedAvg(fingerprint=FP, max_update_norm=100.0, min_train_nodes=required,
                         weighted_by_key=protocol.NUM_EXAMPLES,
                         arrayrecord_key=protocol.ARRAYS, configrecord_key=protocol.CONFIG)
    s._global = [a.copy() for a in GLOBAL]
    s.history.append(RoundRecord(round=1))
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
    record = s.history[-1]
    assert record.sites_trained == ["site-1", "site-2"]
    assert record.epsilon_max == 0.8
    assert record.train_loss == pytest.approx(0.5)
    assert s.epsilon_by_site == {"site-1": 0.5, "site-2": 0.8}


@pytest.mark.parametrize("bad", [
    reply(9, [np.full((3, 2), np.nan, np.float32), np.zeros(2, np.float32)], 10),
    reply(9, [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)], 10),
    reply(9, full(1e4), 10),
    reply(9, full(1.0), 10, fingerprint="0" * 64),
    reply(9, full(1.0), 0),
    reply(9, full(1.0), 10, eps=float("nan")),
    reply(9, full(1.0), 10, eps=-1.0),
])
def test_poisoned_or_foreign_updates_are_dropped_and_the_round_goes_on(bad: Message) -> None:
    s = strategy()
    arrays, _ = s.aggregate_train(1, [reply(1, full(2.0), 10), bad])
    for got in arrays.to_numpy_ndarrays():
        np.testing.assert_allclose(got, 2.0)
    assert s.history[-1].rejected == ["node 9"]
    assert s.history[-1].sites_trained == ["site-1"]


def test_a_malformed_figure_is_rejected_not_a_crash() -> None:
    bad = reply(9, full(1.0), 10)
    bad.content[protocol.METRICS][protocol.EXTRACT_SECONDS] = [1.0, 2.0]
    s = strategy()
    arrays, _ = s.aggregate_train(1, [reply(1, full(2.0), 10), bad])
    assert s.history[-1].rejected == ["node 9"]
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[1], 2.0)


def test_a_site_that_declines_for_budget_is_recorded_and_skipped() -> None:
    s = strategy()
    declined = Message(error=Error(code=protocol.BUDGET_EXHAUSTED, reason="spent"),
                       metadata=metadata(5))
    arrays, _ = s.aggregate_train(1, [reply(1, full(3.0), 10), declined])
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], 3.0)
    assert s.history[-1].declined == ["node 5"]


def test_a_round_where_nobody_trains_keeps_the_global_head() -> None:
    s = strategy()
    assert s.aggregate_train(1, [reply(1, full(1e9), 10)]) == (None, None)


def test_fewer_accepted_updates_than_required_sites_keep_the_global_head() -> None:
    s = strategy(required=2)
    assert s.aggregate_train(1, [reply(1, full(1.0), 10), reply(2, full(1e9), 10)]) == (None, None)
    assert s.history[-1].sites_trained == ["site-1"] and s.history[-1].rejected == ["node 2"]
    assert s.arrays == []  # nothing new to checkpoint: the round's global head stands


def evaluation(node: int, accuracy: object, n: int) -> Message:
    content = RecordDict({
        protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: n,
                                        protocol.ACCURACY: accuracy}),
        protocol.SITE: ConfigRecord({protocol.SITE_NAME: f"site-{node}"}),
    })
    return Message(content=content, metadata=metadata(node))


def test_evaluation_replies_average_by_held_out_count_and_bad_ones_are_dropped() -> None:
    seen: list[RoundRecord] = []
    s = strategy()
    s.on_round = seen.append
    s.aggregate_evaluate(1, [evaluation(1, 0.5, 10), evaluation(2, 1.0, 30),
                             evaluation(3, 7.0, 10)])
    assert s.history[-1].accuracy == pytest.approx(np.average([0.5, 1.0], weights=[10, 30]))
    assert s.history[-1].site_accuracy == {"site-1": 0.5, "site-2": 1.0}
    assert seen == [s.history[-1]]


def common_args() -> dict:
    return dict(fingerprint=FP, max_update_norm=100.0, min_train_nodes=1,
                weighted_by_key=protocol.NUM_EXAMPLES, arrayrecord_key=protocol.ARRAYS,
                configrecord_key=protocol.CONFIG)


class FakeGrid:
    def get_node_ids(self) -> list[int]:
        return [1, 2]


def configure(s, arrays: list[np.ndarray]) -> list[RecordDict]:  # type: ignore[no-untyped-def]
    """The RecordDicts configure_train would send (Messages need a running Flower run)."""
    s._construct_messages = lambda record, node_ids, message_type: [record] * len(node_ids)
    return list(s.configure_train(1, ArrayRecord(arrays), ConfigRecord({}), FakeGrid()))


def test_fedprox_sends_its_mu_to_the_sites_in_the_train_config() -> None:
    s = make_strategy("fedprox", proximal_mu=0.25, server_lr=0.1, min_available_nodes=1,
                      **common_args())
    records = configure(s, GLOBAL)
    assert len(records) == 2
    assert all(r.config_records[protocol.CONFIG][protocol.PROXIMAL_MU] == 0.25 for r in records)


def test_fedadam_steps_by_about_the_server_lr_per_coordinate_and_keeps_its_moments() -> None:
    s = make_strategy("fedadam", proximal_mu=0.0, server_lr=0.1, min_available_nodes=1,
                      **common_args())
    assert isinstance(s, ValidatingFedAdam)
    configure(s, GLOBAL)
    arrays, _ = s.aggregate_train(1, [reply(1, full(2.0), 10), reply(2, full(2.0), 10)])
    # Adam's first step moves each coordinate by ~eta in the update's direction, whatever
    # its size (here 2.0): the server's step size, not the sites', sets the pace.
    for got, want in zip(arrays.to_numpy_ndarrays(), GLOBAL):
        assert np.all(got > 0.05) and np.all(got < 0.5)
        assert got.dtype == want.dtype  # the next round's replies are checked against it
    state = s.server_state()
    assert len(state) == 4
    resumed = make_strategy("fedadam", proximal_mu=0.0, server_lr=0.1, **common_args())
    resumed.restore_server_state(state)
    assert all(np.array_equal(a, b) for a, b in zip(resumed.server_state(), state))
    assert make_strategy("fedavg", proximal_mu=0.0, server_lr=0.1,
                         **common_args()).server_state() == []


def test_each_round_records_the_worst_site_and_the_spread() -> None:
    s = strategy()
    replies = [evaluation(1, 0.9, 10), evaluation(2, 0.5, 30), evaluation(3, 0.7, 20)]
    s.aggregate_evaluate(1, replies)
    record = s.history[-1]
    assert record.worst_site_accuracy == pytest.approx(0.5)
    assert record.site_accuracy_std == pytest.approx(np.std([0.9, 0.5, 0.7]))


def test_sites_releasing_only_dp_figures_are_aggregated_and_their_guarantee_kept() -> None:
    s = strategy()
    arrays, _ = s.aggregate_train(1, [reply(1, full(1.0), 10, eps=0.5, exact=False),
                                      reply(2, full(3.0), 10, eps=0.7, exact=False)])
    assert arrays is not None
    assert s.history[-1].train_loss is None  # no site sent a loss
    assert s.skipped_by_site == {}
    privacy = s.privacy_by_site["site-2"]
    assert (privacy.epsilon, privacy.sampling_rate, privacy.noise_multiplier, privacy.steps) \
        == (0.7, 0.5, 1.2, 4)


def test_a_reply_without_its_dp_settings_is_rejected() -> None:
    s = strategy()
    bad = reply(1, full(1.0), 10)
    del bad.content[protocol.METRICS][protocol.NOISE_MULTIPLIER]
    assert s.aggregate_train(1, [bad]) == (None, None)
    assert s.history[-1].rejected == ["node 1"]
