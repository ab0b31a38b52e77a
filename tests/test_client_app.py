"""The ClientApp, driven with hand-built Messages and Contexts (no network, no Ray)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata,
                      RecordDict)

from client.client_app import make_client_app
from common import protocol
from common.config import RunConfig
from common.personal import (ACCURACY_FILE, JOINT_NOTE_FILE, load_own_release, own_penalty,
                             own_release_share)
from common.privacy.penalty import HIGHEST, LOWEST
from common.features.model import base_fingerprint, initial_head_weights
from common.site import base_spec

DIGITS = tuple(str(d) for d in range(10))


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> RunConfig:
    root = tmp_path_factory.mktemp("client")
    return RunConfig(dataset="digits", max_per_class=10, clients=2, rounds=2, head_method="sgd",
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
                                              protocol.FINGERPRINT: fingerprint,
                                              protocol.TIGHTENED: ""}
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
    count, trained = entry["events"]
    assert figures[protocol.NUM_EXAMPLES] == entry["public_count"]
    assert figures[protocol.SAMPLING_RATE] == trained["sampling_rate"]
    assert figures[protocol.NOISE_MULTIPLIER] == trained["noise_multiplier"]
    assert figures[protocol.STEPS] == trained["steps"]
    assert figures[protocol.EPSILON] == pytest.approx(entry["epsilon"])
    # The noised count is accounted, as one Gaussian query of the run.
    assert count["kind"] == "count" and count["noise_multiplier"] == cfg.count_noise


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


def real_site(tmp_path: Path, budget: float, policy: str | None = None) -> Context:
    """A deployed site (its own folder, state and budget; ``policy``: its policy file)."""
    from .conftest import write_image_folder

    data = write_image_folder(tmp_path / "data", {d: 6 for d in DIGITS})
    node = {"data": str(data), "state": str(tmp_path / "state"), "site-name": "clinic",
            "budget": budget}
    if policy is not None:
        (tmp_path / "policy.toml").write_text(policy)
        node["policy"] = str(tmp_path / "policy.toml")
    return Context(run_id=7, node_id=3, node_config=node, state=RecordDict(), run_config={})


def trail(tmp_path: Path) -> list:
    from common.privacy.audit_trail import AuditTrail

    return AuditTrail(tmp_path / "state").decisions()


def test_a_real_site_spends_no_more_than_its_own_budget_and_keys_its_ledger_by_run_id(
        cfg: RunConfig, tmp_path: Path) -> None:
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


def test_a_request_repeated_after_a_lost_reply_gets_the_same_update_free(
        cfg: RunConfig, tmp_path: Path) -> None:
    fingerprint = base_fingerprint(base_spec(cfg))
    msg = message(MessageType.TRAIN, fingerprint)
    msg.content[protocol.CONFIG][protocol.RUN_ID] = "run-lost"
    site, app = real_site(tmp_path, budget=3.0), make_client_app(cfg)
    ledger = tmp_path / "state" / "privacy-ledger.json"

    first = app(msg, site)
    spent_once = ledger.read_text()
    again = app(msg, site)
    assert not first.has_error() and not again.has_error()
    assert ledger.read_text() == spent_once  # nothing charged for the second answer
    assert [a.tobytes() for a in again.content[protocol.ARRAYS].to_numpy_ndarrays()] == \
        [a.tobytes() for a in first.content[protocol.ARRAYS].to_numpy_ndarrays()]
    assert dict(again.content[protocol.METRICS]) == dict(first.content[protocol.METRICS])

    moved = message(MessageType.TRAIN, fingerprint)  # a new global head: a new round, charged
    moved.content[protocol.CONFIG][protocol.RUN_ID] = "run-lost"
    moved.content[protocol.ARRAYS] = ArrayRecord(
        first.content[protocol.ARRAYS].to_numpy_ndarrays())
    assert not app(moved, site).has_error()
    assert ledger.read_text() != spent_once


def test_a_sites_own_release_policy_overrides_a_run_that_asks_for_more(
        cfg: RunConfig, tmp_path: Path) -> None:
    site = real_site(tmp_path, budget=3.0, policy='site-metrics = "none"\n')
    fingerprint = base_fingerprint(base_spec(cfg))
    app = make_client_app(cfg.replace(site_metrics="exact"))
    trained = app(message(MessageType.TRAIN, fingerprint), site)
    assert not trained.has_error(), trained.error.reason if trained.has_error() else ""
    assert set(trained.content[protocol.METRICS]) == set(protocol.TRAIN_FIGURES)
    assert "site-metrics exact -> none" in trained.content[protocol.SITE][protocol.TIGHTENED]
    evaluated = app(message(MessageType.EVALUATE, fingerprint), site)
    assert evaluated.has_error() and evaluated.error.code == protocol.WITHHELD


def test_a_site_refuses_a_run_without_dp_and_releases_nothing(cfg: RunConfig,
                                                              tmp_path: Path) -> None:
    # The server's run config turns DP off; the site's policy (here: defaults, and figures
    # "none") does not allow it, so nothing is trained, charged or released.
    site = real_site(tmp_path, budget=3.0, policy='site-metrics = "none"\n')
    fingerprint = base_fingerprint(base_spec(cfg))
    app = make_client_app(cfg.replace(dp=False, site_metrics="exact"))
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        reply = app(message(kind, fingerprint), site)
        assert reply.has_error() and reply.error.code == protocol.POLICY_REFUSED
        assert "policy" in reply.error.reason and "dp" not in reply.error.reason.lower()
    assert not (tmp_path / "state" / "privacy-ledger.json").exists()
    (decision,) = trail(tmp_path)  # two requests, one decision
    assert decision.decision == "refused" and "differential privacy" in decision.reason
    assert decision.settings["dp"] is False


def test_a_site_that_allows_runs_without_dp_records_them_as_not_private(
        cfg: RunConfig, tmp_path: Path) -> None:
    site = real_site(tmp_path, budget=3.0, policy="allow-no-dp = true\n")
    fingerprint = base_fingerprint(base_spec(cfg))
    reply = make_client_app(cfg.replace(dp=False))(message(MessageType.TRAIN, fingerprint),
                                                   site)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    ledger = json.loads((tmp_path / "state" / "privacy-ledger.json").read_text())
    (entry,) = ledger["runs"].values()
    assert entry["epsilon"] is None and entry["events"][0]["kind"] == "non-private"
    assert trail(tmp_path)[0].decision == "admitted"


def test_a_run_asking_for_more_epsilon_than_the_policy_allows_is_tightened(
        cfg: RunConfig, tmp_path: Path) -> None:
    site = real_site(tmp_path, budget=20.0, policy="max-run-epsilon = 2.0\n")
    fingerprint = base_fingerprint(base_spec(cfg))
    reply = make_client_app(cfg.replace(target_epsilon=8.0))(
        message(MessageType.TRAIN, fingerprint), site)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert "target-epsilon 8.0 -> 2.0" in reply.content[protocol.SITE][protocol.TIGHTENED]
    assert reply.content[protocol.METRICS][protocol.EPSILON] <= 2.0 + 1e-6
    ledger = json.loads((tmp_path / "state" / "privacy-ledger.json").read_text())
    (entry,) = ledger["runs"].values()
    assert entry["target_epsilon"] == 2.0
    (decision,) = trail(tmp_path)
    assert decision.decision == "tightened" and decision.settings["target-epsilon"] == 8.0


def test_a_site_that_refuses_looser_runs_refuses_without_saying_its_limits(
        cfg: RunConfig, tmp_path: Path) -> None:
    site = real_site(tmp_path, budget=20.0,
                     policy='max-run-epsilon = 2.0\non-violation = "refuse"\n')
    reply = make_client_app(cfg.replace(target_epsilon=8.0))(
        message(MessageType.TRAIN, base_fingerprint(base_spec(cfg))), site)
    assert reply.has_error() and reply.error.code == protocol.POLICY_REFUSED
    assert "2.0" not in reply.error.reason and "8.0" not in reply.error.reason
    assert "target-epsilon 8.0 -> 2.0" in trail(tmp_path)[0].reason


def test_a_declining_site_tells_the_server_nothing_about_its_budget(
        cfg: RunConfig, tmp_path: Path) -> None:
    site = real_site(tmp_path, budget=0.05)
    reply = make_client_app(cfg)(message(MessageType.TRAIN, base_fingerprint(base_spec(cfg))),
                                 site)
    assert reply.has_error() and reply.error.code == protocol.BUDGET_EXHAUSTED
    assert not any(ch.isdigit() for ch in reply.error.reason.replace("clinic", ""))
    assert trail(tmp_path)[-1].decision == "declined"
    assert "0.05" in trail(tmp_path)[-1].reason  # the details stay at the site


def test_a_site_whose_budget_is_spent_declines_a_new_run_before_reading_an_image(
        cfg: RunConfig, tmp_path: Path) -> None:
    from common.privacy.accounting import Mechanism, composed_epsilon
    from common.privacy.ledger import LedgerEvent, PrivacyLedger, RunHeader

    site = real_site(tmp_path, budget=1.0)
    ledger = PrivacyLedger(tmp_path / "state")
    steps = 1
    while composed_epsilon([Mechanism(0.5, 1.0, steps)], delta=1e-5) < 1.0:
        steps *= 2
    with ledger.transaction() as book:  # an earlier run that used the whole budget
        book.append("earlier", [LedgerEvent("dp-sgd", 0.5, 1.0, steps)],
                    RunHeader(target_epsilon=9.0, delta=1e-5, accountant="rdp",
                              public_count=100, noise_multiplier=1.0))
    before = (tmp_path / "state" / "privacy-ledger.json").read_text()
    # Every image unreadable: had the site listed or hashed its folder, it would say so.
    for image in (tmp_path / "data").rglob("*.jpg"):
        image.write_bytes(b"not an image")
    fingerprint = base_fingerprint(base_spec(cfg))
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        reply = make_client_app(cfg)(message(kind, fingerprint), site)
        assert reply.has_error() and reply.error.code == protocol.BUDGET_EXHAUSTED
        assert "is spent" in trail(tmp_path)[-1].reason
        assert trail(tmp_path)[-1].decision == "declined"
    assert (tmp_path / "state" / "privacy-ledger.json").read_text() == before
    assert not (tmp_path / "state" / "features").exists()
    # With room in its budget the same site reads its folder, and refuses it as unreadable.
    roomy = real_site(tmp_path / "roomy", budget=20.0)
    (tmp_path / "roomy" / "state").mkdir(parents=True)
    (tmp_path / "roomy" / "state" / "privacy-ledger.json").write_text(before)
    for image in (tmp_path / "roomy" / "data").rglob("*.jpg"):
        image.write_bytes(b"not an image")
    reply = make_client_app(cfg)(message(MessageType.TRAIN, fingerprint), roomy)
    assert reply.has_error() and reply.error.code == protocol.INCOMPATIBLE


@pytest.mark.parametrize("run_id", ["../x", "../../escape", "a/b", "..", ".hidden", "x" * 200,
                                    "run\nid"])
def test_a_run_id_that_is_not_a_plain_name_is_refused_before_it_becomes_a_path(
        cfg: RunConfig, tmp_path: Path, run_id: str) -> None:
    site = real_site(tmp_path, budget=3.0)
    msg = message(MessageType.TRAIN, base_fingerprint(base_spec(cfg)))
    msg.content[protocol.CONFIG][protocol.RUN_ID] = run_id
    reply = make_client_app(cfg.replace(personalize=True))(msg, site)
    assert reply.has_error() and "malformed run id" in reply.error.reason
    personal = message(f"train.{protocol.PERSONALIZE}", base_fingerprint(base_spec(cfg)))
    personal.content[protocol.CONFIG][protocol.RUN_ID] = run_id
    assert make_client_app(cfg)(personal, site).has_error()
    # Nothing outside the state folder, and in it only the audit trail of the refusal.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "state"]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [".state.lock",
                                                                       "audit.jsonl"]
    assert {(d.decision, d.run_id) for d in trail(tmp_path)} == {("refused", "(malformed)")}


def test_a_run_that_needs_approval_is_refused_until_an_operator_approves_it(
        cfg: RunConfig, tmp_path: Path) -> None:
    from common.privacy.audit_trail import AuditTrail

    site = real_site(tmp_path, budget=3.0,
                     policy='require-approval = true\napproved-runs = ["study-*"]\n')
    app = make_client_app(cfg)
    fingerprint = base_fingerprint(base_spec(cfg))

    def ask(run_id: str) -> Message:
        msg = message(MessageType.TRAIN, fingerprint)
        msg.content[protocol.CONFIG][protocol.RUN_ID] = run_id
        return app(msg, site)

    assert ask("adhoc-1").error.code == protocol.POLICY_REFUSED
    AuditTrail(tmp_path / "state").approve("adhoc-1", by="dr-ops")
    assert not ask("adhoc-1").has_error()
    assert not ask("study-2027").has_error()  # approved in advance by the policy's pattern
    decisions = [(d.run_id, d.decision) for d in trail(tmp_path)]
    # Admitted, and tightened by the safe defaults (the run asks for exact figures).
    assert decisions == [("adhoc-1", "refused"), ("adhoc-1", "approved"),
                         ("adhoc-1", "tightened"), ("study-2027", "tightened")]


def test_a_server_head_of_the_wrong_shape_is_refused_before_training(
        cfg: RunConfig, tmp_path: Path) -> None:
    site = real_site(tmp_path, budget=3.0)
    msg = message(MessageType.TRAIN, base_fingerprint(base_spec(cfg)))
    msg.content[protocol.ARRAYS] = ArrayRecord([np.ones((7, 7), np.float32)])
    reply = make_client_app(cfg)(msg, site)
    assert reply.has_error() and "shapes" in reply.error.reason
    assert not (tmp_path / "state" / "privacy-ledger.json").exists()


def test_an_unexpected_failure_is_refused_without_details(cfg: RunConfig, tmp_path: Path,
                                                          monkeypatch) -> None:
    import client.client_app as client_app

    def boom(*args, **kwargs):
        raise RuntimeError(f"secret detail at {tmp_path}")

    monkeypatch.setattr(client_app, "train_round", boom)
    site = real_site(tmp_path, budget=3.0)
    reply = make_client_app(cfg)(message(MessageType.TRAIN, base_fingerprint(base_spec(cfg))),
                                 site)
    assert reply.has_error() and "its log says why" in reply.error.reason
    assert "secret" not in reply.error.reason and str(tmp_path) not in reply.error.reason


@pytest.mark.parametrize("how", ["plain", "forged-secure"])
def test_a_release_the_server_did_not_mask_carries_all_its_noise_whatever_the_run_asks(
        cfg: RunConfig, tmp_path: Path, how: str) -> None:
    from common.privacy.ledger import PrivacyLedger
    from common.privacy.oneshot import public_basis

    run = cfg.replace(head_method="ridge", rounds=1, secure_aggregation=True,
                      sums_noise="distributed", public_components=8)
    basis = public_basis(np.random.default_rng(0).normal(size=(200, 512)).astype(np.float32),
                         8, "test")
    config = {protocol.FINGERPRINT: base_fingerprint(base_spec(run)),
              protocol.CLASSES: list(DIGITS), protocol.RUN_ID: f"run-{how}",
              protocol.PUBLIC_RECIPE: basis.recipe, protocol.SECAGG_CLIP: 1.0}
    if how == "plain":  # the one-shot request of a run without SecAgg+
        content = RecordDict({protocol.PUBLIC: ArrayRecord(basis.arrays()),
                              protocol.CONFIG: ConfigRecord(config)})
        kind = f"{MessageType.TRAIN}.{protocol.CLASS_SUMS}"
    else:  # the masked round's request, sent outside SecAgg+, claiming 99 masking sites
        content = RecordDict({protocol.ARRAYS: ArrayRecord(basis.arrays()),
                              protocol.CONFIG: ConfigRecord({**config, protocol.SECURE_SUMS: True,
                                                             protocol.MASKED_OVER: 99})})
        kind = MessageType.TRAIN
    msg = message(kind, "")
    msg = Message(content=content, metadata=msg.metadata)
    site = real_site(tmp_path, budget=10.0, policy="distributed-noise-sites = 3\n")
    reply = make_client_app(run)(msg, site)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    entry = PrivacyLedger(tmp_path / "state").runs()[f"run-{how}"]
    (sums,) = [e for e in entry.events if e.kind == "sums"]
    assert sums.local_noise_multiplier is None  # all of the noise, here
    assert entry.epsilon_on_its_own is None


def released_sums(run: RunConfig, site: Context, run_id: str) -> Message:
    """A site's one-shot release in ``run`` (8 public components of a random basis)."""
    from common.privacy.oneshot import public_basis

    basis = public_basis(np.random.default_rng(0).normal(size=(200, 512)).astype(np.float32),
                         8, "test")
    config = {protocol.FINGERPRINT: base_fingerprint(base_spec(run)),
              protocol.CLASSES: list(DIGITS), protocol.RUN_ID: run_id,
              protocol.PUBLIC_RECIPE: basis.recipe}
    sums = message(f"{MessageType.TRAIN}.{protocol.CLASS_SUMS}", "")
    sums = Message(content=RecordDict({protocol.PUBLIC: ArrayRecord(basis.arrays()),
                                       protocol.CONFIG: ConfigRecord(config)}),
                   metadata=sums.metadata)
    released = make_client_app(run)(sums, site)
    assert not released.has_error(), released.error.reason if released.has_error() else ""
    return released


def personalization(run: RunConfig, run_id: str, released: Message | None) -> Message:
    """The server's personalization request; with ``released``, its totals are that release
    alone (a federation of this one site)."""
    msg = message(f"{MessageType.TRAIN}.{protocol.PERSONALIZE}",
                  base_fingerprint(base_spec(run)))
    msg.content[protocol.CONFIG][protocol.RUN_ID] = run_id
    if released is not None:
        msg.content[protocol.ONE_SHOT_TOTALS] = released.content[protocol.ARRAYS]
        msg.content[protocol.CONFIG][protocol.ONE_SHOT_COUNT] = float(
            released.content[protocol.METRICS][protocol.NUM_EXAMPLES])
    return msg


@pytest.mark.parametrize(("tuning", "policy", "played", "weighting"), [
    ("ridge", None, "ridge", "fixed"),
    ("ridge", None, "ridge", "estimated"),
    ("joint", "allow-joint-personal-heads = true\n", "joint", "fixed"),
    # A server cannot make a site hold a head that is not DP for its images: it gets ridge.
    ("joint", None, "ridge", "fixed")])
def test_a_site_builds_its_ridge_personal_head_from_its_kept_release_and_spends_nothing(
        cfg: RunConfig, tmp_path: Path, tuning: str, policy: str | None, played: str,
        weighting: str) -> None:
    run = cfg.replace(head_method="ridge", rounds=1, personalize=True,
                      personal_tuning=tuning, public_components=8, site_metrics="noised",
                      personal_weighting=weighting)
    site, app = real_site(tmp_path, budget=10.0, policy=policy), make_client_app(run)
    released = released_sums(run, site, "run-p")
    personal = tmp_path / "state" / "personal" / "run-p"
    assert (personal / "own_release.npz").is_file()  # kept before the release left
    ledger = tmp_path / "state" / "privacy-ledger.json"
    spent = ledger.read_text()

    def ask(with_totals: bool) -> Message:
        return personalization(run, "run-p", released if with_totals else None)

    refused = app(ask(False), site)
    assert refused.has_error() and "one-shot totals" in refused.error.reason
    reply = app(ask(True), site)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    figures = reply.content[protocol.METRICS]
    before, after = (json.loads(text)["runs"]["run-p"]["events"]
                     for text in (spent, ledger.read_text()))
    assert after[:len(before)] == before
    if played == "ridge":
        assert 0.0 <= figures[protocol.ACCURACY] <= 1.0
        assert 0.0 <= figures[protocol.GLOBAL_ACCURACY] <= 1.0
        # Post-processing of the release: no fine-tuning charged; only the accuracy figures
        # the run planned (noised) were added.
        assert {e["kind"] for e in after[len(before):]} <= {"figures"}
        assert not (personal / JOINT_NOTE_FILE).exists()
    else:  # fitted to the site's images without noise: no figure about it can be DP
        assert protocol.ACCURACY not in figures and protocol.GLOBAL_ACCURACY not in figures
        assert after == before
        assert "not DP" in (personal / JOINT_NOTE_FILE).read_text()
    # The site's operator reads both heads' exact held-out accuracy; it was not sent.
    kept = json.loads((personal / ACCURACY_FILE).read_text())
    assert 0.0 <= kept["personal_head"] <= 1.0 and 0.0 <= kept["global_head"] <= 1.0
    assert kept["held_out_images"] > 0
    # Beside it, how much of its own release (which a ridge personal head leans on) is noise,
    # at the noise the release went out with; a joint head used exact statistics instead.
    with np.load(personal / "head.npz") as head:  # its kernel's rows: the feature size
        own = load_own_release(personal, head["arr_0"].shape[0])
    assert own is not None and own.noise_multiplier == pytest.approx(
        released.content[protocol.METRICS][protocol.NOISE_MULTIPLIER])
    if played == "ridge":
        assert kept["own_release_noise_share"] == pytest.approx(
            own_release_share(own, own.noise_multiplier, run.ridge_lambda), abs=1e-4)
        assert 0.0 < kept["own_release_noise_share"]
        # The weight its head counted its own release with: the run's, or its own estimate.
        if weighting == "fixed":
            assert kept["own_release_weight"] == run.personal_ridge_weight
            assert "own_release_excess" not in kept
        else:  # the totals here are this site's release alone: nothing beyond its share
            assert kept["own_release_excess"] == 0.0 and kept["own_release_weight"] == 0.0
    else:
        assert "own_release_noise_share" not in kept
    assert json.loads(ledger.read_text())["runs"]["run-p"]["epsilon"] <= 10.0
    assert (personal / "head.npz").is_file() and (personal / "model.keras").is_file()
    stranger = real_site(tmp_path / "other", budget=10.0)  # never released in this run
    never = app(ask(True), stranger)
    assert never.has_error() and "kept no one-shot release" in never.error.reason



def test_a_noise_set_penalty_is_the_servers_checked_and_the_own_release_share_uses_its_own(
        cfg: RunConfig, tmp_path: Path) -> None:
    run = cfg.replace(head_method="ridge", rounds=1, personalize=True,
                      personal_tuning="ridge", public_components=8, ridge_penalty="noise")
    site, app = real_site(tmp_path, budget=20.0), make_client_app(run)
    released = released_sums(run, site, "run-n")
    personal = tmp_path / "state" / "personal" / "run-n"

    own_arrays = released.content[protocol.ARRAYS].to_numpy_ndarrays()
    # A federation's sum that is not this site's release scaled (that one would give the
    # personal head of the global one at any penalty): two other sites' made-up sums.
    totals = [a + np.random.default_rng(5).normal(0.0, 20.0, a.shape).astype(a.dtype)
              for a in own_arrays]
    count = 3.0 * float(released.content[protocol.METRICS][protocol.NUM_EXAMPLES])

    def ask(penalty: float | None) -> Message:
        msg = personalization(run, "run-n", released)
        msg.content[protocol.ONE_SHOT_TOTALS] = ArrayRecord(totals)
        msg.content[protocol.CONFIG][protocol.ONE_SHOT_COUNT] = count
        if penalty is not None:
            msg.content[protocol.CONFIG][protocol.ONE_SHOT_PENALTY] = penalty
        return app(msg, site)

    for bad in (None, 100.0):  # none sent, or not one the rule gives: nothing built
        reply = ask(bad)
        assert reply.has_error() and "one-shot penalty" in reply.error.reason
        assert not (personal / "head.npz").exists()
    heads = []
    for penalty in (LOWEST, HIGHEST):
        reply = ask(penalty)
        assert not reply.has_error(), reply.error.reason
        with np.load(personal / "head.npz") as head:
            heads.append(head["arr_0"].copy())
        (personal / "head.npz").unlink()  # the next request builds it again, same release
    # The same kept release at the two ends of the range: the server's penalty was used.
    assert not np.allclose(heads[0], heads[1])
    own = load_own_release(personal, heads[0].shape[0])
    kept = json.loads((personal / ACCURACY_FILE).read_text())
    # The share of a head from the site's own release alone, at the penalty the rule gives
    # that release (the server's is for the federation's sum).
    assert kept["own_release_noise_share"] == pytest.approx(own_release_share(
        own, own.noise_multiplier,
        own_penalty("noise", run.ridge_lambda, own, own.noise_multiplier)), abs=1e-4)
    assert own_penalty("noise", run.ridge_lambda, own, own.noise_multiplier) \
        != run.ridge_lambda


def test_a_repeated_personalization_gets_the_figures_it_was_sent_free(
        cfg: RunConfig, tmp_path: Path) -> None:
    # Noised figures (the site's default policy), in a run planned to spend its target: a
    # second draw would not fit, and would be a second release of the same accuracy.
    run = cfg.replace(head_method="ridge", rounds=1, personalize=True, personal_tuning="ridge",
                      public_components=8, feature_centring="site")
    site, app = real_site(tmp_path, budget=10.0), make_client_app(run)
    msg = personalization(run, "run-c", released_sums(run, site, "run-c"))
    ledger = tmp_path / "state" / "privacy-ledger.json"

    first = app(msg, site)
    spent = ledger.read_text()
    again = app(msg, site)  # the first reply was lost on the way
    assert not first.has_error(), first.error.reason if first.has_error() else ""
    assert not again.has_error(), again.error.reason if again.has_error() else ""
    assert "figures" in spent and ledger.read_text() == spent
    assert protocol.ACCURACY in first.content[protocol.METRICS]
    assert dict(again.content[protocol.METRICS]) == dict(first.content[protocol.METRICS])


def test_an_evaluation_asked_again_about_the_same_head_is_answered_the_same_free(
        cfg: RunConfig, tmp_path: Path) -> None:
    fingerprint = base_fingerprint(base_spec(cfg))
    site, app = real_site(tmp_path, budget=3.0), make_client_app(cfg)
    trained = message(MessageType.TRAIN, fingerprint)
    update = app(trained, site)
    assert not update.has_error(), update.error.reason if update.has_error() else ""
    ledger = tmp_path / "state" / "privacy-ledger.json"
    asked = message(MessageType.EVALUATE, fingerprint)

    first = app(asked, site)
    spent = ledger.read_text()
    again = app(asked, site)
    assert not first.has_error() and not again.has_error()
    assert ledger.read_text() == spent
    assert set(first.content[protocol.METRICS]) == {protocol.NUM_EXAMPLES, protocol.ACCURACY}
    assert dict(again.content[protocol.METRICS]) == dict(first.content[protocol.METRICS])
    # The update it trained is still the one a lost train reply gets again, free.
    resent = app(trained, site)
    assert ledger.read_text() == spent
    assert [a.tobytes() for a in resent.content[protocol.ARRAYS].to_numpy_ndarrays()] == \
        [a.tobytes() for a in update.content[protocol.ARRAYS].to_numpy_ndarrays()]

    other = message(MessageType.EVALUATE, fingerprint)  # another head: a new release, charged
    other.content[protocol.ARRAYS] = ArrayRecord(update.content[protocol.ARRAYS]
                                                 .to_numpy_ndarrays())
    assert not app(other, site).has_error()
    assert ledger.read_text() != spent
