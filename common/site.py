"""What one site does, free of Flower: load its features, train the head with DP, evaluate."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.accounting import Mechanism, composed_epsilon, noise_for_budget
from common.config import RunConfig
from common.data import Listing
from common.shift import Shift
from common.errors import BudgetExhaustedError, ConfigError
from common.features import LazyBase, Progress, site_features
from common.ledger import PrivacyLedger, RunSpending, SiteBudget
from common.sgd import SgdSettings
from common.model import BaseSpec, predict_classes
from common.partition import holdout_split
from common.release import (count_mechanism, held_out_weight, metric_mechanism,
                            noisy_accuracy, public_count)


@dataclass(frozen=True)
class SiteData:
    """A site's features split into training and held-out parts."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    skipped: tuple[str, ...]
    extraction_seconds: float
    cache_hit: bool
    train_views: np.ndarray | None = None  # K augmented views of train_x (K x n x d)


@dataclass(frozen=True)
class RoundResult:
    """What a site's training round produced; only ``weights`` and the figures leave it."""

    weights: list[np.ndarray]
    train_loss: float
    num_examples: int
    epsilon: float
    steps: int
    settings: SgdSettings


def base_spec(cfg: RunConfig) -> BaseSpec:
    return BaseSpec(weights=cfg.weights, image_size=cfg.image_size, base_layer=cfg.base_layer)


def load_site(cfg: RunConfig, name: str, listing: Listing, base: LazyBase,
              cache_dir: Path | None, holdout_seed: tuple[int, ...],
              progress: Progress | None = None, shift: Shift | None = None) -> SiteData:
    """Features of the site's images (cached), split into train and held-out parts.

    Held-out images are evaluated as they are; augmented views exist for training only.
    ``shift`` is a simulated site's acquisition change (both parts are seen through it).
    """
    feats = site_features(base, listing, cache_dir, skip_bad=cfg.skip_bad_images,
                          augment_views=cfg.augment_views, shift=shift, progress=progress)
    train, test = holdout_split(len(feats.labels), cfg.holdout, holdout_seed)
    return SiteData(
        name=name, train_x=feats.features[train], train_y=feats.labels[train],
        test_x=feats.features[test], test_y=feats.labels[test], skipped=feats.skipped,
        extraction_seconds=feats.seconds, cache_hit=feats.cache_hit,
        train_views=feats.views[:, train] if cfg.augment_views else None,
    )


def planned_steps(cfg: RunConfig, sampling_rate: float) -> int:
    """DP-SGD steps a site takes in the whole run: every round, then personalization."""
    per_epoch = math.ceil(1.0 / sampling_rate)
    personal = cfg.personal_epochs * per_epoch if cfg.personalize else 0
    return cfg.local_epochs * per_epoch * cfg.rounds + personal


def planned_releases(cfg: RunConfig) -> int:
    """Noised (correct, total) releases a site makes in the run: one evaluation per round,
    and its own and the global head's accuracy after personalization."""
    if not cfg.dp or cfg.site_metrics != "noised":
        return 0
    return cfg.rounds + (2 if cfg.personalize else 0)


def release_plan(cfg: RunConfig) -> list[Mechanism]:
    """What the run releases under DP besides the head: the count and the planned figures.

    The training noise is calibrated with these composed in, so the whole run spends the
    target, not the target plus the releases.
    """
    if not cfg.dp:
        return []
    plan = [count_mechanism(cfg.example_counts, cfg.count_noise),
            metric_mechanism(cfg.metric_noise, planned_releases(cfg))]
    return [m for m in plan if m is not None]


def sgd_settings(cfg: RunConfig, num_train: int, noise_multiplier: float = 0.0,
                 personal: bool = False) -> SgdSettings:
    """DP-SGD settings of one round (or, ``personal``, of the final personal fine-tuning).

    ``num_train`` is the count the site released (everything here is computed from it, so
    it reveals nothing more). The noise multiplier is ``noise_multiplier`` (a value already
    in the ledger), else ``cfg.noise_multiplier``, else calibrated so that all the run's
    planned steps (every round and personalization) and releases spend exactly the run's
    target epsilon.
    """
    rate = min(1.0, cfg.batch_size / num_train)
    epochs = cfg.personal_epochs if personal else cfg.local_epochs
    steps = epochs * math.ceil(1.0 / rate)
    if not cfg.dp:
        return SgdSettings(sampling_rate=rate, steps=steps, learning_rate=cfg.learning_rate,
                           momentum=cfg.momentum, private=False)
    if cfg.delta >= 1.0 / num_train:
        raise ConfigError(f"delta {cfg.delta} is not below 1/n = 1/{num_train} for a site with "
                          f"{num_train} training examples; lower --delta")
    sigma = noise_multiplier or cfg.noise_multiplier or noise_for_budget(
        target_epsilon=cfg.target_epsilon, delta=cfg.delta, sampling_rate=rate,
        steps=planned_steps(cfg, rate), accountant=cfg.accountant, prior=release_plan(cfg),
    )
    # The gradient sum is divided by the expected batch of the *released* count: dividing by
    # the true size would make the update depend on a private number outside the mechanism.
    return SgdSettings(sampling_rate=rate, steps=steps, learning_rate=cfg.learning_rate,
                       momentum=cfg.momentum, private=True, clip_norm=cfg.clip_norm,
                       noise_multiplier=sigma, expected_batch=rate * num_train)


def plan_noise(cfg: RunConfig, num_train: int, budget: SiteBudget,
               prior: list[Mechanism], personal: bool = False) -> SgdSettings:
    """Settings for a run the site has not trained in yet.

    The noise is the run's (from its target epsilon), raised if needed so that this run's
    planned rounds and releases, composed with the site's earlier runs, stay within the
    site's own budget.
    """
    settings = sgd_settings(cfg, num_train, personal=personal)
    if not settings.private:
        return settings
    planned = planned_steps(cfg, settings.sampling_rate)
    try:
        site_sigma = noise_for_budget(
            target_epsilon=budget.epsilon, delta=budget.delta,
            sampling_rate=settings.sampling_rate, steps=planned, accountant=budget.accountant,
            prior=[*prior, *release_plan(cfg)])
    except ConfigError as exc:
        raise BudgetExhaustedError(
            f"this site's budget of epsilon {budget.epsilon} (delta {budget.delta}) leaves "
            f"no room for this run: {exc}") from exc
    return dataclasses.replace(settings,
                               noise_multiplier=max(settings.noise_multiplier, site_sigma))


def charge(cfg: RunConfig, name: str, num_train: int, ledger: PrivacyLedger, run_key: str,
           budget: SiteBudget, rng: np.random.Generator,
           personal: bool = False) -> tuple[SgdSettings, RunSpending | None]:
    """Settings for the next round (or the personal fine-tuning), charged to the ledger.

    The first round of a run releases the site's count (``cfg.example_counts``) and records
    it; later rounds reuse it. Returns the settings and the run's ledger entry after them
    (None without DP). Raises `BudgetExhaustedError`, and records nothing, if they would take
    this run past its target epsilon or the site past its budget over all runs.
    """
    spent = ledger.get(run_key)
    if not cfg.dp:
        return sgd_settings(cfg, num_train, personal=personal), None
    prior = ledger.prior(run_key)  # the site's other runs: read once, used twice
    if spent is not None:
        count = spent.public_count or num_train  # ledgers before counts were released: exact
        settings = sgd_settings(cfg, count, spent.noise_multiplier, personal=personal)
        entry = dataclasses.replace(spent, steps=spent.steps + settings.steps)
    else:
        count = public_count(num_train, mode=cfg.example_counts, noise=cfg.count_noise,
                             rounding=cfg.count_rounding, rng=rng)
        settings = plan_noise(cfg, count, budget, prior, personal=personal)
        entry = RunSpending(
            sampling_rate=settings.sampling_rate, noise_multiplier=settings.noise_multiplier,
            steps=settings.steps, epsilon=0.0, delta=cfg.delta,
            target_epsilon=cfg.target_epsilon, accountant=cfg.accountant, public_count=count,
            count_noise=cfg.count_noise if cfg.example_counts == "noised" else 0.0,
            metric_noise=cfg.metric_noise if planned_releases(cfg) else 0.0)
    what = "personal fine-tuning" if personal else "another round"
    return settings, _record(cfg, name, ledger, run_key, budget, prior, entry, what,
                             spent.epsilon if spent else 0.0)


def charge_releases(cfg: RunConfig, name: str, ledger: PrivacyLedger, run_key: str,
                    budget: SiteBudget, releases: int) -> RunSpending:
    """Charge ``releases`` noised figure releases to the run's ledger entry before they go out.

    Raises `BudgetExhaustedError` (and records nothing) if they do not fit.
    """
    spent = ledger.get(run_key)
    if spent is None:
        raise BudgetExhaustedError(
            f"site {name} has not trained in this run; it releases no figures about its data")
    entry = dataclasses.replace(spent, metric_noise=cfg.metric_noise,
                                metric_releases=spent.metric_releases + releases)
    return _record(cfg, name, ledger, run_key, budget, ledger.prior(run_key), entry,
                   "releasing its held-out accuracy", spent.epsilon)


def _record(cfg: RunConfig, name: str, ledger: PrivacyLedger, run_key: str,
            budget: SiteBudget, prior: list[Mechanism], entry: RunSpending, what: str,
            already: float) -> RunSpending:
    """Check ``entry`` against the run's target and the site's budget; record it if it fits."""
    eps = composed_epsilon(entry.mechanisms, delta=cfg.delta, accountant=cfg.accountant)
    if eps > cfg.target_epsilon * (1 + 1e-6):
        raise BudgetExhaustedError(
            f"site {name}: {what} would raise this run's epsilon from {already:.3f} to "
            f"{eps:.3f}, past the run's target of {cfg.target_epsilon} (delta {cfg.delta}); "
            "it declines")
    total = composed_epsilon([*prior, *entry.mechanisms], delta=budget.delta,
                             accountant=budget.accountant)
    if total > budget.epsilon * (1 + 1e-6):
        raise BudgetExhaustedError(
            f"site {name}: {what} would raise the site's total epsilon over all runs to "
            f"{total:.3f}, past its budget of {budget.epsilon} (delta {budget.delta}); "
            "it declines")
    entry = dataclasses.replace(entry, epsilon=eps)
    ledger.record(run_key, entry, budget)
    return entry


def train_round(cfg: RunConfig, data: SiteData, weights: list[np.ndarray],
                ledger: PrivacyLedger, run_key: str, rng: np.random.Generator,
                budget: SiteBudget | None = None, *, proximal_mu: float = 0.0,
                personal: bool = False) -> RoundResult:
    """One round of local training (or, ``personal``, the site's own fine-tuning from the
    global head), charged to the ledger *before* it runs.

    ``budget`` is the site's own cap over all its runs (default: the run's target).
    ``proximal_mu`` adds FedProx's proximal term towards ``weights``. Raises
    `BudgetExhaustedError` (and trains nothing) if the budget does not allow it.
    """
    budget = budget or SiteBudget(cfg.target_epsilon, cfg.delta, cfg.accountant)
    n = len(data.train_y)
    settings, entry = charge(cfg, data.name, n, ledger, run_key, budget, rng, personal)
    settings = dataclasses.replace(settings, proximal_mu=proximal_mu)
    from common.dp import train_head  # TensorFlow only once the site trains

    new_weights, loss = train_head(
        data.train_x, data.train_y, weights, num_classes=len(cfg.classes),
        head_width=cfg.head_width, settings=settings, rng=rng, views=data.train_views,
    )
    return RoundResult(weights=new_weights, train_loss=loss,
                       num_examples=entry.public_count if entry else n,
                       epsilon=entry.epsilon if entry else 0.0,
                       steps=entry.steps if entry else settings.steps, settings=settings)


def released_accuracies(cfg: RunConfig, data: SiteData, heads: list[list[np.ndarray]],
                        ledger: PrivacyLedger, run_key: str, rng: np.random.Generator,
                        budget: SiteBudget | None = None) -> tuple[list[float], int]:
    """Held-out accuracy of each head in ``heads`` as the site releases it, and the weight
    of its figures in the server's average.

    ``cfg.site_metrics``: exact (outside the guarantee), noised (each accuracy a Gaussian
    (correct, total) release charged to the ledger first) or none (no accuracy leaves).
    Without DP everything is exact. Raises `BudgetExhaustedError` if noised releases no
    longer fit.
    """
    budget = budget or SiteBudget(cfg.target_epsilon, cfg.delta, cfg.accountant)
    if not cfg.dp or cfg.example_counts == "exact":
        weight = len(data.test_y)
    else:  # derived from the released count (a site that never trained counts once)
        entry = ledger.get(run_key)
        weight = held_out_weight(entry.public_count, cfg.holdout) if entry else 1
    mode = cfg.site_metrics if cfg.dp else "exact"
    if mode == "none":
        return [], weight
    if mode == "exact":
        return [evaluate(cfg, data, w) for w in heads], weight
    charge_releases(cfg, data.name, ledger, run_key, budget, len(heads))
    correct = [int(round(evaluate(cfg, data, w) * len(data.test_y))) for w in heads]
    return [noisy_accuracy(c, len(data.test_y), noise=cfg.metric_noise, rng=rng)
            for c in correct], weight


def evaluate(cfg: RunConfig, data: SiteData, weights: list[np.ndarray]) -> float:
    """Accuracy of the head ``weights`` on the site's held-out features."""
    predicted = predict_classes(data.test_x, weights, num_classes=len(cfg.classes),
                                head_width=cfg.head_width)
    return float(np.mean(predicted == data.test_y))
