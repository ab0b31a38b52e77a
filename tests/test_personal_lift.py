"""benchmarks/personal_lift.py: the worst site's lift is taken per seed, against the run's own
global head and against plain FedAvg runs of the same partition, and averaged over seeds."""

from __future__ import annotations

import importlib.util

import pytest

from common.report import FinalFigures

from .conftest import PROJECT


def _module():
    spec = importlib.util.spec_from_file_location(
        "personal_lift", PROJECT / "benchmarks" / "personal_lift.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _figures(global_: dict[str, float], own: dict[str, float] | None = None) -> FinalFigures:
    used = own or global_
    return FinalFigures(
        accuracy=None, per_site_accuracy=used,
        mean_site_accuracy=sum(used.values()) / len(used), worst_site_accuracy=min(used.values()),
        site_accuracy_std=None, per_site_global_accuracy=global_,
        per_site_personal_accuracy=own, unseen_domain_accuracy=None, strategy="fedavg",
        personalized=own is not None, epsilon={}, delta=1e-5, target_epsilon=3.0, private=True)


def test_worst_site_lift_is_against_the_same_seeds_plain_runs_and_averaged_over_seeds() -> None:
    lift = _module()
    plain = {1: [_figures({"a": 0.40, "b": 0.60}), _figures({"a": 0.44, "b": 0.60})],
             2: [_figures({"a": 0.70, "b": 0.50})]}
    # Seed 1: own worst 0.50 against plain worst 0.42 (+8); seed 2: 0.52 against 0.50 (+2).
    personal = {"estimated": {
        1: [_figures({"a": 0.45, "b": 0.61}, {"a": 0.50, "b": 0.62})],
        2: [_figures({"a": 0.60, "b": 0.48}, {"a": 0.61, "b": 0.52})]}}
    summary = lift.summarize(plain, personal)
    assert summary["plain"]["worst_site"]["mean"] == pytest.approx((0.42 + 0.50) / 2)
    arm = summary["estimated"]
    assert arm["worst_lift_by_seed"] == pytest.approx({"1": 8.0, "2": 2.0})
    assert arm["gain_over_plain"]["worst_site"]["mean"] == pytest.approx(5.0)
    assert arm["gain_over_plain"]["worst_site"]["se"] == pytest.approx(3.0)  # sd 4.24 / sqrt 2
    # Against each run's own global head: 0.50 - 0.45 and 0.52 - 0.48.
    assert arm["gain_over_own_global"]["worst_site"]["mean"] == pytest.approx(4.5)
    assert arm["seeds_worst_lift_at_aim"] == 1
    assert "paired_worst_lift" not in summary  # one weighting: nothing to pair


def test_two_weightings_are_paired_by_seed_and_the_table_names_them() -> None:
    lift = _module()
    plain = {1: [_figures({"a": 0.40})], 2: [_figures({"a": 0.40})]}
    personal = {"estimated": {1: [_figures({"a": 0.40}, {"a": 0.46})],
                              2: [_figures({"a": 0.40}, {"a": 0.40})]},
                "fixed": {1: [_figures({"a": 0.40}, {"a": 0.42})],
                          2: [_figures({"a": 0.40}, {"a": 0.44})]}}
    summary = lift.summarize(plain, personal)
    assert summary["paired_worst_lift"]["mean"] == pytest.approx(0.0)  # +4 and -4
    assert summary["paired_worst_lift"]["se"] == pytest.approx(4.0)
    text = lift.table(summary)
    assert "estimated minus fixed, paired by seed: +0.0 ±4.0 points (2 seeds)" in text
    assert text.splitlines()[2].split()[:3] == ["estimated", "2", "2"]


def test_a_personal_arm_without_personal_figures_is_refused() -> None:
    lift = _module()
    with pytest.raises(ValueError, match="estimated: a run has no personal heads"):
        lift.summarize({}, {"estimated": {1: [_figures({"a": 0.4})]}})
