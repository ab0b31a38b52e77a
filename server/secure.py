"""Secure aggregation: Flower's SecAgg+ workflow (Bell et al., arXiv 2009.05586) runs each
round, so the server learns only the weighted mean of the sites' heads, never one of them.

Flower 1.39 offers SecAgg+ only on its legacy Strategy API (FitIns/FitRes through a
`LegacyContext`). `SecureRounds` is that legacy strategy, thin: it checks every reply's
figures the way `server.replies` does and records them in the run's `RunBook`, which keeps the
history, the per-site privacy and the checkpoint hook exactly as in an ordinary run.

What the server can no longer do: check each update (shape, finiteness, norm). Every site
checks its own; SecAgg+ clips every coordinate to ``[-clip, clip]`` before quantizing, which
bounds what one site can add; the server checks the aggregate (and keeps the previous head
if it fails).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Context, RecordDict
from flwr.common import (EvaluateRes, FitIns, FitRes, Parameters, Scalar,
                         ndarrays_to_parameters, parameters_to_ndarrays)
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from common import protocol
from common.config import RunConfig
from common.errors import UpdateRejectedError
from common.privacy.hull import HullPrior
from common.privacy.oneshot import PublicBasis, release_shapes
from server.replies import (RejectedAfterFigures, ReplyRules, SiteEvaluation, SiteUpdate,
                            capped_weights, check_site_record, check_sums_figures,
                            check_train_figures, split_legacy)
from server.oneshot import solve_release
from server.runbook import RunBook

log = logging.getLogger("fedtl.server")

# Each site's key is split among all sites of the round; 60 % of the shares rebuild it, so a
# round survives sites dropping out after the key exchange as long as 60 % remain.
SHARES, THRESHOLD = 1.0, 0.6
# SecAgg+ weights a site by its (released) count over max_weight; above it the sum can wrap.
MAX_WEIGHT = 1e5


class SecureRounds(LegacyFedAvg):
    """The legacy FedAvg that SecAgg+ drives, reporting into fedtl's `RunBook`."""

    def __init__(self, book: RunBook, cfg: RunConfig, initial: list[np.ndarray],
                 federation: Mapping[str, Any], rules: ReplyRules) -> None:
        super().__init__(
            fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=cfg.required_sites,
            min_evaluate_clients=1, min_available_clients=cfg.required_sites,
            on_fit_config_fn=self._config, on_evaluate_config_fn=self._config,
            initial_parameters=ndarrays_to_parameters(initial), accept_failures=True)
        self.book = book
        self.cfg = cfg
        self.rules = rules
        self.federation = {**federation, protocol.SECAGG_CLIP: cfg.secagg_clip}
        if cfg.strategy == "fedprox":
            self.federation[protocol.PROXIMAL_MU] = cfg.proximal_mu

    def _config(self, server_round: int) -> dict[str, Scalar]:
        return {**self.federation, "server-round": server_round}

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        self.book.begin_round(server_round, parameters_to_ndarrays(parameters))
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        book = self.book
        _note_dropouts(book, failures, "round")
        for proxy, fitres in results:
            who = f"node {proxy.node_id}"
            try:
                site, figures = split_legacy(fitres.metrics)
                name, tightened = check_site_record(site, self.rules, who)
                n, privacy, loss, seconds, skipped = check_train_figures(figures, self.rules,
                                                                         f"{who} ({name})")
                book.accept(SiteUpdate(proxy.node_id, name, [], n, privacy, loss, seconds,
                                       skipped, tightened))
            except UpdateRejectedError as exc:
                # Its masked head is already inside the sum; only its figures are dropped.
                book.reject(proxy.node_id, exc, inside_sum=True)
        if not results:
            book.close_training(None)
            return None, {}
        # SecAgg+ hands every result the same unmasked weighted mean.
        mean = parameters_to_ndarrays(results[0][1].parameters)
        start = book.start_head
        try:
            mean = [m.astype(g.dtype) for m, g in zip(mean, start, strict=True)]
            protocol.check_update(mean, start, max_norm=self.cfg.max_update_norm,
                                  who="the securely aggregated head")
        except (UpdateRejectedError, ValueError) as exc:
            book.fail_round(str(exc))
            book.close_training(None)
            return None, {}
        book.close_training(mean)
        return ndarrays_to_parameters(book.head), {}

    def aggregate_evaluate(self, server_round: int,
                           results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[Any]) -> tuple[float | None, dict[str, Scalar]]:
        checked = []
        for proxy, res in results:
            who = f"node {proxy.node_id}"
            try:
                site, figures = split_legacy(res.metrics)
                name, _ = check_site_record(site, self.rules, who)
                accuracy = figures.get(protocol.ACCURACY)
                if set(figures) - {protocol.NUM_EXAMPLES} != {protocol.ACCURACY} \
                        or not isinstance(accuracy, (int, float)) or not 0 <= accuracy <= 1 \
                        or res.num_examples <= 0:
                    raise UpdateRejectedError(f"{who} ({name}): evaluation figures "
                                              f"{sorted(figures)[:5]} are not an accuracy")
                checked.append(SiteEvaluation(proxy.node_id, name, float(accuracy),
                                              int(res.num_examples)))
            except UpdateRejectedError as exc:
                log.warning("round %d: dropped an evaluation: %s", self.book.current.round, exc)
        weights = capped_weights([e.num_examples for e in checked], self.cfg.max_weight_ratio)
        for evaluation in checked:
            self.book.record_accuracy(evaluation)
        total = sum(weights)
        weighted = sum(e.accuracy * w for e, w in zip(checked, weights, strict=True))
        self.book.close_round(weighted / total if total else None)
        return None, {}


def run_secure(grid: Grid, book: RunBook, cfg: RunConfig, initial: list[np.ndarray],
               federation: Mapping[str, Any], rounds: int, rules: ReplyRules) -> None:
    """``rounds`` rounds of FedAvg in which SecAgg+ sums the sites' heads."""
    _run_workflow(grid, SecureRounds(book, cfg, initial, federation, rules), cfg, rounds,
                  THRESHOLD, cfg.secagg_clip)


def _run_workflow(grid: Grid, strategy: LegacyFedAvg, cfg: RunConfig, rounds: int,
                  threshold: float, clip: float) -> None:
    """``rounds`` rounds of Flower's default workflow with SecAgg+ as its fit stage."""
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=rounds, round_timeout=cfg.round_timeout),
        strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=SHARES, reconstruction_threshold=threshold, max_weight=MAX_WEIGHT,
        clipping_range=clip, timeout=cfg.round_timeout))
    workflow(grid, context)


# The masked one-shot release: each site sends its sums over its count (entries within
# [-1, 1]) weighted by that count, so SecAgg+'s weighted mean times the total count is the
# sum of the sites' sums. A clip of 1 keeps SecAgg+'s quantization steps far below the noise.
SUMS_CLIP = 1.0


class SecureSums(SecureRounds):
    """Round 1 of a one-shot run under SecAgg+: the server learns only the sum of the sites'
    noised class sums (and their counts), solves the ridge head from it, has it scored."""

    def __init__(self, book: RunBook, cfg: RunConfig, basis: PublicBasis,
                 federation: Mapping[str, Any], rules: ReplyRules,
                 prior: HullPrior | None = None) -> None:
        super().__init__(book, cfg, basis.arrays(), federation, rules)
        self.basis, self.prior = basis, prior
        self.federation = {**self.federation, protocol.SECAGG_CLIP: SUMS_CLIP,
                           protocol.SECURE_SUMS: True,
                           protocol.PUBLIC_RECIPE: basis.recipe}

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        self.book.begin_round(server_round, self.book.head)  # the parameters are the basis
        return LegacyFedAvg.configure_fit(self, server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        book = self.book
        _note_dropouts(book, failures, "release")
        total_count = 0
        for proxy, fitres in results:
            who = f"node {proxy.node_id}"
            try:
                site, figures = split_legacy(fitres.metrics)
                name, tightened, n, privacy = check_sums_figures(
                    site, figures, self.basis.fingerprint, self.rules, who)
                if n != fitres.num_examples:
                    raise RejectedAfterFigures(f"{who} ({name}): weighs {fitres.num_examples} "
                                               f"in the masked sum but states a count of {n}",
                                               name, privacy)
                book.accept(SiteUpdate(proxy.node_id, name, [], n, privacy, None, 0.0, None,
                                       tightened))
            except UpdateRejectedError as exc:
                # Its masked sums are inside the total; its count still weighs them.
                book.reject(proxy.node_id, exc, inside_sum=True)
            total_count += int(fitres.num_examples)
        if not results:
            book.close_training(None)
            return None, {}
        expected = release_shapes(self.basis.components.shape[1], len(self.cfg.classes),
                                  self.cfg.private_moment)
        mean = parameters_to_ndarrays(results[0][1].parameters)
        if [m.shape for m in mean] != expected or not all(np.all(np.isfinite(m)) for m in mean):
            book.fail_round(f"the securely summed release is not finite arrays of {expected}")
            book.close_training(None)
            return None, {}
        totals = [m.astype(np.float64) * total_count for m in mean]
        solve_release(book, totals, float(total_count), self.basis, self.cfg, len(results),
                      self.prior)
        return ndarrays_to_parameters(book.head), {}


def _note_dropouts(book: RunBook, failures: list[Any], what: str) -> None:
    # Flower 1.39's SecAgg+ workflow lists each failed reply twice (same Error object).
    unique = {id(f.args[0] if isinstance(f, Exception) and f.args else f): f for f in failures}
    for failure in unique.values():
        error = failure.args[0] if isinstance(failure, Exception) and failure.args else None
        book.note_error(None, getattr(error, "code", 0),
                        f"dropped out of the secure {what}: {getattr(error, 'reason', failure)}")


def run_secure_sums(grid: Grid, book: RunBook, cfg: RunConfig, basis: PublicBasis,
                    federation: Mapping[str, Any], rules: ReplyRules,
                    prior: HullPrior | None = None) -> None:
    """Round 1 of a one-shot run with SecAgg+: the release, masked. With distributed noise
    the sum must include every sampled site (a site adding 1/N of the noise checks that the
    threshold covers its N)."""
    sample_nodes(grid, cfg.required_sites, 0)  # waits for the sites to connect
    threshold = 1.0 if cfg.sums_noise == "distributed" else THRESHOLD
    _run_workflow(grid, SecureSums(book, cfg, basis, federation, rules, prior), cfg, 1,
                  threshold, SUMS_CLIP)
