"""FedAvg over head weights that admits only updates that pass fedtl's checks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
import logging

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

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
    site_accuracy: dict[str, float] = field(default_factory=dict)


class ValidatingFedAvg(FedAvg):
    """FedAvg (McMahan et al., arXiv 1602.05629) weighted by example counts.

    Before averaging it drops every reply whose base fingerprint differs from the
    federation's, or whose arrays have the wrong shapes or dtypes, hold NaN/Inf, or moved
    further than ``max_update_norm`` from the global head; a declined or refused round of a
    site is logged. The round goes on with the rest.
    """

    def __init__(self, *, fingerprint: str, max_update_norm: float,
                 on_round: Callable[[RoundRecord], None] | None = None,
                 **fedavg_args: object) -> None:
        super().__init__(**fedavg_args)  # type: ignore[arg-type]
        self.fingerprint = fingerprint
        self.max_update_norm = max_update_norm
        self.on_round = on_round
        self.history: list[RoundRecord] = []
        self.epsilon_by_site: dict[str, float] = {}
        self.extract_seconds = 0.0
        self.skipped_by_site: dict[str, int] = {}
        self._global: list[np.ndarray] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = arrays.to_numpy_ndarrays()
        self.history.append(RoundRecord(round=server_round))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record = self.history[-1]
        accepted: list[Message] = []
        losses: list[tuple[float, int]] = []
        for msg in replies:
            who = f"node {msg.metadata.src_node_id}"
            if msg.has_error():
                if msg.error.code == protocol.BUDGET_EXHAUSTED:
                    record.declined.append(who)
                else:
                    record.rejected.append(who)
                log.warning("round %d: %s did not train: %s", server_round, who,
                    msg.error.reason)
                continue
            try:
                name, n, loss, eps = self._check_reply(msg, who)
            except UpdateRejectedError as exc:
                record.rejected.append(who)
                log.warning("round %d: rejected update: %s", server_round, exc)
                continue
            accepted.append(msg)
            record.sites_trained.append(name)
            losses.append((loss, n))
            self.epsilon_by_site[name] = eps
            metrics = msg.content[protocol.METRICS]
            self.extract_seconds += float(metrics[protocol.EXTRACT_SECONDS])
            self.skipped_by_site[name] = int(metrics[protocol.SKIPPED_IMAGES])
        if not accepted:
            return None, None
        arrays, metrics = super().aggregate_train(server_round, accepted)
        total = sum(n for _, n in losses)
        record.train_loss = sum(loss * n for loss, n in losses) / total
        record.epsilon_max = max(self.epsilon_by_site.values(), default=0.0)
        return arrays, metrics

    def _check_reply(self, msg: Message, who: str) -> tuple[str, int, float, float]:
        content = msg.content
        site = content.config_records.get(protocol.SITE)
        if site is None or protocol.ARRAYS not in content.array_records:
            raise UpdateRejectedError(f"{who}: reply lacks the site record or the arrays")
        who = f"{who} ({site.get(protocol.SITE_NAME)})"
        if site.get(protocol.FINGERPRINT) != self.fingerprint:
            raise UpdateRejectedError(f"{who}: base fingerprint differs from the federation's")
        metrics = content.metric_records.get(protocol.METRICS)
        if metrics is None:
            raise UpdateRejectedError(f"{who}: reply has no metrics")
        n, loss, eps = (metrics.get(k) for k in
                        (protocol.NUM_EXAMPLES, protocol.TRAIN_LOSS, protocol.EPSILON))
        if not isinstance(n, int) or n <= 0:
            raise UpdateRejectedError(f"{who}: example count {n!r} is not a positive integer")
        for key, value in ((protocol.TRAIN_LOSS, loss), (protocol.EPSILON, eps)):
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise UpdateRejectedError(f"{who}: {key} {value!r} is not a finite number >= 0")
        arrays = content[protocol.ARRAYS].to_numpy_ndarrays()
        protocol.check_update(arrays, self._global, max_norm=self.max_update_norm, who=who)
        return str(site.get(protocol.SITE_NAME)), n, float(loss), float(eps)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        record = self.history[-1]
        valid = [m for m in replies if not m.has_error()]
        for msg in valid:
            metrics = msg.content[protocol.METRICS]
            site = msg.content.config_records.get(protocol.SITE)
            name = str(site.get(protocol.SITE_NAME)) if site else f"node {msg.metadata.src_node_id}"
            record.site_accuracy[name] = float(metrics[protocol.ACCURACY])
        result = super().aggregate_evaluate(server_round, valid)
        if result is not None:
            record.accuracy = float(result[protocol.ACCURACY])
        if self.on_round is not None:
            self.on_round(record)
        return result
