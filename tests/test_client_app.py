"""The ClientApp, driven with hand-built Messages and Contexts (no network, no Ray)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from flwr.app import (ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata,
                      RecordDict)

from client.client_app import make_client_app
from common import protocol
from common.config import RunConfig
from common.model import base_fingerprint, initial_head_weights
from common.site import base_spec

DIGITS = tuple(str(d) for d in range(10))


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> RunConfig:
    root = tmp_path_factory.mktemp("client")
    return RunConfig(dataset="digits", max_per_class=10, clients=2, rounds=2,
                     out=str(root / "out"), state=str(root / "sites"))


def message(kind: str, fingerprint: str, classes=DIGITS) -> Message:
    content = RecordDict({
        protocol.ARRAYS: ArrayRecord(initial_head_weights(512, len(classes), 0, seed=0)),
        protocol.CONFIG: ConfigRecord({protocol.FINGERPRINT: fingerprint,
                                       protocol.CLASSES: list(classes), "server-round": 1}),
    })
    meta = Metadata(run_id=7, message_id="m1", src_node_id=0, dst_node_id=1,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=600,
                    message_type=kind)
    return Message(content=content, metadata=meta)


def context() -> Context:
    return Context(run_id=7, node_id=1, node_config={"partition-id": 1, "num-partitions": 2},
                   state=RecordDict(), run_config={})


def test_train_reply_holds_only_the_head_and_the_documented_figures(cfg: RunConfig) -> None:
    fingerprint = base_fingerprint(base_spec(cfg))
    reply = make_client_app(cfg)(message(MessageType.TRAIN, fingerprint), context())
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    content = reply.content
    assert set(content.array_records) == {protocol.ARRAYS}
    assert set(content.metric_records) == {protocol.METRICS}
    assert set(content.config_records) == {protocol.SITE}
    arrays = content[protocol.ARRAYS].to_numpy_ndarrays()
    assert [a.shape for a in arrays] == [(512, 10), (10,)]
    assert set(content[protocol.METRICS]) == {
        protocol.NUM_EXAMPLES, protocol.TRAIN_LOSS, protocol.EPSILON,
        protocol.EXTRACT_SECONDS, protocol.SKIPPED_IMAGES}
    assert 0 < content[protocol.METRICS][protocol.EPSILON] <= cfg.target_epsilon
    assert dict(content[protocol.SITE]) == {protocol.SITE_NAME: "site-1",
                                            protocol.FINGERPRINT: fingerprint}
    assert Path(cfg.out, "sites", "site-1", "privacy-ledger.json").exists()


def test_a_foreign_base_fingerprint_is_refused_without_training(cfg: RunConfig) -> None:
    reply = make_client_app(cfg)(message(MessageType.TRAIN, "0" * 64), context())
    assert reply.has_error() and reply.error.code == protocol.INCOMPATIBLE
    assert "fingerprint" in reply.error.reason


def test_a_federation_with_other_classes_is_refused_naming_them(cfg: RunConfig) -> None:
    fingerprint = base_fingerprint(base_spec(cfg))
    other = tuple("abcdefghij")
    reply = make_client_app(cfg)(message(MessageType.TRAIN, fingerprint, other), context())
    assert reply.has_error() and reply.error.code == protocol.INCOMPATIBLE
    assert "unexpected" in reply.error.reason


def test_evaluate_reports_held_out_accuracy(cfg: RunConfig) -> None:
    fingerprint = base_fingerprint(base_spec(cfg))
    reply = make_client_app(cfg)(message(MessageType.EVALUATE, fingerprint), context())
    assert not reply.has_error()
    metrics = reply.content[protocol.METRICS]
    assert 0.0 <= metrics[protocol.ACCURACY] <= 1.0 and metrics[protocol.NUM_EXAMPLES] > 0
    assert not reply.content.array_records


def test_a_real_site_without_data_folder_is_told_what_to_configure(cfg: RunConfig) -> None:
    fingerprint = base_fingerprint(base_spec(cfg))
    bare = Context(run_id=7, node_id=3, node_config={}, state=RecordDict(), run_config={})
    reply = make_client_app(cfg)(message(MessageType.TRAIN, fingerprint), bare)
    assert reply.has_error() and reply.error.code == protocol.INCOMPATIBLE
    assert "lacks ['data', 'state', 'budget']" in reply.error.reason
    assert "fedtl client" in reply.error.reason


def real_site(tmp_path: Path, budget: float) -> Context:
    from .conftest import write_image_folder

    data = write_image_folder(tmp_path / "data", {d: 6 for d in DIGITS})
    node = {"data": str(data), "state": str(tmp_path / "state"), "site-name": "clinic",
            "budget": budget}
    return Context(run_id=7, node_id=3, node_config=node, state=RecordDict(), run_config={})


def test_a_real_site_spends_no_more_than_its_own_budget_and_keys_its_ledger_by_run_id(
        cfg: RunConfig, tmp_path: Path) -> None:
    import json

    fingerprint = base_fingerprint(base_spec(cfg))
    msg = message(MessageType.TRAIN, fingerprint)
    msg.content[protocol.CONFIG][protocol.RUN_ID] = "run-abc"
    site = real_site(tmp_path, budget=1.0)
    reply = make_client_app(cfg.replace(target_epsilon=3.0))(msg, site)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert reply.content[protocol.SITE][protocol.SITE_NAME] == "clinic"
    ledger = json.loads((tmp_path / "state" / "privacy-ledger.json").read_text())
    assert set(ledger["runs"]) == {"run-abc"}
    assert ledger["budget"]["epsilon"] == 1.0
    # Two rounds planned: the first spends part of the site's 1.0, not of the run's 3.0.
    assert 0 < reply.content[protocol.METRICS][protocol.EPSILON] < 1.0
