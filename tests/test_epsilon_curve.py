"""benchmarks/epsilon_curve.py: each seed's runs are taken over that seed's own pooled model,
and the epsilon that first reaches the aim is interpolated in log epsilon."""

from __future__ import annotations

import math

import pytest

from benchmarks.epsilon_curve import epsilon_for_aim, parse_arm, summarize, table
from common.report import FinalFigures


def _figures(mean: float, worst: float) -> FinalFigures:
    return FinalFigures(
        accuracy=None, per_site_accuracy={"a": worst, "b": 2 * mean - worst},
        mean_site_accuracy=mean, worst_site_accuracy=worst, site_accuracy_std=None,
        per_site_global_accuracy={}, per_site_personal_accuracy=None,
        unseen_domain_accuracy=None, strategy="fedavg", personalized=False, epsilon={},
        delta=1e-5, target_epsilon=3.0, private=True)


def test_an_arm_is_a_name_a_variant_and_its_own_compare_options() -> None:
    assert parse_arm("dist=fedavg:ridge --sums-noise distributed --ridge-lambda 2") == (
        "dist", "fedavg:ridge", ["--sums-noise", "distributed", "--ridge-lambda", "2"])
    assert parse_arm("local=fedavg:ridge+sgd") == ("local", "fedavg:ridge+sgd", [])
    for bad in ("fedavg:ridge", "=fedavg", "x=", "x=--target-epsilon 3", "../x=fedavg",
                "a b=fedavg"):
        with pytest.raises(ValueError, match="NAME=VARIANT"):
            parse_arm(bad)


def test_the_aim_is_reached_between_the_last_point_below_and_the_first_above_in_log_epsilon(
) -> None:
    # 0.85 at 4 and 0.95 at 16: half-way in log epsilon is 8.
    assert epsilon_for_aim({1: 0.7, 4: 0.85, 16: 0.95}, 0.90) == pytest.approx(8.0)
    assert epsilon_for_aim({2: 0.91, 8: 0.95}, 0.90) == 2  # already there at the first
    assert epsilon_for_aim({1: 0.5, 3: 0.8}, 0.90) is None
    # Not monotone: the first crossing counts, not a later dip.
    reached = epsilon_for_aim({1: 0.8, 2: 0.92, 4: 0.89, 8: 0.95}, 0.90)
    assert reached == pytest.approx(math.exp(math.log(1) + (0.1 / 0.12) * math.log(2)))


def test_each_seeds_ratio_is_over_its_own_pooled_model_and_the_spread_is_over_seeds() -> None:
    pooled = {0: 0.70, 1: 0.80}
    runs = {"local": {3.0: {0: [_figures(0.56, 0.5), _figures(0.58, 0.5)],  # 0.57 / 0.70
                            1: [_figures(0.64, 0.6)]},                      # 0.64 / 0.80
                      10.0: {0: [_figures(0.70, 0.6)], 1: [_figures(0.80, 0.7)]}}}
    summary = summarize(pooled, runs)
    row = summary["local"]["by_epsilon"]["3"]
    ratios = [0.57 / 0.70, 0.64 / 0.80]
    assert row["ratio_to_pooled"]["mean"] == pytest.approx(sum(ratios) / 2)
    assert row["ratio_to_pooled"]["se"] == pytest.approx(abs(ratios[0] - ratios[1]) / 2)
    assert row["mean_site"]["mean"] == pytest.approx((0.57 + 0.64) / 2)
    assert (row["seeds"], row["runs"]) == (2, 3)
    # 0.807 at 3, 1.0 at 10: 90 % is crossed between them.
    reached = summary["local"]["epsilon_for_aim"]
    assert 3 < reached < 10
    text = table(summary, pooled)
    assert "80.7 % ±0.7" in text and f"from epsilon {reached:.1f} per site" in text


def test_one_seed_spreads_over_its_runs_and_a_seed_without_pooled_model_is_refused() -> None:
    runs = {"a": {3.0: {0: [_figures(0.6, 0.5), _figures(0.7, 0.6)]}}}
    row = summarize({0: 0.8}, runs)["a"]["by_epsilon"]["3"]
    assert row["ratio_to_pooled"]["mean"] == pytest.approx(0.65 / 0.8)
    assert row["ratio_to_pooled"]["se"] == pytest.approx(0.05 / 0.8)  # sd 0.0707 / sqrt 2
    with pytest.raises(ValueError, match="no pooled model for seed"):
        summarize({}, runs)
    assert "not reached" in table(summarize({0: 0.8}, runs), {0: 0.8})
