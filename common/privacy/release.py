"""What a site releases besides its DP head: its example count, its per-round figures and
(``--feature-centring site``) the feature sum it centres its features with.

DP-SGD protects the head; everything else a site sends is computed from the same private
images and needs its own treatment. Counts are released once per run, exactly, rounded or
with Gaussian noise (accounted); the sampling rate, steps and noise multiplier are then
computed from the *released* count, so they are post-processing and reveal nothing more.
Held-out accuracy is released exactly (outside the guarantee, and said so in the report),
with Gaussian noise on (correct, total) (accounted), or not at all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from common.privacy.accounting import Mechanism, composed_epsilon, noise_for_budget

if TYPE_CHECKING:
    from common.config import RunConfig

COUNT_MODES = ("exact", "rounded", "noised")
METRIC_MODES = ("exact", "noised", "none")


def public_count(n: int, *, mode: str, noise: float, rounding: int,
                 rng: np.random.Generator) -> int:
    """The site's training-example count as the site releases it (at least 1)."""
    if mode == "exact":
        return n
    if mode == "rounded":  # coarsens, but is not DP: a count near a boundary still shows
        return max(rounding, int(rounding * round(n / rounding)))
    if mode == "noised":  # Gaussian mechanism, sensitivity 1 under add/remove of one image
        return max(1, int(round(n + rng.normal(0.0, noise))))
    raise ValueError(f"unknown count mode {mode!r}")


def count_mechanism(mode: str, noise: float) -> Mechanism | None:
    """The accounted mechanism of a noised count release (one Gaussian query per run)."""
    return Mechanism(1.0, noise, 1) if mode == "noised" else None


def centring_mechanism(cfg: RunConfig) -> Mechanism | None:
    """The accounted release of a site's feature sum for ``--feature-centring site`` (one
    Gaussian query per run; its noise multiplier is over the clip norm)."""
    return Mechanism(1.0, cfg.centring_noise, 1) \
        if cfg.dp and cfg.site_centred else None


def metric_mechanism(noise: float, releases: int) -> Mechanism | None:
    """``releases`` Gaussian releases of (correct, total) with std ``noise`` per coordinate.

    Adding or removing one held-out image moves the pair by at most sqrt(2) in L2, so the
    noise multiplier (std over sensitivity) is ``noise / sqrt(2)``.
    """
    if releases <= 0:
        return None
    return Mechanism(1.0, noise / math.sqrt(2.0), releases)


def noisy_accuracy(correct: int, total: int, *, noise: float,
                   rng: np.random.Generator) -> float:
    """Accuracy from a Gaussian-noised (correct, total) pair, clipped to [0, 1]."""
    noisy_correct = correct + rng.normal(0.0, noise)
    noisy_total = max(1.0, total + rng.normal(0.0, noise))
    return float(min(1.0, max(0.0, noisy_correct / noisy_total)))


def noisy_accuracy_std(accuracy: float, total: float, noise: float) -> float:
    """About how far a `noisy_accuracy` figure lies from the true one (one std, by the delta
    method on (correct + e1) / (total + e2)): what a reader of noised figures must allow."""
    return float(noise) * float(np.sqrt(1.0 + float(accuracy) ** 2)) / max(float(total), 1.0)


def held_out_weight(public_train: int, holdout: float) -> int:
    """How many held-out images a site is taken to have, from its released training count
    (what weights its accuracy in the server's average when counts are not exact)."""
    return max(1, int(round(public_train * holdout / (1.0 - holdout))))


def figure_mode(cfg: RunConfig) -> str:
    """How held-out figures leave a site: a non-private run has nothing to noise them for."""
    if cfg.dp or cfg.site_metrics == "none":
        return cfg.site_metrics
    return "exact"


def planned_figure_releases(cfg: RunConfig) -> int:
    """Noised (correct, total) releases a site makes in the run: one evaluation per round,
    and its own and the global head's accuracy after personalization (not with a joint
    personal head)."""
    if not cfg.dp or cfg.site_metrics != "noised":
        return 0
    # A joint personal head's figures are not DP releases: none leaves (client_app).
    return cfg.run_rounds + (2 if cfg.personalize and not cfg.personal_joint else 0)


def sums_noise(cfg: RunConfig) -> float:
    """Noise multiplier (std over L2 sensitivity) of the one-shot release of class sums and
    counts (one Gaussian query, `common.privacy.oneshot`). A ridge head alone spends what the
    count and figure releases leave of the target; with DP-SGD after it (ridge+sgd, or
    personal fine-tuning) the release alone spends ``ridge_share`` of the target and the
    DP-SGD noise is planned around it."""
    if cfg.sgd_rounds or cfg.personal_sgd:
        target, prior = cfg.ridge_share * cfg.target_epsilon, []
    else:
        target = cfg.target_epsilon
        prior = [m for m in (count_mechanism(cfg.example_counts, cfg.count_noise),
                             metric_mechanism(cfg.metric_noise, planned_figure_releases(cfg)),
                             centring_mechanism(cfg))
                 if m is not None]
    return noise_for_budget(target_epsilon=target, delta=cfg.delta, sampling_rate=1.0,
                            steps=1, accountant=cfg.accountant, prior=prior)


def sums_mechanism(cfg: RunConfig) -> Mechanism | None:
    """The accounted one-shot release of a ridge head (None when the run has none)."""
    return Mechanism(1.0, sums_noise(cfg), 1) if cfg.dp and cfg.one_shot else None


def one_shot_split(cfg: RunConfig) -> dict[str, float | str] | None:
    """How a run's target epsilon is split between the one-shot release and the rest (the
    report states it per site, from the site's own played settings); None without one."""
    mechanism = sums_mechanism(cfg)
    if mechanism is None:
        return None
    alone = composed_epsilon([mechanism], delta=cfg.delta, accountant=cfg.accountant)
    return {"noise_multiplier": mechanism.noise_multiplier, "epsilon_alone": alone,
            "planned_share": alone / cfg.target_epsilon, "noise": cfg.sums_noise,
            "rest_for": ", ".join(["dp-sgd rounds"] * bool(cfg.sgd_rounds)
                                  + ["personal fine-tuning"] * cfg.personal_sgd
                                  + ["count and figure releases"]
                                  + ["feature sum (centring)"] * cfg.site_centred)}


@dataclass(frozen=True)
class Releases:
    """What a run has a site release besides its head, and under which guarantee. One
    statement, read by the site (to plan its noise) and by the server (for the report)."""

    mechanisms: tuple[Mechanism, ...]  # planned, composed into the record-level epsilon
    covered: tuple[str, ...]  # what that epsilon covers
    outside: tuple[str, ...]  # what leaves the site outside it


NOISED_ACCURACY = "noised held-out accuracy"
SUMS_LOCAL = "noised per-class feature sums and counts (one-shot head)"
SUMS_DISTRIBUTED = ("noised per-class feature sums and counts (one-shot head), the noise "
                    "distributed: a site added 1/N of it and SecAgg+ showed the server only "
                    "the sum (trusting the other sites; its ledger's epsilon_on_its_own is "
                    "what it keeps without them)")


def releases(cfg: RunConfig) -> Releases:
    """The releases of ``cfg`` as a site plays it (after its policy)."""
    if not cfg.dp:  # nothing is under a guarantee; the report says the run is not private
        return Releases((), (), ())
    mechanisms = [count_mechanism(cfg.example_counts, cfg.count_noise),
                  metric_mechanism(cfg.metric_noise, planned_figure_releases(cfg)),
                  centring_mechanism(cfg), sums_mechanism(cfg)]
    covered = ([SUMS_DISTRIBUTED if cfg.sums_noise == "distributed" else SUMS_LOCAL]
               if cfg.one_shot else [])
    if cfg.private_moment:
        covered.append("noised second moment of the features (one-shot head, same query)")
    if cfg.site_centred:
        covered.append("noised feature sum centring the site's features (kept at the site; "
                       "everything it sends is computed from centred features)")
    covered += ["head updates"] if cfg.sgd_rounds or cfg.personal_sgd else []
    outside: list[str] = []
    if cfg.example_counts == "noised":
        covered.append("noised example counts")
    else:
        outside.append(f"example counts ({cfg.example_counts})")
    if cfg.site_metrics == "noised":
        covered.append(NOISED_ACCURACY)
    elif cfg.site_metrics == "exact":
        outside += ["held-out accuracy", "train loss", "skipped-image counts",
                    "feature-extraction seconds"]
    if cfg.personal_joint:  # nothing leaves, but whoever reads the report should know
        outside.append("nothing of the personal heads (--personal-tuning joint), which are "
                       "fitted to each site's own images without noise and stay at the site: "
                       "not DP with respect to that site's images")
    return Releases(tuple(m for m in mechanisms if m is not None), tuple(covered),
                    tuple(outside))


_CHANGE = re.compile(r"(?P<key>[a-z][a-z-]*) (?P<old>\S+) -> (?P<new>\S+)")


def played_settings(settings: Mapping[str, Any], tightened: Sequence[str]) -> dict[str, Any]:
    """A run's settings (`RunConfig.to_flower`, a report's ``settings``) as a site played
    them, from the changes its policy reported ("key old -> new"); a change that does not
    parse is ignored (the run's own setting then stands)."""
    values = dict(settings)
    for change in tightened:
        match = _CHANGE.fullmatch(change)
        if match and match["key"] in values:
            values[match["key"]] = match["new"]
    return values


def as_played(cfg: RunConfig, tightened: list[str] | tuple[str, ...]) -> RunConfig:
    """``cfg`` as a site played it (`played_settings`)."""
    values = played_settings(cfg.to_flower(), tightened)
    try:
        return type(cfg).from_flower(values)
    except ValueError:
        return cfg
