"""Flower's FedAvg, FedProx and FedAdam over head weights, admitting only updates that pass
fedtl's checks, and measuring every site's accuracy each round."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
import logging
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from common import protocol
from common.errors import UpdateRejectedError

log = logging.getLogger("fedtl.server")


@dataclass
class RoundRecord:
    """What the server learnt in one round."""

    round: int
    train_loss: float | None = None
    accuracy: float | None = None
    epsilon_max: float | None = None
    sites_trained: list[str] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    site_accuracy: dict[str, float] = field(default_factory=dict)  # global head, per site
    worst_site_accuracy: float | None = None
    site_accuracy_std: float | None = None  # spread over sites (population std)
    unseen_accuracy: float | None = None  # a simulated site no one trains on
    client_epsilon: float | None = None  # client-level DP's epsilon after this round
    seconds: float | None = None  # wall time from sending train messages to evaluating


@dataclass(frozen=True)
class SitePrivacy:
    """A site's record-level guarantee for the run, as its last accepted reply stated it."""

    epsilon: float
    sampling_rate: float
    noise_multiplier: float
    steps: int


@dataclass(frozen=True)
class SiteUpdate:
    """The figures of a reply that passed every check (the optional ones come only from
    sites that release exact figures)."""

    site: str
    num_examples: int
    privacy: SitePrivacy
    train_loss: float | None
    extract_seconds: float
    skipped_images: int | None


class Validation:
    """What fedtl adds to a Flower strategy (mixed in before it).

    Before aggregating (FedAvg's example-weighted mean, then the strategy's own step) it drops every reply whose base fingerprint differs from the
    federation's, or whose arrays have the wrong shapes or dtypes, hold NaN/Inf, or moved
    further than ``max_update_norm`` from the global head; a declined or refused round of a
    site is logged. The round goes on with the rest.
    """

    def __init__(self, *, fingerprint: str, max_update_norm: float,
                 on_round: Callable[[RoundRecord], None] | None = None,
                 **fedavg_args: object) -> None:
        super().__init__(**fedavg_args)  # type: ignore[call-arg]
        self.fingerprint = fingerprint
        self.max_update_norm = max_update_norm
        self.on_round = on_round
        self.history: list[RoundRecord] = []
        self._round_started = time.monotonic()
        self.epsilon_by_site: dict[str, float] = {}
        self.privacy_by_site: dict[str, SitePrivacy] = {}
        self.extract_seconds = 0.0
        self.skipped_by_site: dict[str, int] = {}
        self.round_offset = 0
        self.arrays: list[np.ndarray] = []
        self._global: list[np.ndarray] = []
        # Client-level DP averages with equal weights (its sensitivity analysis needs them).
        self.uniform_weights = False
        self._losses: list[tuple[float, int]] = []

    def resume(self, rounds_done: int, history: list[RoundRecord],
               epsilon_by_site: dict[str, float], skipped_by_site: dict[str, int],
               extract_seconds: float,
               privacy_by_site: dict[str, dict[str, float]] | None = None) -> None:
        """Go on after ``rounds_done`` rounds of which a checkpoint kept this state."""
        self.privacy_by_site = {site: SitePrivacy(**p)  # type: ignore[arg-type]
                                for site, p in (privacy_by_site or {}).items()}
        self.round_offset = rounds_done
        self.history = list(history)
        self.epsilon_by_site = dict(epsilon_by_site)
        self.skipped_by_site = dict(skipped_by_site)
        self.extract_seconds = extract_seconds

    @property
    def global_head(self) -> list[np.ndarray]:
        """The head this round's sites started from."""
        return self._global

    def server_state(self) -> list[np.ndarray]:
        """The server optimizer's state (FedAdam's first and second moments; else nothing)."""
        moments = [getattr(self, "m_t", None), getattr(self, "v_t", None)]
        if not all(moments):
            return []
        return [a for m in moments for a in m.values()]  # type: ignore[union-attr]

    def restore_server_state(self, state: list[np.ndarray]) -> None:
        """Put back what `server_state` returned (a resumed FedAdam keeps its moments)."""
        if state and hasattr(self, "m_t"):
            half = len(state) // 2
            self.m_t = {str(i): a for i, a in enumerate(state[:half])}
            self.v_t = {str(i): a for i, a in enumerate(state[half:])}

    def begin_round(self, server_round: int, head: list[np.ndarray]) -> RoundRecord:
        """Start this process's round ``server_round`` from the global ``head``."""
        self._global = head
        self.arrays = self._global
        self.history.append(RoundRecord(round=server_round + self.round_offset))
        self._round_started = time.monotonic()
        return self.history[-1]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.begin_round(server_round, arrays.to_numpy_ndarrays())
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record = self.history[-1]
        accepted: list[Message] = []
        replies = list(replies)
        self.note_refusals([msg for msg in replies if msg.has_error()])
        for msg in replies:
            if msg.has_error():
                continue
            who = f"node {msg.metadata.src_node_id}"
            try:
                update = self._check_reply(msg, who)
            except UpdateRejectedError as exc:
                record.rejected.append(who)
                log.warning("round %d: rejected update: %s", record.round, exc)
                continue
            accepted.append(msg)
            self.accept(update)
        if len(accepted) < self.min_train_nodes:
            log.warning("round %d: only %d accepted update(s), fewer than the %d required; "
                        "the global head stays as it was", record.round, len(accepted),
                        self.min_train_nodes)
            return None, None
        if self.uniform_weights:
            for msg in accepted:
                msg.content[protocol.METRICS][protocol.NUM_EXAMPLES] = 1
        # The run's round number, not this process's: FedAdam's bias correction depends on it.
        arrays, metrics = super().aggregate_train(server_round + self.round_offset, accepted)
        if arrays is not None:
            # FedAdam's step computes in float64; the head, and every site's check, is float32.
            self.arrays = [a.astype(g.dtype) for a, g in
                           zip(arrays.to_numpy_ndarrays(), self._global, strict=True)]
            arrays = ArrayRecord(self.arrays)
        self.close_training()
        return arrays, metrics

    def accept(self, update: SiteUpdate) -> None:
        """Count ``update`` (which passed every check) in this round's record."""
        self.history[-1].sites_trained.append(update.site)
        if update.train_loss is not None:
            self._losses.append((update.train_loss, update.num_examples))
        self.epsilon_by_site[update.site] = update.privacy.epsilon
        self.privacy_by_site[update.site] = update.privacy
        self.extract_seconds += update.extract_seconds
        if update.skipped_images is not None:
            self.skipped_by_site[update.site] = update.skipped_images

    def close_training(self) -> None:
        """The round's training figures, once its updates are in."""
        record = self.history[-1]
        total = sum(n for _, n in self._losses)
        record.train_loss = (sum(loss * n for loss, n in self._losses) / total
                             if total else None)
        record.epsilon_max = max(self.epsilon_by_site.values(), default=0.0)
        self._losses = []

    def note_refusals(self, replies: Iterable[Message]) -> None:
        """Record (and log) the sites that declined (budget) or failed this round."""
        record = self.history[-1]
        for msg in replies:
            who = f"node {msg.metadata.src_node_id}"
            if msg.error.code == protocol.BUDGET_EXHAUSTED:
                record.declined.append(who)
            else:
                record.rejected.append(who)
            log.warning("round %d: %s did not train: %s", record.round, who, msg.error.reason)

    def _check_reply(self, msg: Message, who: str) -> SiteUpdate:
        content = msg.content
        site = content.config_records.get(protocol.SITE)
        if site is None or protocol.ARRAYS not in content.array_records:
            raise UpdateRejectedError(f"{who}: reply lacks the site record or the arrays")
        name = str(site.get(protocol.SITE_NAME))
        who = f"{who} ({name})"
        if site.get(protocol.FINGERPRINT) != self.fingerprint:
            raise UpdateRejectedError(f"{who}: base fingerprint differs from the federation's")
        metrics = content.metric_records.get(protocol.METRICS)
        if metrics is None:
            raise UpdateRejectedError(f"{who}: reply has no metrics")
        arrays = content.array_records[protocol.ARRAYS].to_numpy_ndarrays()
        protocol.check_update(arrays, self._global, max_norm=self.max_update_norm, who=who)
        return site_update(name, metrics, who)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        valid: list[Message] = []
        for msg in replies:
            if msg.has_error():
                continue
            site = msg.content.config_records.get(protocol.SITE)
            name = str(site.get(protocol.SITE_NAME)) if site else f"node {msg.metadata.src_node_id}"
            metrics = msg.content.metric_records.get(protocol.METRICS)
            if self.record_accuracy(name, metrics):
                valid.append(msg)
        result = super().aggregate_evaluate(server_round, valid)
        self.close_round(None if result is None else float(cast(float, result[protocol.ACCURACY])))
        return result

    def record_accuracy(self, name: str, metrics: Mapping[str, Any] | None) -> bool:
        """Note a site's held-out accuracy; False (and a warning) if its figures are bad."""
        record = self.history[-1]
        accuracy = metrics.get(protocol.ACCURACY) if metrics else None
        n = metrics.get(protocol.NUM_EXAMPLES) if metrics else None
        if (not isinstance(accuracy, (int, float)) or not 0.0 <= accuracy <= 1.0
                or not isinstance(n, int) or n <= 0):
            log.warning("round %d: dropped evaluation of %s: accuracy %r on %r examples",
                        record.round, name, accuracy, n)
            return False
        record.site_accuracy[name] = float(accuracy)
        return True

    def close_round(self, accuracy: float | None) -> None:
        """Finish the round's record with its weighted ``accuracy`` and hand it on."""
        record = self.history[-1]
        record.seconds = time.monotonic() - self._round_started
        record.accuracy = accuracy
        summary = site_summary(record.site_accuracy)
        record.worst_site_accuracy = summary["worst_site_accuracy"]
        record.site_accuracy_std = summary["site_accuracy_std"]
        if self.on_round is not None:
            self.on_round(record)


def site_update(name: str, metrics: Mapping[str, Any], who: str) -> SiteUpdate:
    """A site's training figures, checked: a positive integer count, finite DP settings, and
    the exact figures only if the site releases them."""
    n = metrics.get(protocol.NUM_EXAMPLES)
    if not isinstance(n, int) or n <= 0:
        raise UpdateRejectedError(f"{who}: example count {n!r} is not a positive integer")
    figures: dict[str, float | None] = {}
    for key in (*protocol.TRAIN_FIGURES[1:], *protocol.EXACT_TRAIN_FIGURES):
        value = metrics.get(key)
        if value is None and key in protocol.EXACT_TRAIN_FIGURES:
            figures[key] = None  # a site that releases only DP figures
            continue
        if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise UpdateRejectedError(f"{who}: {key} {value!r} is not a finite number >= 0")
        figures[key] = float(value)
    skipped = figures[protocol.SKIPPED_IMAGES]
    return SiteUpdate(
        site=name, num_examples=n,
        privacy=SitePrivacy(epsilon=cast(float, figures[protocol.EPSILON]),
                            sampling_rate=cast(float, figures[protocol.SAMPLING_RATE]),
                            noise_multiplier=cast(float, figures[protocol.NOISE_MULTIPLIER]),
                            steps=int(cast(float, figures[protocol.STEPS]))),
        train_loss=figures[protocol.TRAIN_LOSS],
        extract_seconds=figures[protocol.EXTRACT_SECONDS] or 0.0,
        skipped_images=None if skipped is None else int(skipped))


def site_summary(per_site: dict[str, float]) -> dict[str, float | None]:
    """Mean (unweighted: every site counts once), worst and spread of per-site accuracies."""
    values = np.array(list(per_site.values()), dtype=np.float64)
    if values.size == 0:
        return {"mean_site_accuracy": None, "worst_site_accuracy": None,
                "site_accuracy_std": None}
    return {"mean_site_accuracy": float(values.mean()),
            "worst_site_accuracy": float(values.min()),
            "site_accuracy_std": float(values.std())}


class ValidatingFedAvg(Validation, FedAvg):
    """FedAvg (McMahan et al., arXiv 1602.05629) with fedtl's checks."""


class ValidatingFedProx(Validation, FedProx):
    """FedProx (Li et al., arXiv 1812.06127): FedAvg on the server; Flower sends
    ``proximal-mu`` and each site adds the proximal term inside its DP-SGD."""


class ValidatingFedAdam(Validation, FedAdam):
    """FedAdam (Reddi et al., arXiv 2003.00295): Adam on the server over the averaged update."""


def make_strategy(name: str, *, proximal_mu: float, server_lr: float,
                  **common: Any) -> Validation:
    """The strategy ``name`` (fedavg, fedprox, fedadam) with fedtl's checks."""
    if name == "fedprox":
        return ValidatingFedProx(proximal_mu=proximal_mu, **common)
    if name == "fedadam":
        # eta_l is only logged by Flower (sites use their own learning rate).
        return ValidatingFedAdam(eta=server_lr, **common)
    if name == "fedavg":
        return ValidatingFedAvg(**common)
    raise ValueError(f"unknown strategy {name!r}")
