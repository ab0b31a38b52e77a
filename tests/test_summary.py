"""The summary a run prints says which head its per-site figures are of."""

import dataclasses

import pytest

from common.cli.main import _print_summary
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


@pytest.mark.parametrize("share, says", [
    (None, None),  # no one-shot round: no line
    (0.412, "one-shot head: 41% of its scores' spread is the release's noise\n"),
    (1.04, "one-shot head: 100% of its scores' spread is the release's noise (mostly noise: "
           "it scores near chance)\n"),
])
def test_a_one_shot_run_says_how_much_of_its_head_is_noise(
        capsys: pytest.CaptureFixture[str], share: float | None, says: str | None) -> None:
    report = a_report()
    rounds = [RoundRecord(round=1, noise_share=share), RoundRecord(round=2)]
    _print_summary(dataclasses.replace(report, rounds=rounds), "out")
    out = capsys.readouterr().out
    assert (says in out) if says else "one-shot head" not in out
