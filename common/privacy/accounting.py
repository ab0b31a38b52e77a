"""Record-level (epsilon, delta) of DP-SGD with Poisson subsampling, via dp-accounting."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from common.errors import ConfigError

if TYPE_CHECKING:
    import dp_accounting

ACCOUNTANTS = ("rdp", "pld")


class _DropConvergenceNoise(logging.Filter):
    # dp-accounting warns for every fractional RDP order it cannot evaluate at high sampling
    # rates; it drops those orders, which only loosens the bound, so the warning is noise.
    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropConvergenceNoise())


@dataclass(frozen=True)
class Mechanism:
    """``steps`` Poisson-subsampled Gaussian steps: what one run of DP-SGD did at a site."""

    sampling_rate: float
    noise_multiplier: float
    steps: int


def _event(*, sampling_rate: float, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
    import dp_accounting  # ~3 s to import: only where accounting is done

    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    # A release that reads every record (the one-shot sums, counts) is the Gaussian itself.
    query = gaussian if sampling_rate == 1.0 else dp_accounting.PoissonSampledDpEvent(
        sampling_rate, gaussian)
    return dp_accounting.SelfComposedDpEvent(query, steps)


def _composed(mechanisms: Sequence[Mechanism]) -> dp_accounting.DpEvent:
    import dp_accounting  # ~3 s to import: only where accounting is done

    return dp_accounting.ComposedDpEvent([
        _event(sampling_rate=m.sampling_rate, noise_multiplier=m.noise_multiplier, steps=m.steps)
        for m in mechanisms if m.steps > 0
    ])


def composed_epsilon(mechanisms: Sequence[Mechanism], *, delta: float,
                     accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of all ``mechanisms`` together (e.g. every run a site took part in).

    Composing the mechanisms in one accountant is tighter than adding their epsilons.
    """
    for m in mechanisms:
        _check_rate(m.sampling_rate)
        if m.steps < 0:
            raise ConfigError(f"steps must be non-negative. Found {m.steps}.")
    active = [m for m in mechanisms if m.steps > 0]
    if not active:
        return 0.0
    if any(m.noise_multiplier <= 0 for m in active):
        return float("inf")
    if accountant == "rdp":
        return _rdp_epsilon(active, delta)
    acc = _accountant(accountant)
    acc.compose(_composed(active))
    return float(acc.get_epsilon(delta))


def _rdp_epsilon(mechanisms: Sequence[Mechanism], delta: float) -> float:
    """RdpAccountant's epsilon, from one cached RDP curve per (sampling rate, noise).

    RDP composes by addition, so ``steps`` steps are ``steps`` times one step's curve: the
    same arithmetic as RdpAccountant.compose. Evaluating a curve costs ~0.2 s (fractional
    orders), and a site asks every round with one more round's steps.
    """
    from dp_accounting.rdp import rdp_privacy_accountant

    orders = None
    total = 0.0
    for m in mechanisms:
        orders, curve = _step_rdp(m.sampling_rate, m.noise_multiplier)
        total = total + m.steps * curve
    return float(rdp_privacy_accountant.compute_epsilon(orders, total, delta)[0])


@functools.lru_cache(maxsize=256)
def _step_rdp(sampling_rate: float, noise_multiplier: float) -> tuple[np.ndarray, np.ndarray]:
    import dp_accounting  # ~3 s to import: only where accounting is done

    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(
        sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)))
    return acc.orders, acc.rdp


def _accountant(kind: str) -> dp_accounting.PrivacyAccountant:
    import dp_accounting  # ~3 s to import: only where accounting is done

    if kind == "rdp":
        return dp_accounting.rdp.RdpAccountant()
    if kind == "pld":
        return dp_accounting.pld.PLDAccountant()
    raise ConfigError(f"accountant must be one of {ACCOUNTANTS}. Found {kind!r}.")


def epsilon(*, sampling_rate: float, noise_multiplier: float, steps: int, delta: float,
            accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` after ``steps`` DP-SGD steps (0 steps spend nothing)."""
    return composed_epsilon([Mechanism(sampling_rate, noise_multiplier, steps)], delta=delta,
                            accountant=accountant)


def noise_for_budget(*, target_epsilon: float, delta: float, sampling_rate: float, steps: int,
                     accountant: str = "rdp", prior: Sequence[Mechanism] = ()) -> float:
    """The smallest noise multiplier that keeps ``steps`` steps within ``target_epsilon``.

    ``prior`` mechanisms (earlier runs) count against the same ``target_epsilon``. The
    result never overshoots: composed with ``prior`` it spends at most the target.
    """
    if target_epsilon <= 0:
        raise ConfigError(f"target epsilon must be positive. Found {target_epsilon}.")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1). Found {delta}.")
    if steps <= 0:
        raise ConfigError(f"planned steps must be positive. Found {steps}.")
    _check_rate(sampling_rate)
    return _calibrated(float(target_epsilon), float(delta), float(sampling_rate), int(steps),
                       accountant, tuple(prior))


_UPPER = 500.0
_PLD_LOWER = 0.05


# Sites of one run ask the same question (a simulated site's budget is the run's target, so
# the site's and the run's calibration coincide): answered once per process.
@functools.lru_cache(maxsize=256)
def _calibrated(target_epsilon: float, delta: float, sampling_rate: float, steps: int,
                accountant: str, prior: tuple[Mechanism, ...]) -> float:
    @functools.cache  # the searches below probe a bracket's ends more than once
    def spent(sigma: float) -> float:
        return composed_epsilon([*prior, Mechanism(sampling_rate, sigma, steps)], delta=delta,
                                accountant=accountant)

    if spent(_UPPER) > target_epsilon:
        already = composed_epsilon(prior, delta=delta, accountant=accountant)
        raise ConfigError(
            f"target epsilon {target_epsilon} at delta {delta} cannot be met with {steps} "
            f"steps at sampling rate {sampling_rate:.4g} even with noise multiplier {_UPPER}"
            + (f" (earlier runs and this run's count and figure releases already spend "
               f"{already:.3f})" if prior else "")
            + ": raise the budget, or lower rounds, local epochs or the batch size"
        )
    if accountant != "rdp":
        return _pld_calibrated(spent, target_epsilon, delta, sampling_rate, steps, prior)
    return _root_from_above(spent, target_epsilon, 1e-3, _UPPER)


def _pld_calibrated(spent: Callable[[float], float], target_epsilon: float, delta: float,
                    sampling_rate: float, steps: int, prior: tuple[Mechanism, ...]) -> float:
    """PLD's least sigma, bracketed by RDP's: PLD is the tighter bound, so RDP's sigma meets
    the target under PLD too. A narrow bracket keeps every probe cheap (dp-accounting's own
    bisection from 0.05 discretises losses at tiny sigmas: 10-80 s for one site's plan)."""
    try:
        high = _calibrated(target_epsilon, delta, sampling_rate, steps, "rdp", prior)
    except ConfigError:
        # RDP's looser bound can put the prior alone past the target where PLD's does not
        # (a one-shot release at 85 % of epsilon 1 and a count): bracket from the top.
        high = _UPPER
    if spent(high) > target_epsilon:  # not expected; then the slow, general search
        return dp_accounting_calibrated("pld", target_epsilon, delta, sampling_rate, steps,
                                        prior)
    low = high
    while low > _PLD_LOWER and spent(low) <= target_epsilon:
        low = max(low * 0.7, _PLD_LOWER)
    return _root_from_above(spent, target_epsilon, low, high)


def dp_accounting_calibrated(accountant: str, target_epsilon: float, delta: float,
                             sampling_rate: float, steps: int,
                             prior: Sequence[Mechanism] = ()) -> float:
    """dp-accounting's own search (bisection over [0.05, 500] to 1e-4): the reference that
    `noise_for_budget` is benchmarked against, and PLD's fallback."""
    import dp_accounting  # ~3 s to import: only where accounting is done

    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: _accountant(accountant),
        lambda sigma: _composed([*prior, Mechanism(sampling_rate, sigma, steps)]),
        target_epsilon, delta,
        # PLD discretises the loss of every probed sigma: a tiny one needs gigabytes.
        bracket_interval=dp_accounting.ExplicitBracketInterval(_PLD_LOWER, _UPPER),
        tol=1e-4))


def _root_from_above(spent: Callable[[float], float], target: float, low: float,
                     high: float) -> float:
    """The least sigma in [low, high] whose ``spent(sigma)`` is at most ``target``, to 1e-4
    relative: Brent's method on log sigma (epsilon falls smoothly as noise grows, ~10
    evaluations of an accountant instead of dp-accounting's ~25 bisection steps), then a
    step up, never down, until the target holds."""
    from scipy.optimize import brentq

    if spent(low) <= target:
        return low
    root = brentq(lambda log_sigma: spent(math.exp(log_sigma)) - target, math.log(low),
                  math.log(high), xtol=1e-5, rtol=1e-6)
    sigma = math.exp(root)
    while spent(sigma) > target:
        sigma *= 1 + 1e-5
    return sigma


def _check_rate(sampling_rate: float) -> None:
    if not 0 < sampling_rate <= 1:
        raise ConfigError(f"sampling rate must be in (0, 1]. Found {sampling_rate}.")
