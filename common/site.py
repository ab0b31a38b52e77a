"""What one site does, free of Flower: load its features, train the head with DP, evaluate."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.accounting import Mechanism, composed_epsilon, epsilon, noise_for_budget
from common.config import RunConfig
from common.data import Listing
from common.errors import BudgetExhaustedError, ConfigError
from common.features import LazyBase, Progress, site_features
from common.ledger import PrivacyLedger, RunSpending, SiteBudget
from common.sgd import SgdSettings
from common.model import BaseSpec, predict_classes
from common.partition import dirichlet_partition, holdout_split, iid_partition


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


def partition_listing(cfg: RunConfig, listing: Listing) -> list[Listing]:
    """The simulated sites' shares of ``listing``, deterministic in ``cfg.seed``."""
    if cfg.partition == "iid":
        parts = iid_partition(len(listing), cfg.clients, cfg.seed)
    else:
        parts = dirichlet_partition(listing.labels, cfg.clients, cfg.alpha, cfg.seed)
    return [listing.subset(p) for p in parts]


def load_site(cfg: RunConfig, name: str, listing: Listing, base: LazyBase,
              cache_dir: Path | None, holdout_seed: tuple[int, ...],
              progress: Progress | None = None) -> SiteData:
    """Features of the site's images (cached), split into train and held-out parts.

    Held-out images are evaluated as they are; augmented views exist for training only.
    """
    feats = site_features(base, listing, cache_dir, skip_bad=cfg.skip_bad_images,
                          augment_views=cfg.augment_views, progress=progress)
    train, test = holdout_split(len(feats.labels), cfg.holdout, holdout_seed)
    return SiteData(
        name=name, train_x=feats.features[train], train_y=feats.labels[train],
        test_x=feats.features[test], test_y=feats.labels[test], skipped=feats.skipped,
        extraction_seconds=feats.seconds, cache_hit=feats.cache_hit,
        train_views=feats.views[:, train] if cfg.augment_views else None,
    )


def sgd_settings(cfg: RunConfig, num_train: int, noise_multiplier: float = 0.0) -> SgdSettings:
    """Per-round DP-SGD settings.

    The noise multiplier is ``noise_multiplier`` (a value already in the ledger), else
    ``cfg.noise_multiplier``, else calibrated so that training in all ``cfg.rounds`` rounds
    spends exactly the run's target epsilon.
    """
    rate = min(1.0, cfg.batch_size / num_train)
    steps = cfg.local_epochs * math.ceil(1.0 / rate)
    if not cfg.dp:
        return SgdSettings(sampling_rate=rate, steps=steps, learning_rate=cfg.learning_rate,
                           momentum=cfg.momentum, private=False)
    if cfg.delta >= 1.0 / num_train:
        raise ConfigError(f"delta {cfg.delta} is not below 1/n = 1/{num_train} for a site with "
                          f"{num_train} training examples; lower --delta")
    sigma = noise_multiplier or cfg.noise_multiplier or noise_for_budget(
        target_epsilon=cfg.target_epsilon, delta=cfg.delta, sampling_rate=rate,
        steps=steps * cfg.rounds, accountant=cfg.accountant,
    )
    return SgdSettings(sampling_rate=rate, steps=steps, learning_rate=cfg.learning_rate,
                       momentum=cfg.momentum, private=True, clip_norm=cfg.clip_norm,
                       noise_multiplier=sigma)


def plan_noise(cfg: RunConfig, num_train: int, budget: SiteBudget,
               prior: list[Mechanism]) -> SgdSettings:
    """Settings for a run the site has not trained in yet.

    The noise is the run's (from its target epsilon), raised if needed so that this run's
    planned rounds, composed with the site's earlier runs, stay within the site's own budget.
    """
    settings = sgd_settings(cfg, num_train)
    if not settings.private:
        return settings
    planned = settings.steps * cfg.rounds
    try:
        site_sigma = noise_for_budget(
            target_epsilon=budget.epsilon, delta=budget.delta,
            sampling_rate=settings.sampling_rate, steps=planned, accountant=budget.accountant,
            prior=prior)
    except ConfigError as exc:
        raise BudgetExhaustedError(
            f"this site's budget of epsilon {budget.epsilon} (delta {budget.delta}) leaves "
            f"no room for this run: {exc}") from exc
    return dataclasses.replace(settings,
                               noise_multiplier=max(settings.noise_multiplier, site_sigma))


def train_round(cfg: RunConfig, data: SiteData, weights: list[np.ndarray],
                ledger: PrivacyLedger, run_key: str, rng: np.random.Generator,
                budget: SiteBudget | None = None) -> RoundResult:
    """One round of local training, charged to the ledger *before* it runs.

    ``budget`` is the site's own cap over all its runs (default: the run's target). Raises
    `BudgetExhaustedError` (and trains nothing) if the round would take this run past its
    target epsilon or the site past its budget.
    """
    budget = budget or SiteBudget(cfg.target_epsilon, cfg.delta, cfg.accountant)
    n = len(data.train_y)
    spent = ledger.get(run_key)
    prior = ledger.prior(run_key)  # the site's other runs: read once, used twice below
    if spent is not None or not cfg.dp:
        settings = sgd_settings(cfg, n, spent.noise_multiplier if spent else 0.0)
    else:
        settings = plan_noise(cfg, n, budget, prior)
    eps = 0.0
    total_steps = settings.steps + (spent.steps if spent else 0)
    if settings.private:
        eps = epsilon(sampling_rate=settings.sampling_rate,
                      noise_multiplier=settings.noise_multiplier, steps=total_steps,
                      delta=cfg.delta, accountant=cfg.accountant)
        already = spent.epsilon if spent else 0.0
        if eps > cfg.target_epsilon * (1 + 1e-6):
            raise BudgetExhaustedError(
                f"site {data.name}: another round would raise this run's epsilon from "
                f"{already:.3f} to {eps:.3f}, past the run's target of {cfg.target_epsilon} "
                f"(delta {cfg.delta}); it declines to train")
        mechanism = Mechanism(settings.sampling_rate, settings.noise_multiplier, total_steps)
        total = composed_epsilon([*prior, mechanism], delta=budget.delta,
                                 accountant=budget.accountant)
        if total > budget.epsilon * (1 + 1e-6):
            raise BudgetExhaustedError(
                f"site {data.name}: another round would raise the site's total epsilon over "
                f"all runs to {total:.3f}, past its budget of {budget.epsilon} "
                f"(delta {budget.delta}); it declines to train")
        ledger.record(run_key, RunSpending(
            sampling_rate=settings.sampling_rate, noise_multiplier=settings.noise_multiplier,
            steps=total_steps, epsilon=eps, delta=cfg.delta,
            target_epsilon=cfg.target_epsilon, accountant=cfg.accountant,
        ), budget)
    from common.dp import train_head  # TensorFlow only once the site trains

    new_weights, loss = train_head(
        data.train_x, data.train_y, weights, num_classes=len(cfg.classes),
        head_width=cfg.head_width, settings=settings, rng=rng, views=data.train_views,
    )
    return RoundResult(weights=new_weights, train_loss=loss, num_examples=n, epsilon=eps,
                       steps=total_steps, settings=settings)


def evaluate(cfg: RunConfig, data: SiteData, weights: list[np.ndarray]) -> float:
    """Accuracy of the head ``weights`` on the site's held-out features."""
    predicted = predict_classes(data.test_x, weights, num_classes=len(cfg.classes),
                                head_width=cfg.head_width)
    return float(np.mean(predicted == data.test_y))
