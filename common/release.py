"""What a site releases besides its DP head: its example count and its per-round figures.

DP-SGD protects the head; everything else a site sends is computed from the same private
images and needs its own treatment. Counts are released once per run, exactly, rounded or
with Gaussian noise (accounted); the sampling rate, steps and noise multiplier are then
computed from the *released* count, so they are post-processing and reveal nothing more.
Held-out accuracy is released exactly (outside the guarantee, and said so in the report),
with Gaussian noise on (correct, total) (accounted), or not at all.
"""

from __future__ import annotations

import math

import numpy as np

from common.accounting import Mechanism

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


def held_out_weight(public_train: int, holdout: float) -> int:
    """How many held-out images a site is taken to have, from its released training count
    (what weights its accuracy in the server's average when counts are not exact)."""
    return max(1, int(round(public_train * holdout / (1.0 - holdout))))
