"""Flower's FedAvg, FedProx and FedAdam behind fedtl's checks, the way Flower extends a
strategy: `Validated` wraps one and delegates, as Flower's DP wrappers do.

Before anything aggregates a reply, `Validated` checks it alone (`server.replies`), records
the outcome in the run's `RunBook`, and hands the wrapped strategy only rebuilt replies with
the fixed keys, so a reply with odd records, another site's name or an outsized weight can
never abort a round; a round whose aggregation fails anyway keeps the previous head.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from common import protocol
from common.config import RunConfig
from common.errors import UpdateRejectedError
from server.replies import (ReplyRules, capped_weights, check_evaluation_reply,
                            check_train_reply, rebuilt)
from server.runbook import RunBook

log = logging.getLogger("fedtl.server")


class Validated(Strategy):
    """``strategy`` (Flower's, possibly DP-wrapped) behind fedtl's reply checks.

    Parameters
    ----------
    strategy : Strategy
        What aggregates the checked replies.
    book : RunBook
        Where each round's outcome is recorded.
    rules : ReplyRules
        What a reply may claim in this run.
    min_train_nodes : int
        Accepted updates needed to aggregate a round (else the head stays).
    weight_ratio : float
        A site weighs at most this many times the median of the others (0: no cap).
    uniform_weights : bool
        Weigh every site the same (client-level DP's sensitivity analysis needs it).
    """

    def __init__(self, strategy: Strategy, book: RunBook, rules: ReplyRules, *,
                 min_train_nodes: int = 1, weight_ratio: float = 0.0,
                 uniform_weights: bool = False) -> None:
        self.strategy = strategy
        self.book = book
        self.rules = rules
        self.min_train_nodes = min_train_nodes
        self.weight_ratio = weight_ratio
        self.uniform_weights = uniform_weights

    def summary(self) -> None:
        self.strategy.summary()

    def _weights(self, counts: list[int]) -> list[int]:
        return [1] * len(counts) if self.uniform_weights else capped_weights(
            counts, self.weight_ratio)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.book.begin_round(server_round, arrays.to_numpy_ndarrays())
        return self.strategy.configure_train(self.book.run_round(server_round), arrays,
                                             config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        book = self.book
        accepted = []
        for msg in replies:
            if msg.has_error():
                book.note_error(msg.metadata.src_node_id, msg.error.code, msg.error.reason)
                continue
            try:
                update = check_train_reply(msg, book.start_head, self.rules)
            except UpdateRejectedError as exc:
                book.reject(msg.metadata.src_node_id, exc)
                continue
            book.accept(update)
            accepted.append((msg, update))
        if len(accepted) < self.min_train_nodes:
            book.fail_round(f"only {len(accepted)} accepted update(s), fewer than the "
                            f"{self.min_train_nodes} required (--min-sites)")
            book.close_training(None)
            return None, None
        weights = self._weights([update.num_examples for _, update in accepted])
        clean = [rebuilt(msg, update.arrays, weight)
                 for (msg, update), weight in zip(accepted, weights, strict=True)]
        try:
            # The run's round number, not this process's: FedAdam's bias correction uses it.
            arrays, metrics = self.strategy.aggregate_train(book.run_round(server_round), clean)
        except Exception as exc:  # e.g. a Flower wrapper's own check: the run goes on
            book.fail_round(f"{type(exc).__name__}: {exc}")
            book.close_training(None)
            return None, None
        if arrays is None:
            book.close_training(None)
            return None, metrics
        book.close_training(arrays.to_numpy_ndarrays())
        # FedAdam's step computes in float64; the head, and every site's check, is float32.
        return ArrayRecord(book.head), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(self.book.run_round(server_round), arrays,
                                                config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        checked = []
        for msg in replies:
            if msg.has_error():
                continue  # a site that releases no figures, or failed: nothing to average
            try:
                checked.append((msg, check_evaluation_reply(msg, self.rules)))
            except UpdateRejectedError as exc:
                log.warning("round %d: dropped an evaluation: %s", self.book.current.round, exc)
        for _, evaluation in checked:
            self.book.record_accuracy(evaluation)
        weights = capped_weights([e.num_examples for _, e in checked], self.weight_ratio)
        clean = [rebuilt(msg, None, w, {protocol.ACCURACY: e.accuracy})
                 for (msg, e), w in zip(checked, weights, strict=True)]
        result = None
        if clean:
            try:
                result = self.strategy.aggregate_evaluate(self.book.run_round(server_round),
                                                          clean)
            except Exception as exc:
                log.error("round %d: averaging the evaluations failed: %s",
                          self.book.current.round, exc)
        accuracy = result.get(protocol.ACCURACY) if result is not None else None
        self.book.close_round(float(accuracy) if isinstance(accuracy, (int, float)) else None)
        return result


def reply_rules(cfg: RunConfig, fingerprint: str) -> ReplyRules:
    return ReplyRules(fingerprint=fingerprint, max_update_norm=cfg.max_update_norm,
                      batch_size=cfg.batch_size, private=cfg.dp,
                      target_epsilon=cfg.target_epsilon)


def flower_strategy(cfg: RunConfig) -> FedAvg:
    """Flower's own strategy for ``cfg.strategy``, keyed the way fedtl's messages are."""
    common: dict[str, Any] = dict(
        # Start a round once enough sites are connected; the checks decide what aggregates.
        # Flower sizes its sample from the sites connected *before* it waits for them, so a
        # round 1 begun while one site had connected would send to one site of all of them:
        # asking for the required sites as the sample's minimum sends to every one.
        min_available_nodes=cfg.required_sites, min_train_nodes=cfg.required_sites,
        min_evaluate_nodes=cfg.required_sites, weighted_by_key=protocol.NUM_EXAMPLES,
        arrayrecord_key=protocol.ARRAYS, configrecord_key=protocol.CONFIG)
    if cfg.strategy == "fedprox":
        # FedProx (Li et al., arXiv 1812.06127): Flower sends proximal-mu to the sites.
        return FedProx(proximal_mu=cfg.proximal_mu, **common)
    if cfg.strategy == "fedadam":
        # FedAdam (Reddi et al., arXiv 2003.00295); eta_l is only logged by Flower.
        return FedAdam(eta=cfg.server_lr, **common)
    if cfg.strategy == "fedavg":
        # FedAvg (McMahan et al., arXiv 1602.05629).
        return FedAvg(**common)
    raise ValueError(f"unknown strategy {cfg.strategy!r}")


def validated(strategy: Strategy, book: RunBook, cfg: RunConfig, fingerprint: str
              ) -> Validated:
    """``strategy`` behind fedtl's checks as ``cfg`` sets them."""
    return Validated(strategy, book, reply_rules(cfg, fingerprint),
                     min_train_nodes=cfg.min_sites or 1, weight_ratio=cfg.max_weight_ratio,
                     uniform_weights=cfg.client_dp != "off")


def _innermost(strategy: Strategy) -> Strategy:
    while isinstance(getattr(strategy, "strategy", None), Strategy):
        strategy = strategy.strategy  # type: ignore[attr-defined]
    return strategy


def optimizer_state(strategy: Strategy) -> list[np.ndarray]:
    """The server optimizer's state (FedAdam's first and second moments; else nothing)."""
    inner = _innermost(strategy)
    moments = [getattr(inner, "m_t", None), getattr(inner, "v_t", None)]
    if not all(moments):
        return []
    return [a for m in moments for a in m.values()]  # type: ignore[union-attr]


def restore_optimizer_state(strategy: Strategy, state: list[np.ndarray]) -> None:
    """Put back what `optimizer_state` returned (a resumed FedAdam keeps its moments)."""
    inner = _innermost(strategy)
    if state and hasattr(inner, "m_t"):
        half = len(state) // 2
        inner.m_t = {str(i): a for i, a in enumerate(state[:half])}  # type: ignore[attr-defined]
        inner.v_t = {str(i): a for i, a in enumerate(state[half:])}  # type: ignore[attr-defined]
