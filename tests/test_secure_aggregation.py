"""The site's side of secure aggregation, with hand-built legacy messages (no network)."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import (ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, Metadata,
                      MetricRecord, RecordDict)
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from client.secure_aggregation import legacy_messages_mod, secure_aggregation_mod
from common import protocol

HEAD = [np.full((4, 2), 0.5, np.float32), np.zeros(2, np.float32)]


def legacy_fit(config: dict) -> Message:
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(HEAD), {}), True)
    content.config_records["fitins.config"] = ConfigRecord(config)
    meta = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=2,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=60,
                    message_type=MessageType.TRAIN)
    return Message(content=content, metadata=meta)


def context() -> Context:
    return Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})


def handler(scale: float = 1.0, error: Error | None = None):
    seen: list[Message] = []

    def train(msg: Message, ctxt: Context) -> Message:
        seen.append(msg)
        if error is not None:
            return Message(error, reply_to=msg)
        arrays = msg.content[protocol.ARRAYS].to_numpy_ndarrays()
        return Message(RecordDict({
            protocol.ARRAYS: ArrayRecord([a * scale for a in arrays]),
            protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: 40, protocol.EPSILON: 1.0}),
            protocol.SITE: ConfigRecord({protocol.SITE_NAME: "clinic",
                                         protocol.FINGERPRINT: "f" * 64}),
        }), reply_to=msg)

    return train, seen


def test_a_legacy_fit_reaches_the_handler_in_the_message_api_and_returns_as_fitres() -> None:
    train, seen = handler()
    config = {protocol.CLASSES: ["a", "b"], protocol.SECAGG_CLIP: 8.0}
    reply = legacy_messages_mod(legacy_fit(config), context(), train)
    (modern,) = seen
    np.testing.assert_array_equal(modern.content[protocol.ARRAYS].to_numpy_ndarrays()[0], HEAD[0])
    assert list(modern.content[protocol.CONFIG][protocol.CLASSES]) == ["a", "b"]  # a list
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    assert fitres.num_examples == 40
    assert fitres.metrics[protocol.SITE_NAME] == "clinic"  # the site record rides as metrics
    assert fitres.metrics[protocol.EPSILON] == 1.0


def test_a_head_beyond_the_secagg_clip_is_refused_not_silently_clipped() -> None:
    train, _ = handler(scale=100.0)  # weights of 50
    msg = legacy_fit({protocol.CLASSES: ["a", "b"], protocol.SECAGG_CLIP: 8.0})
    reply = secure_aggregation_mod(msg, context(),
                                   lambda m, c: legacy_messages_mod(m, c, train))
    assert reply.has_error() and reply.error.code == protocol.INCOMPATIBLE
    assert "--secagg-clip" in reply.error.reason


def test_a_declining_site_stays_declined_through_the_mods() -> None:
    train, _ = handler(error=Error(code=protocol.BUDGET_EXHAUSTED, reason="spent"))
    msg = legacy_fit({protocol.CLASSES: ["a", "b"]})
    reply = secure_aggregation_mod(msg, context(),
                                   lambda m, c: legacy_messages_mod(m, c, train))
    assert reply.has_error() and reply.error.code == protocol.BUDGET_EXHAUSTED


def test_messages_of_the_message_api_pass_through_untouched() -> None:
    train, seen = handler()
    msg = legacy_fit({})
    msg = Message(content=RecordDict({protocol.ARRAYS: ArrayRecord(HEAD),
                                      protocol.CONFIG: ConfigRecord({})}),
                  metadata=msg.metadata)
    secure_aggregation_mod(msg, context(), lambda m, c: legacy_messages_mod(m, c, train))
    assert seen == [msg]


def secure_rounds():
    from common.config import RunConfig
    from server.replies import ReplyRules
    from server.runbook import RunBook
    from server.secure import SecureRounds

    book = RunBook(HEAD)
    rules = ReplyRules(fingerprint="f" * 64, max_update_norm=100.0, batch_size=20,
                       private=True, target_epsilon=3.0)
    rounds = SecureRounds(book, RunConfig(classes=("a", "b")), HEAD, {protocol.CLASSES: ["a"]},
                          rules)
    book.begin_round(1, [a.copy() for a in HEAD])
    return book, rounds


class Proxy:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


def fitres(mean: list[np.ndarray], name: str):
    from flwr.common import Code, FitRes, Status

    metrics = {protocol.NUM_EXAMPLES: 40, protocol.EPSILON: 1.5, protocol.SAMPLING_RATE: 0.5,
               protocol.NOISE_MULTIPLIER: 2.0, protocol.STEPS: 2,
               protocol.SITE_NAME: name, protocol.FINGERPRINT: "f" * 64}
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(mean), 40, metrics)


def test_the_secure_mean_becomes_the_head_and_each_dropout_counts_once() -> None:
    from flwr.common import parameters_to_ndarrays

    book, rounds = secure_rounds()
    mean = [a + 0.1 for a in HEAD]
    declined = Exception(Error(code=protocol.BUDGET_EXHAUSTED, reason="spent"))
    # Flower 1.39 lists a failed reply twice, as the same Error object.
    params, _ = rounds.aggregate_fit(1, [(Proxy(1), fitres(mean, "s1")),
                                         (Proxy(2), fitres(mean, "s2"))],
                                     [declined, Exception(declined.args[0])])
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], mean[0])
    record = book.history[-1]
    assert record.sites_trained == ["s1", "s2"] and len(record.declined) == 1
    assert book.privacy["s2"].noise_multiplier == 2.0
    assert book.head[0].dtype == np.float32


def test_a_corrupt_secure_mean_keeps_the_previous_head() -> None:
    book, rounds = secure_rounds()
    bad = [np.full_like(a, np.nan) for a in HEAD]
    assert rounds.aggregate_fit(1, [(Proxy(1), fitres(bad, "s1"))], []) == (None, {})
    np.testing.assert_array_equal(book.head[0], HEAD[0])
    assert book.current.failure is not None


def test_a_secure_reply_with_figures_that_do_not_fit_the_run_is_dropped_from_the_figures(
        ) -> None:
    book, rounds = secure_rounds()
    mean = [a + 0.1 for a in HEAD]
    liar = fitres(mean, "liar")
    liar.metrics[protocol.EPSILON] = 9.0  # past the run's target of 3
    rounds.aggregate_fit(1, [(Proxy(1), fitres(mean, "s1")), (Proxy(2), liar)], [])
    assert book.current.sites_trained == ["s1"] and book.current.rejected == []
    # Its masked head is inside the sum all the same: the record says so, not "rejected".
    assert book.current.unconfirmed == ["node 2"]
    assert set(book.epsilon_by_site) == {"s1"}  # a figure past the target is no figure
