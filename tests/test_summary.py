"""The summary a run prints says which head its per-site figures are of, how much of a
one-shot head is noise, and how far noised figures may be off."""

import dataclasses

import numpy as np
import pytest

from common.cli.main import _print_summary
from common.privacy.release import NOISED_ACCURACY, noisy_accuracy, noisy_accuracy_std
from common.report import RoundRecord

from .test_model_card import a_report


@pytest.mark.parametrize("personalized, personal, says", [
    (False, None, "per site (global head)"),
    (True, {"a": 0.9}, "per site (own heads)"),
    (True, {"a": 0.9}, "per site (own heads where released (1 of 2), else global)"),
    # Joint personal heads with noised figures: the sites released none about them.
    (True, None, "per site (global head; no site released its own head's figures)"),
])
def test_the_per_site_line_names_the_heads_its_figures_are_of(
        capsys: pytest.CaptureFixture[str], personalized: bool,
        personal: dict[str, float] | None, says: str) -> None:
    report = a_report()
    sites = {"a": 0.9, "b": 0.7} if "1 of 2" in says else {"a": 0.9}
    final = dataclasses.replace(report.final, personalized=personalized,
                                per_site_personal_accuracy=personal, per_site_accuracy=sites)
    _print_summary(dataclasses.replace(report, final=final), "out")
    assert says in capsys.readouterr().out


def test_the_final_line_gives_the_global_heads_mean_over_sites_beside_the_weighted_figure(
        capsys: pytest.CaptureFixture[str]) -> None:
    _print_summary(a_report(), "out")  # sites a 0.8 and b 0.7; Flower's weighted figure 0.8
    assert ("final held-out accuracy (global head): mean over sites 0.7500, weighted by "
            "held-out images 0.8000") in capsys.readouterr().out


@pytest.mark.parametrize("share, penalty, says", [
    (None, None, None),  # no one-shot round: no line
    (0.412, 4.372, "one-shot head: 41% of its scores' spread is the release's noise, ridge "
     "penalty 4.37\n"),
    (1.04, None, "one-shot head: 100% of its scores' spread is the release's noise (mostly "
     "noise: it scores near chance)\n"),  # a report from before the penalty was recorded
])
def test_a_one_shot_run_says_how_much_of_its_head_is_noise_and_its_penalty(
        capsys: pytest.CaptureFixture[str], share: float | None, penalty: float | None,
        says: str | None) -> None:
    report = a_report()
    rounds = [RoundRecord(round=1, noise_share=share, ridge_lambda=penalty),
              RoundRecord(round=2)]
    _print_summary(dataclasses.replace(report, rounds=rounds), "out")
    out = capsys.readouterr().out
    assert (says in out) if says else "one-shot head" not in out


def test_a_noised_figures_std_is_what_noised_figures_scatter_by() -> None:
    rng = np.random.default_rng(5)
    for accuracy, total in ((0.7, 1000), (0.3, 400)):
        draws = [noisy_accuracy(int(accuracy * total), total, noise=30.0, rng=rng)
                 for _ in range(4000)]
        assert np.std(draws) == pytest.approx(noisy_accuracy_std(accuracy, total, 30.0),
                                              rel=0.08)


@pytest.mark.parametrize("held_out, says", [
    ({"a": 1000, "b": 400}, "held-out figures are noised (std 30 images on correct and on "
     "total): each site's may be off by about ±4-9 points (one std) on its 400-1000 held-out "
     "images, the mean over sites by about ±5\n"),
    ({"a": 150, "b": 150}, "off by about ±24-26 points (one std) on its 150 held-out images, "
     "the mean over sites by about ±18; "
     "at that size they say little about the model (larger held-out splits, --holdout, "
     "would help)\n"),
    ({"a": 8, "b": 6}, "off by about ±50+ points (one std) on its 6-8 held-out images, the "
     "mean over sites by about ±50+; at that "
     "size they are noise, not a measure of the model"),
])
def test_noised_figures_say_how_far_off_they_may_be(
        capsys: pytest.CaptureFixture[str], held_out: dict[str, int], says: str) -> None:
    report = a_report()
    guarantees = dataclasses.replace(report.guarantees, record_level=dataclasses.replace(
        report.guarantees.record_level, covers=["head updates", NOISED_ACCURACY]))
    rounds = [RoundRecord(round=1, site_accuracy={"a": 0.8, "b": 0.7}, site_held_out=held_out)]
    _print_summary(dataclasses.replace(report, rounds=rounds, guarantees=guarantees,
                                       settings={**report.settings, "metric-noise": 30.0,
                                                 "site-metrics": "noised"}), "out")
    out = capsys.readouterr().out
    assert says in out
    assert ("larger held-out splits" in out) is (min(held_out.values()) < 400)


def test_exact_figures_print_no_noise_line(capsys: pytest.CaptureFixture[str]) -> None:
    rounds = [RoundRecord(round=1, site_accuracy={"a": 0.8}, site_held_out={"a": 8})]
    _print_summary(dataclasses.replace(a_report(), rounds=rounds), "out")
    assert "held-out figures are noised" not in capsys.readouterr().out


def test_only_the_sites_whose_policy_noised_their_figures_are_said_to_be_noised(
        capsys: pytest.CaptureFixture[str]) -> None:
    report = a_report()
    record_level = dataclasses.replace(
        report.guarantees.record_level, covers=["head updates", NOISED_ACCURACY],
        tightened_by_sites={"b": ["target-epsilon 3.0 -> 2.0", "site-metrics exact -> noised"]})
    rounds = [RoundRecord(round=1, site_accuracy={"a": 0.8, "b": 0.7},
                          site_held_out={"a": 10, "b": 1000})]
    _print_summary(dataclasses.replace(
        report, rounds=rounds,
        guarantees=dataclasses.replace(report.guarantees, record_level=record_level),
        settings={**report.settings, "metric-noise": 30.0, "site-metrics": "exact"}), "out")
    assert ("the held-out figures of 1 of 2 sites are noised (std 30 images on correct and on "
            "total): each site's may be off by about ±4 points (one std) on its 1000 held-out "
            "images, the mean over sites by about ±2\n") in capsys.readouterr().out


@pytest.mark.parametrize("personal, says", [
    (None, None),  # no own heads: nothing to set against the global head
    # One site: its own lift is the average; no worst site to name.
    ({"a": 0.9}, "own heads against the global head on the same sites: 1 higher, 0 lower, "
                 "+10.0 points on average\n"),
    # The worst site may change: a's own head (0.70) against b's global head (0.70).
    ({"a": 0.7, "b": 0.72}, "own heads against the global head on the same sites: 1 higher, "
                            "1 lower, -4.0 points on average, the worst site +0.0 (0.700 "
                            "against 0.700)\n"),
    ({"a": 0.85, "b": 0.76}, "2 higher, 0 lower, +5.5 points on average, the worst site "
                             "+6.0 (0.760 against 0.700)\n"),
    ({"a": 0.7, "b": 0.6}, "own heads against the global head on the same sites: 0 higher, "
                           "2 lower, -10.0 points on average, the worst site -10.0 (0.600 "
                           "against 0.700); here the global head is the better model for "
                           "most sites"),
])
def test_own_heads_are_set_against_the_global_head_on_the_same_sites(
        capsys: pytest.CaptureFixture[str], personal: dict[str, float] | None,
        says: str | None) -> None:
    report = a_report()  # the global head: a 0.8, b 0.7
    final = dataclasses.replace(report.final, personalized=personal is not None,
                                per_site_personal_accuracy=personal,
                                per_site_accuracy={**report.final.per_site_global_accuracy,
                                                   **(personal or {})})
    _print_summary(dataclasses.replace(report, final=final), "out")
    out = capsys.readouterr().out
    assert (says in out) if says else "own heads against" not in out
