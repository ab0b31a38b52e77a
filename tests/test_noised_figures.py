"""Noised held-out figures carry their error wherever they are read: the mean over sites'
error, the model card, and `fedtl compare`'s table."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from common.model_card import card_markdown, model_card, write_model_card
from common.noised_figures import noised_figures
from common.privacy.release import NOISED_ACCURACY, noisy_accuracy
from common.report import Report, RoundRecord
from simulations.compare import combine, summarize, table

from .test_compare import run
from .test_model_card import a_report


def noised_report(held_out: dict[str, int], accuracy: dict[str, float],
                  mode: str = "noised") -> Report:
    report = a_report()
    guarantees = dataclasses.replace(report.guarantees, record_level=dataclasses.replace(
        report.guarantees.record_level, covers=["head updates", NOISED_ACCURACY]))
    rounds = [RoundRecord(round=1, site_accuracy=accuracy, site_held_out=held_out)]
    return dataclasses.replace(report, rounds=rounds, guarantees=guarantees,
                               settings={**report.settings, "metric-noise": 30.0,
                                         "site-metrics": mode})


def test_the_mean_over_sites_error_is_what_means_of_noised_figures_scatter_by() -> None:
    # Three sites noised, one exact (its figure adds no scatter but counts in the mean).
    accuracy = {"a": 0.8, "b": 0.6, "c": 0.7}
    held_out = {"a": 300, "b": 250, "c": 800}  # large enough that clipping to [0, 1] is rare
    figures = noised_figures(noised_report(held_out, accuracy))
    assert figures is not None and figures.sites == 3
    figures = dataclasses.replace(figures, sites=4)
    rng = np.random.default_rng(11)
    means = [(sum(noisy_accuracy(round(accuracy[s] * n), n, noise=30.0, rng=rng)
                  for s, n in held_out.items()) + 0.9) / 4 for _ in range(4000)]
    assert np.std(means) == pytest.approx(figures.mean_site_std, rel=0.08)
    # Without the division by all four sites (only the three noised ones) it would be 33 %
    # larger and fail the check above.
    assert figures.mean_site_std < figures.std["b"]


def test_exact_or_unrecorded_figures_have_no_error_to_read() -> None:
    assert noised_figures(a_report()) is None  # no round recorded held-out sizes
    exact = noised_report({"a": 100}, {"a": 0.8}, mode="exact")
    exact = dataclasses.replace(exact, guarantees=dataclasses.replace(
        exact.guarantees, record_level=dataclasses.replace(
            exact.guarantees.record_level, covers=["head updates"])))
    assert noised_figures(exact) is None


def test_the_model_card_of_a_run_with_noised_figures_gives_their_error(
        tmp_path: Path) -> None:
    report = noised_report({"a": 8, "b": 6}, {"a": 0.8, "b": 0.7})
    card = write_model_card(tmp_path, report)
    noised = card["held_out_accuracy"]["noised"]
    assert noised["held_out"] == {"a": 8, "b": 6} and noised["noise"] == 30.0
    text = card_markdown(json.loads((tmp_path / "model_card.json").read_text()))
    assert ("- Held-out figures are noised (std 30 images on correct and on total): each "
            "site's may be off by about ±50+ points (one std) on its 6-8 held-out images"
            ) in text
    assert "they are noise, not a measure of the model" in text


def test_a_card_with_exact_figures_says_nothing_of_noise() -> None:
    card = model_card(a_report())
    assert card["held_out_accuracy"]["noised"] is None
    assert "noised" not in card_markdown(card)


def test_the_comparison_table_gives_each_noised_variants_error_and_no_other() -> None:
    noised = summarize(noised_report({"a": 100, "b": 100}, {"a": 0.8, "b": 0.7}))
    std = noised["noised_mean_site_std"]  # sqrt(0.384^2 + 0.366^2) / 2 of 30 / 100 ...
    assert std == pytest.approx(np.hypot(0.3 * np.sqrt(1.64), 0.3 * np.sqrt(1.49)) / 2)
    text = table({"pooled": combine([run(0.8, 0.85)]),
                  "fedavg": combine([{**run(0.6, 0.68), "noised_mean_site_std": std},
                                     {**run(0.7, 0.68), "noised_mean_site_std": std}])})
    lines = text.splitlines()
    assert lines[-2].startswith("noised held-out figures: a run's mean site figure")
    assert lines[-1].split() == ["fedavg", f"±{100 * std:.1f}", "points"]
    assert "noised" not in table({"pooled": combine([run(0.8, 0.85)])})
