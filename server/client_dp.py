"""Client-level DP (a site's whole contribution is the unit): Flower's DP strategy wrappers
around fedtl's strategy, with the accounting Flower leaves out for them.

DP-FedAvg (McMahan et al., arXiv 1710.06963): each site's head update is clipped to a norm,
updates are averaged with equal weights, and Gaussian noise of std ``z * clip / m`` is added
to the mean of ``m`` = the federation's site count. Adaptive clipping (Andrew et al., arXiv
1905.03871) tunes the clip norm from a noised count of clipped updates. Flower's own
accountant accepts only its unmodified FedAvg; this module accounts every aggregate it
released itself, with dp-accounting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from common.privacy.accounting import Mechanism, composed_epsilon
from common.config import RunConfig

log = logging.getLogger("fedtl.server")


@dataclass
class ClientLevelState:
    """What the guarantee depends on: one effective noise multiplier per released aggregate,
    and the clip norm in force (it moves with adaptive clipping)."""

    noise_multipliers: list[float] = field(default_factory=list)
    clip_norm: float = 0.0


def effective_noise(noise_multiplier: float, aggregated: int, sites: int) -> float:
    """The noise multiplier an aggregate of ``aggregated`` updates really got.

    The noise is scaled for a mean over all ``sites``; the mean of fewer updates has a larger
    sensitivity (clip / aggregated), so the same noise protects proportionally less.
    """
    return noise_multiplier * aggregated / sites


def client_level_epsilon(noise_multipliers: list[float], *, delta: float,
                         accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` for one site's whole data over all released aggregates.

    Every site takes part in every round (no sampling), so there is no amplification: each
    release is a plain Gaussian mechanism (a Poisson sample at rate 1).
    """
    return composed_epsilon([Mechanism(1.0, z, 1) for z in noise_multipliers], delta=delta,
                            accountant=accountant)


class _Accounted:
    """Mixed in before one of Flower's DP wrappers: records the noise of every aggregate it
    released. The replies it gets were checked and rebuilt by `Validated` (refusals and bad
    replies never reach Flower, which would skip the whole round on an error reply)."""

    noise_multiplier: float
    num_sampled_clients: int
    clipping_norm: float

    def __init__(self, *args: Any, state: ClientLevelState, accounted_noise: float,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state = state
        # Adaptive clipping keeps only the update's share of the noise in noise_multiplier;
        # the guarantee is that of the effective multiplier it was given.
        self.accounted_noise = accounted_noise
        if state.clip_norm:  # a resumed run goes on with the clip norm it had reached
            self.clipping_norm = state.clip_norm
        state.clip_norm = self.clipping_norm

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if not replies:
            return None, None
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is not None:
            # The noised head is what `Validated` keeps as the global head: checkpoints, the
            # unseen-site score and the final model never hold the exact average.
            self.state.noise_multipliers.append(
                effective_noise(self.accounted_noise, len(replies), self.num_sampled_clients))
        self.state.clip_norm = self.clipping_norm
        return arrays, metrics


class AccountedFixedClipping(_Accounted, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping, accounted."""


class AccountedAdaptiveClipping(_Accounted, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, accounted (``noise_multiplier`` is the
    effective one of Andrew et al., covering the update and the clipped count)."""

    def _noisy_fraction(self, count: int, total: int) -> float:
        # Flower 1.39 counts *clipped* updates but moves the norm by Andrew et al.'s rule for
        # the *unclipped* fraction, so the norm runs away (all clipped -> it shrinks). The
        # rule gets the noisy unclipped fraction it expects; the count's noise is the same.
        return 1.0 - float(super()._noisy_fraction(count, total))  # type: ignore[misc]


def with_client_dp(strategy: Strategy, cfg: RunConfig,
                   state: ClientLevelState) -> Strategy:
    """``strategy`` wrapped for client-level DP as ``cfg.client_dp`` says (or as it is).

    DP-FedAvg's sensitivity needs equal weights: `server.strategy.validated` gives every
    reply the same weight when client-level DP is on.
    """
    if cfg.client_dp == "off":
        return strategy
    if cfg.client_dp == "fixed":
        return AccountedFixedClipping(strategy, cfg.client_noise, cfg.client_clip,
                                      cfg.clients, state=state,
                                      accounted_noise=cfg.client_noise)
    # Andrew et al.'s default count noise (m/20) is too small for a handful of sites; at
    # least the update's noise multiplier keeps the update's own share of the noise sane.
    return AccountedAdaptiveClipping(
        strategy, cfg.client_noise, cfg.clients, initial_clipping_norm=cfg.client_clip,
        target_clipped_quantile=cfg.client_quantile,
        clipped_count_stddev=max(cfg.clients / 20, cfg.client_noise), state=state,
        accounted_noise=cfg.client_noise)


def client_level_guarantee(cfg: RunConfig, state: ClientLevelState) -> dict[str, Any]:
    """The report's client-level entry: what protects a whole site's data."""
    if cfg.client_dp == "off":
        return {"private": False}
    return {
        "private": True,
        "unit": "all images of one site (add/remove a site)",
        "clipping": cfg.client_dp,
        "noise_multiplier": cfg.client_noise,
        "effective_noise_multipliers": list(state.noise_multipliers),
        "clip_norm": state.clip_norm,
        "releases": len(state.noise_multipliers),
        "sites": cfg.clients,
        "delta": cfg.client_delta,
        "epsilon": client_level_epsilon(state.noise_multipliers, delta=cfg.client_delta,
                                        accountant=cfg.accountant),
        "accountant": cfg.accountant,
        "sampling": "every site every round (no amplification)",
    }
