"""The ClientApp, driven with hand-built Messages and Contexts (no network, no Ray)."""

from __future__ import annotations

import json
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


def outgoing(reply: Message) -> dict[str, dict[str, object]]:
    """Every record of a reply, by kind, as plain dicts (what goes over the wire)."""
    content = reply.content
    return {"arrays": {k: [a.shape for a in v.to_numpy_ndarrays()]
                       for k, v in content.array_records.items()},
            "metrics": {k: dict(v) for k, v in content.metric_records.items()},
            "configs": {k: dict(v) for k, v in content.config_records.items()}}


@pytest.mark.parametrize("site_metrics", ["exact", "noised"])
def test_train_reply_holds_exactly_the_head_and_the_documented_figures(
        cfg: RunConfig, site_metrics: str) -> None:
    cfg = cfg.replace(site_metrics=site_metrics, out=f"{cfg.out}-{site_metrics}")
    fingerprint = base_fingerprint(base_spec(cfg))
    reply = make_client_app(cfg)(message(MessageType.TRAIN, fingerprint), context())
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    sent = outgoing(reply)
    assert sent["arrays"] == {protocol.ARRAYS: [(512, 10), (10,)]}
    assert set(sent["configs"]) == {protocol.SITE}
    assert sent["configs"][protocol.SITE] == {protocol.SITE_NAME: "site-1",
                                              protocol.FINGERPRINT: fingerprint}
    figures = sent["metrics"][protocol.METRICS]
    assert set(sent["metrics"]) == {protocol.METRICS}
    expected = set(protocol.TRAIN_FIGURES)
    if site_metrics == "exact":
        expected |= set(protocol.EXACT_TRAIN_FIGURES)
    assert set(figures) == expected
    assert 0 < figures[protocol.EPSILON] <= cfg.target_epsilon
    # Every DP figure is the one in the site's ledger: the count it released, the settings
    # computed from that count.
    ledger = json.loads(Path(cfg.out, "sites", "site-1", "privacy-ledger.json").read_text())
    (entry,) = ledger["runs"].values()
    assert figures[protocol.NUM_EXAMPLES] == entry["public_count"]
    assert figures[protocol.SAMPLING_RATE] == entry["sampling_rate"]
    assert figures[protocol.NOISE_MULTIPLIER] == entry["noise_multiplier"]
    assert figures[protocol.STEPS] == entry["steps"]
    assert figures[protocol.EPSILON] == pytest.approx(entry["epsilon"])
    assert entry["count_noise"] == cfg.count_noise  # the noised count is accounted


def test_a_data_error_reaches_the_server_without_the_sites_class_names(
        cfg: RunConfig, tmp_path: Path) -> None:
    from .conftest import write_image_folder

    data = write_image_folder(tmp_path / "data", {c: 3 for c in ("rare-disease-x", "other")})
    node = {"data": str(data), "state": str(tmp_path / "state"), "site-name": "clinic",
            "budget": 3.0}
    site = Context(run_id=7, node_id=3, node_config=node, state=RecordDict(), run_config={})
    reply = make_client_app(cfg)(
        message(MessageType.TRAIN, base_fingerprint(base_spec(cfg))), site)
    assert reply.has_error() and reply.error.code == protocol.INCOMPATIBLE
    assert "clinic" in reply.error.reason
    assert "rare-disease-x" not in reply.error.reason and str(data) not in reply.error.reason


def test_a_foreign_base_fingerprint_is_refused_without_training(cfg: RunConfig) -> None:
    reply = make_client_app(cfg)(message(MessageType.TRAIN, "0" * 64), context())
    assert reply.has_error() and reply.error.code == protocol.INCOMPATIBLE
    assert "fingerprint" in reply.error.reason


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


def test_a_sites_own_release_policy_overrides_a_run_that_asks_for_more(
        cfg: RunConfig, tmp_path: Path) -> None:
    site = real_site(tmp_path, budget=3.0)
    site.node_config["site-metrics"] = "none"
    fingerprint = base_fingerprint(base_spec(cfg))
    app = make_client_app(cfg.replace(site_metrics="exact"))
    trained = app(message(MessageType.TRAIN, fingerprint), site)
    assert not trained.has_error(), trained.error.reason if trained.has_error() else ""
    assert set(trained.content[protocol.METRICS]) == set(protocol.TRAIN_FIGURES)
    evaluated = app(message(MessageType.EVALUATE, fingerprint), site)
    assert evaluated.has_error() and evaluated.error.code == protocol.WITHHELD


def test_a_site_policy_never_loosens_the_run() -> None:
    from common.config import SiteConfig
    from common.ledger import SiteBudget

    site = SiteConfig(name="a", data="d", state=Path("s"), budget=SiteBudget(1.0),
                      cache_dir=None, site_metrics="noised")
    assert site.policy(RunConfig(site_metrics="exact")).site_metrics == "noised"
    assert site.policy(RunConfig(site_metrics="none")).site_metrics == "none"
