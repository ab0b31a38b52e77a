"""Membership-inference attacks (tensorflow-privacy's) as `fedtl audit` runs them."""

import numpy as np
import pytest

from common.privacy.membership import ATTACKS, run_attacks


def probabilities(labels: np.ndarray, confidence: float, rng: np.random.Generator) -> np.ndarray:
    """Softmax outputs that give the true class about ``confidence``."""
    logits = rng.normal(size=(len(labels), 5))
    logits[np.arange(len(labels)), labels] += confidence
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_members_the_model_is_surer_about_are_told_apart() -> None:
    rng = np.random.default_rng(0)
    y_in, y_out = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    attacks = run_attacks(probabilities(y_in, 6.0, rng), y_in,
                          probabilities(y_out, 1.0, rng), y_out)
    assert set(attacks) == set(ATTACKS)
    assert attacks["THRESHOLD_ATTACK"]["auc"] > 0.9
    assert attacks["THRESHOLD_ATTACK"]["advantage"] > 0.6


def test_members_and_non_members_from_one_distribution_are_not() -> None:
    rng = np.random.default_rng(1)
    y_in, y_out = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    attacks = run_attacks(probabilities(y_in, 2.0, rng), y_in,
                          probabilities(y_out, 2.0, rng), y_out)
    assert attacks["THRESHOLD_ATTACK"]["auc"] == pytest.approx(0.5, abs=0.08)
