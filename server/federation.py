"""The server's side of a run: FedAvg over the heads, then the Keras model and the report."""

from __future__ import annotations

import dataclasses
import sys
import time
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common import protocol
from common.config import RunConfig
from common.errors import FedtlError
from common.model import PREPROCESSING, build_base, full_model, initial_head_weights, save_model
from common.report import versions, write_report
from common.site import base_spec
from server.checkpoint import Checkpoint, check_resumable, load_checkpoint, save_checkpoint
from server.client_dp import (ClientLevelState, client_level_epsilon, client_level_guarantee,
                              with_client_dp)
from server.run_registry import RunRegistry
from server.secure import run_secure
from server.strategy import RoundRecord, Validation, make_strategy, site_summary

log = logging.getLogger("fedtl.server")


@dataclass(frozen=True)
class PreRun:
    """What happened before Flower started (a simulation extracts features up front)."""

    feature_extraction_seconds: float = 0.0
    started: float = 0.0
    # A simulation's scenario: what each site holds and sees (for the report), and the
    # accuracy of a head on a held-out site whose domain no site trains on.
    sites: dict[str, Any] = field(default_factory=dict)
    unseen_accuracy: Callable[[list[np.ndarray]], float] | None = None


@dataclass
class PersonalResult:
    """Per site: accuracy of its own fine-tuned head and of the global head, its epsilon."""

    personal: dict[str, float] = field(default_factory=dict)
    global_: dict[str, float] = field(default_factory=dict)
    fine_tuned: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


class RoundTable:
    """Prints one table row per round as the run goes."""

    HEADER = (f"{'round':>5} | {'train loss':>10} | {'accuracy':>8} | {'worst':>6} | "
              f"{'unseen':>6} | {'max eps':>8} | sites")

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        print(self.HEADER, file=stream)
        print("-" * len(self.HEADER), file=stream, flush=True)

    def __call__(self, r: RoundRecord) -> None:
        def fmt(value: float | None, spec: str) -> str:
            return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)

        note = f"{len(r.sites_trained)} trained"
        if r.declined:
            note += f", {len(r.declined)} declined (budget)"
        if r.rejected:
            note += f", {len(r.rejected)} rejected"
        print(f"{r.round:>5} | {fmt(r.train_loss, '10.4f')} | {fmt(r.accuracy, '8.4f')} | "
              f"{fmt(r.worst_site_accuracy, '6.3f')} | {fmt(r.unseen_accuracy, '6.3f')} | "
              f"{fmt(r.epsilon_max, '8.3f')} | {note}", file=self.stream, flush=True)


def run_server(grid: Grid, cfg: RunConfig, prerun: PreRun | None = None,
               registry: RunRegistry | None = None) -> Path:
    """Run ``cfg.rounds`` rounds on ``grid``; write model.keras and report.json to ``cfg.out``.

    After every round the global head and the accounting state are checkpointed in
    ``cfg.out``; if a checkpoint of the same run is there, the run resumes after its last
    completed round. ``registry`` (the daemon's) learns of the run so that a restarted
    daemon can relaunch it.
    """
    prerun = prerun or PreRun(started=time.time())
    if not cfg.classes:
        raise FedtlError("the run config names no classes; set 'classes' (comma-separated)")
    out = Path(cfg.out)
    if (out / "report.json").exists():
        raise FedtlError(f"{out} already holds a finished run; choose another output folder")
    settings = cfg.to_flower()
    checkpoint = load_checkpoint(out)
    if checkpoint is not None:
        check_resumable(checkpoint, settings)
    run_id = checkpoint.run_id if checkpoint else uuid.uuid4().hex
    if registry is not None:
        registry.started(run_id, str(out.resolve()), settings)
    try:
        return _federate(grid, cfg, prerun, run_id, checkpoint, registry)
    except FedtlError:
        if registry is not None:
            registry.failed(run_id)
        raise


def _federate(grid: Grid, cfg: RunConfig, prerun: PreRun, run_id: str,
              checkpoint: Checkpoint | None, registry: RunRegistry | None) -> Path:
    out, settings = Path(cfg.out), cfg.to_flower()
    base = build_base(base_spec(cfg))
    strategy = make_strategy(
        cfg.strategy, proximal_mu=cfg.proximal_mu, server_lr=cfg.server_lr,
        fingerprint=base.fingerprint, max_update_norm=cfg.max_update_norm,
        # Start a round once enough sites are connected; aggregate it with at least
        # --min-sites accepted updates (any one, if no minimum was set).
        min_available_nodes=cfg.required_sites, min_train_nodes=cfg.min_sites or 1,
        min_evaluate_nodes=1,
        weighted_by_key=protocol.NUM_EXAMPLES,
        arrayrecord_key=protocol.ARRAYS, configrecord_key=protocol.CONFIG,
    )
    client_level = ClientLevelState(
        **(checkpoint.client_dp if checkpoint and checkpoint.client_dp else {}))
    runner = with_client_dp(strategy, cfg, client_level)
    elapsed_before = 0.0
    if checkpoint is None:
        initial = initial_head_weights(base.spec.feature_dim, len(cfg.classes), cfg.head_width,
                                       cfg.seed)
    else:
        initial = checkpoint.arrays
        strategy.resume(checkpoint.round, [RoundRecord(**r) for r in checkpoint.history],
                        checkpoint.epsilon_by_site, checkpoint.skipped_by_site,
                        checkpoint.extract_seconds, checkpoint.privacy_by_site)
        strategy.restore_server_state(checkpoint.server_state)
        elapsed_before = checkpoint.elapsed_seconds
        print(f"resuming run {run_id} after round {checkpoint.round} of {cfg.rounds} "
              f"(checkpoint in {out})", flush=True)
    table = RoundTable()
    for record in strategy.history:
        table(record)

    def after_round(record: RoundRecord) -> None:
        if prerun.unseen_accuracy is not None and strategy.arrays:
            record.unseen_accuracy = prerun.unseen_accuracy(strategy.arrays)
        if cfg.client_dp != "off":
            record.client_epsilon = client_level_epsilon(
                client_level.noise_multipliers, delta=cfg.client_delta,
                accountant=cfg.accountant)
        table(record)
        save_checkpoint(out, Checkpoint(
            run_id=run_id, settings=settings, round=record.round, arrays=strategy.arrays,
            history=[asdict(r) for r in strategy.history],
            epsilon_by_site=strategy.epsilon_by_site, skipped_by_site=strategy.skipped_by_site,
            privacy_by_site={k: asdict(v) for k, v in strategy.privacy_by_site.items()},
            extract_seconds=strategy.extract_seconds,
            elapsed_seconds=elapsed_before + time.time() - prerun.started,
            server_state=strategy.server_state(), client_dp=asdict(client_level)))

    strategy.on_round = after_round
    remaining = cfg.rounds - (checkpoint.round if checkpoint else 0)
    # The server is the authority on the class list; sites check theirs against it.
    federation = ConfigRecord({protocol.FINGERPRINT: base.fingerprint,
                               protocol.CLASSES: list(cfg.classes),
                               protocol.RUN_ID: run_id})
    if remaining > 0 and cfg.secure_aggregation:
        run_secure(grid, strategy, cfg, initial, dict(federation), remaining)
    elif remaining > 0:
        runner.start(grid, ArrayRecord(initial), num_rounds=remaining,
                       train_config=federation,
                       evaluate_config=ConfigRecord(dict(federation)),
                       timeout=cfg.round_timeout)
    if not any(r.sites_trained for r in strategy.history):
        raise FedtlError("no site contributed an accepted update in any round; nothing to save "
                         "(see the warnings above for why sites declined or were rejected)")
    weights = strategy.arrays or initial
    personal = (personalize(grid, weights, federation, cfg.round_timeout, strategy)
                if cfg.personalize else None)
    out.mkdir(parents=True, exist_ok=True)
    save_model(full_model(base, weights, len(cfg.classes), cfg.head_width), out / "model.keras")
    report = build_report(cfg, base.fingerprint, strategy, prerun, run_id, elapsed_before,
                          personal, client_level)
    path = write_report(out, report)
    if registry is not None:
        registry.finished(run_id)
    return path


def personalize(grid: Grid, weights: list[np.ndarray], federation: ConfigRecord,
                timeout: float, strategy: Validation) -> PersonalResult:
    """Ask every site to fine-tune its own head from ``weights`` (with DP, on its own budget)
    and to report that head's and the global head's accuracy on its held-out split."""
    content = RecordDict({protocol.ARRAYS: ArrayRecord(weights),
                          protocol.CONFIG: ConfigRecord(dict(federation))})
    messages = [Message(content=content, dst_node_id=node,
                        message_type=f"train.{protocol.PERSONALIZE}")
                for node in grid.get_node_ids()]
    result = PersonalResult()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        who = f"node {reply.metadata.src_node_id}"
        if reply.has_error():
            result.refused.append(who)
            log.warning("personalization: %s did not fine-tune: %s", who, reply.error.reason)
            continue
        site = reply.content.config_records.get(protocol.SITE)
        metrics = reply.content.metric_records.get(protocol.METRICS)
        name = str(site.get(protocol.SITE_NAME)) if site else who
        figures = [metrics.get(k) if metrics else None for k in
                   (protocol.ACCURACY, protocol.GLOBAL_ACCURACY, protocol.EPSILON,
                    protocol.STEPS)]
        withheld = figures[0] is None and figures[1] is None  # --site-metrics none
        checked = figures[2:] if withheld else figures
        if not all(isinstance(v, (int, float)) and np.isfinite(v) and v >= 0 for v in checked) \
                or (not withheld and max(figures[0], figures[1]) > 1.0):  # type: ignore[type-var]
            result.refused.append(name)
            log.warning("personalization: dropped the reply of %s: figures %r", name, figures)
            continue
        if not withheld:
            result.personal[name] = float(figures[0])  # type: ignore[arg-type]
            result.global_[name] = float(figures[1])  # type: ignore[arg-type]
        result.fine_tuned.append(name)
        strategy.epsilon_by_site[name] = float(figures[2])  # type: ignore[arg-type]
        if name in strategy.privacy_by_site:
            strategy.privacy_by_site[name] = dataclasses.replace(
                strategy.privacy_by_site[name], epsilon=float(figures[2]),  # type: ignore[arg-type]
                steps=int(figures[3]))  # type: ignore[arg-type]
    print(f"personalization: {len(result.fine_tuned)} site(s) fine-tuned their own head"
          + (f", {len(result.refused)} did not" if result.refused else ""), flush=True)
    return result


def site_privacy(cfg: RunConfig, strategy: Validation) -> dict[str, dict[str, Any]]:
    """Per site: its record-level guarantee and the DP-SGD mechanism behind it, as stated
    in the site's last accepted reply."""
    if not cfg.dp:
        return {site: {"epsilon": None, "delta": None, "private": False}
                for site in strategy.epsilon_by_site}
    return {site: {"epsilon": p.epsilon, "delta": cfg.delta,
                   "noise_multiplier": p.noise_multiplier, "sampling_rate": p.sampling_rate,
                   "steps": p.steps, "accountant": cfg.accountant,
                   "sampling": "poisson", "private": True}
            for site, p in sorted(strategy.privacy_by_site.items())}


def guarantees(cfg: RunConfig, client_level: ClientLevelState) -> dict[str, Any]:
    """What the run's epsilons cover and what left the sites outside them."""
    outside = []
    if cfg.dp and cfg.example_counts != "noised":
        outside.append(f"example counts ({cfg.example_counts})")
    if cfg.dp and cfg.site_metrics == "exact":
        outside += ["held-out accuracy", "train loss", "skipped-image counts",
                    "feature-extraction seconds"]
    return {
        "record_level": {
            "private": cfg.dp,
            "unit": "one image of one site (add/remove)",
            "target_epsilon": cfg.target_epsilon if cfg.dp else None,
            "delta": cfg.delta if cfg.dp else None,
            "accountant": cfg.accountant,
            "covers": ["head updates"]
            + (["noised example counts"] if cfg.dp and cfg.example_counts == "noised" else [])
            + (["noised held-out accuracy"] if cfg.dp and cfg.site_metrics == "noised" else []),
            "released_outside_guarantee": outside,
        },
        "client_level": client_level_guarantee(cfg, client_level),
        "secure_aggregation": {
            "on": cfg.secure_aggregation,
            **({"protocol": "SecAgg+ (Flower)", "server_sees": "the weighted mean of the "
                "heads of the sites that completed the round",
                "coordinate_clip": cfg.secagg_clip} if cfg.secure_aggregation else {}),
        },
    }


def build_report(cfg: RunConfig, fingerprint: str, strategy: Validation,
                 prerun: PreRun, run_id: str, elapsed_before: float = 0.0,
                 personal: PersonalResult | None = None,
                 client_level: ClientLevelState | None = None) -> dict[str, Any]:
    last = strategy.history[-1]
    global_acc = dict(last.site_accuracy)
    if personal is not None:
        global_acc.update(personal.global_)  # measured on the same final head
    # The model each site would use: its own head where it has one, else the global head.
    used = {**global_acc, **(personal.personal if personal else {})}
    sites: dict[str, dict[str, Any]] = {name: dict(info) for name, info in prerun.sites.items()}
    for name in set(global_acc) | set(strategy.epsilon_by_site):
        entry = sites.setdefault(name, {})
        entry["global_accuracy"] = global_acc.get(name)
        if personal is not None:
            entry["personal_accuracy"] = personal.personal.get(name)
        if cfg.dp:
            entry["epsilon"] = strategy.epsilon_by_site.get(name)
    return {
        "run_id": run_id,
        "settings": cfg.to_flower(),
        "base": {"weights": cfg.weights, "fingerprint": fingerprint,
                 "base_layer": cfg.base_layer, "image_size": cfg.image_size,
                 "preprocessing": PREPROCESSING},
        "versions": versions(),
        "rounds": [asdict(r) for r in strategy.history],
        "final": {
            "accuracy": last.accuracy,
            "per_site_accuracy": used,
            **site_summary(used),
            "per_site_global_accuracy": global_acc,
            "per_site_personal_accuracy": personal.personal if personal else None,
            "unseen_domain_accuracy": last.unseen_accuracy,
            "strategy": cfg.strategy,
            "personalized": personal is not None,
            "epsilon": strategy.epsilon_by_site if cfg.dp else {},
            "delta": cfg.delta,
            "target_epsilon": cfg.target_epsilon if cfg.dp else None,
            "private": cfg.dp,
        },
        "sites": sites,
        "privacy": site_privacy(cfg, strategy),
        "guarantees": guarantees(cfg, client_level or ClientLevelState()),
        "data": {"skipped_images": sum(strategy.skipped_by_site.values()),
                 "skipped_images_by_site": strategy.skipped_by_site},
        "timing": {
            "total_seconds": elapsed_before + time.time() - prerun.started,
            "feature_extraction_seconds": prerun.feature_extraction_seconds
            + strategy.extract_seconds,
        },
    }
