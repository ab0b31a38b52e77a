"""The arithmetic of benchmarks/penalty_replay.py: what it says of a rule against the grid."""

import numpy as np
import pytest

from benchmarks.penalty_replay import mean_site, summarize


def row(federation: str, epsilon: float, grid: dict, fixed: float, rule: float,
        penalty: float) -> dict:
    return {"seed": 0, "federation": federation, "epsilon": epsilon, "draw": 0,
            "pooled": 0.7, "grid": grid, "fixed": fixed, "rule": {"11": rule},
            "rule_penalty": {"11": penalty}}


def test_a_rule_is_scored_against_the_best_grid_penalty_of_each_cell() -> None:
    rows = [
        row("5x480", 3.0, {"2": 0.70, "8": 0.80}, 0.80, 0.79, 5.0),
        row("5x480", 3.0, {"2": 0.72, "8": 0.78}, 0.78, 0.81, 5.2),  # a second draw
        row("2x240", 20.0, {"2": 0.95, "8": 0.90}, 0.90, 0.94, 1.5),
    ]
    summary = summarize(rows, ["11"])
    cells = {(c["federation"], c["epsilon"]): c for c in summary["cells"]}
    first = cells[("5x480", 3.0)]
    assert first["best_penalty"] == 8.0 and first["best"] == pytest.approx(0.79)
    assert first["rule"]["11"] == pytest.approx(0.80)  # over the draws
    assert first["rule_penalty"]["11"] == pytest.approx(5.1)
    assert cells[("2x240", 20.0)]["best_penalty"] == 2.0
    assert summary["best_on_grid"] == pytest.approx((0.79 + 0.95) / 2)
    # The fixed penalty loses 5 points where the best is small; the rule 1 at most.
    assert summary["overall"]["fixed"]["worst_loss"] == pytest.approx(-0.05)
    assert summary["overall"]["11"]["worst_loss"] == pytest.approx(-0.01)
    assert summary["overall"]["11"]["mean"] == pytest.approx((0.80 + 0.94) / 2)


def test_the_replay_scores_the_mean_of_the_sites_held_out_accuracies() -> None:
    weights, bias = np.eye(2), np.zeros(2)
    first = (None, None, np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))  # 2 of 2
    second = (None, None, np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]),
              np.array([0, 1, 1, 1]))  # 3 of 4
    assert mean_site(weights, bias, [first, second]) == pytest.approx((1.0 + 0.75) / 2)
