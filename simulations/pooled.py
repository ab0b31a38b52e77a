"""The non-private references of a comparison, each scored on every site's own held-out
split: ``pooled`` (every site's training images in one place, one head fitted without DP)
and ``local`` (each site alone: a head fitted without DP to its own training images only,
what a site gets without joining any federation)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from common.config import RunConfig
from common.features.extraction import LazyBase
from common.features.model import predict_classes
from common.site import base_spec, load_simulated_site
from server.runbook import site_summary
from simulations.simulate import prepare_sites, unseen_evaluator

# scikit-learn's default L2 penalty, untuned: the reference is not fitted to the held-out
# splits it is scored on.
PENALTY_C = 1.0


def pooled_head(features: np.ndarray, labels: np.ndarray,
                num_classes: int) -> list[np.ndarray]:
    """A linear head (kernel, bias) of multinomial logistic regression fitted to convergence
    (L-BFGS); a class with no training image gets a bias that never wins."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=PENALTY_C, max_iter=5000).fit(features, labels)
    kernel = np.zeros((features.shape[1], num_classes), np.float32)
    bias = np.full(num_classes, -1e9, np.float32)
    coef = model.coef_ if len(model.classes_) > 2 else np.vstack([-model.coef_, model.coef_])
    intercept = model.intercept_ if len(model.classes_) > 2 else np.concatenate(
        [-model.intercept_, model.intercept_])
    kernel[:, model.classes_] = coef.T
    bias[model.classes_] = intercept
    return [kernel, bias]


def pooled_reference(cfg: RunConfig, local: bool = False) -> dict[str, Any]:
    """The pooled model's figures (``local``: each site's own model's), in the form
    `simulations.compare.summarize` gives a run's."""
    started = time.time()
    # Its DP plan would be the base config's, not any variant's: it would only mislead.
    cfg, _, scenario = prepare_sites(cfg, plan=False)
    base = LazyBase.shared(base_spec(cfg), cfg.stats_cache)
    sites = [load_simulated_site(cfg, s, base) for s in scenario.sites]
    classes = len(cfg.classes)
    unseen = unseen_evaluator(cfg, scenario)
    # A new domain has no model of its own: the pooled one is what it would get, so the
    # local reference fits it only to score an unseen site.
    pooled = (pooled_head(np.concatenate([s.train_x for s in sites]),
                          np.concatenate([s.train_y for s in sites]), classes)
              if not local or unseen is not None else None)
    heads = {s.name: pooled_head(s.train_x, s.train_y, classes) if local else pooled
             for s in sites}
    per_site = {s.name: float(np.mean(predict_classes(
        s.test_x, heads[s.name], num_classes=classes, head_width=0) == s.test_y))
        for s in sites}
    held_out = {s.name: len(s.test_y) for s in sites}
    return {**site_summary(per_site),
            "weighted_accuracy": sum(per_site[n] * held_out[n] for n in per_site)
            / sum(held_out.values()),
            "unseen_domain_accuracy": unseen(pooled) if unseen is not None else None,
            "per_site_accuracy": per_site, "per_site_global_accuracy": per_site,
            "max_epsilon": None, "rounds": [], "total_seconds": time.time() - started}
