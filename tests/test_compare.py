"""The comparison runner's bookkeeping: variants, repeats combined, the table."""

import pytest

from common.errors import ConfigError
from simulations.compare import Variant, combine, parse_variants, table


def run(worst: float, mean: float, unseen: float | None = 0.4) -> dict:
    return {"mean_site_accuracy": mean, "worst_site_accuracy": worst,
            "site_accuracy_std": 0.1, "weighted_accuracy": mean,
            "unseen_domain_accuracy": unseen, "max_epsilon": 3.0,
            "per_site_accuracy": {"a": worst, "b": 2 * mean - worst},
            "rounds": [{"round": 1, "accuracy": mean - 0.1, "worst_site_accuracy": worst - 0.1,
                        "site_accuracy_std": 0.1, "unseen_accuracy": None,
                        "epsilon_max": 2.0}]}


def test_variants_parse_with_personalization_and_bad_ones_are_named() -> None:
    assert parse_variants("fedavg, fedadam+personalize") == [
        Variant("fedavg"), Variant("fedadam", personalize=True)]
    assert Variant("fedprox", True).name == "fedprox+personalize"
    with pytest.raises(ConfigError, match="'fedsgd'"):
        parse_variants("fedavg,fedsgd")
    with pytest.raises(ConfigError, match="distinct"):
        parse_variants("fedavg,fedavg")


def test_repeats_combine_into_means_and_their_spread() -> None:
    combined = combine([run(0.4, 0.6), run(0.6, 0.7, unseen=None)])
    assert combined["repeats"] == 2
    assert combined["worst_site_accuracy"] == pytest.approx(0.5)
    assert combined["worst_site_accuracy_sd"] == pytest.approx(0.1)
    assert combined["unseen_domain_accuracy"] == pytest.approx(0.4)  # the one run that had it
    assert combined["per_site_accuracy"]["a"] == pytest.approx(0.5)
    assert combined["rounds"][0]["accuracy"] == pytest.approx(0.55)
    assert combined["rounds"][0]["unseen_accuracy"] is None
    assert combine([run(0.4, 0.6)])["worst_site_accuracy_sd"] is None


def test_the_table_has_a_row_per_variant_with_mean_and_spread() -> None:
    text = table({"fedavg": combine([run(0.4, 0.6), run(0.6, 0.7)]),
                  "fedavg+personalize": combine([run(0.7, 0.8)])})
    lines = text.splitlines()
    assert len(lines) == 3 and "worst site" in lines[0]
    assert "0.500 ±0.100" in lines[1] and lines[2].startswith("fedavg+personalize")


def test_a_finished_run_is_reused_only_under_the_same_settings_that_matter_to_it() -> None:
    from common.config import RunConfig
    from simulations.compare import _same_run

    cfg = RunConfig(strategy="fedavg", out="x")
    stored = {**cfg.to_flower(), "classes": "a,b"}
    assert _same_run(cfg, stored)
    assert _same_run(cfg.replace(server_lr=0.5, proximal_mu=0.05), stored)  # not fedavg's
    assert not _same_run(cfg.replace(rounds=3), stored)
    adam = cfg.replace(strategy="fedadam")
    assert not _same_run(adam.replace(server_lr=0.5), {**adam.to_flower(), "classes": "a,b"})


def test_a_report_round_trips_through_its_json() -> None:
    import json

    from common.report import (BaseInfo, DataFigures, FinalFigures, Guarantees, RecordLevel,
                               Report, RoundRecord, Timing)

    report = Report(
        run_id="r", settings={"rounds": 2}, base=BaseInfo("imagenet-pypi", "f" * 64,
                                                          "block4_pool", 32, "p"),
        versions={"python": "3.11"},
        rounds=[RoundRecord(round=1, accuracy=0.5, sites_trained=["a"],
                            site_accuracy={"a": 0.5}, refused=["node 9"])],
        final=FinalFigures(accuracy=0.5, per_site_accuracy={"a": 0.5}, mean_site_accuracy=0.5,
                           worst_site_accuracy=0.5, site_accuracy_std=0.0,
                           per_site_global_accuracy={"a": 0.5},
                           per_site_personal_accuracy=None, unseen_domain_accuracy=None,
                           strategy="fedavg", personalized=False, epsilon={"a": 2.9},
                           delta=1e-5, target_epsilon=3.0, private=True),
        sites={"a": {"images": 10}}, privacy={"a": {"epsilon": 2.9}},
        guarantees=Guarantees(RecordLevel(True, "one image", 3.0, 1e-5, "rdp",
                                          ["head updates"], [], {"a": ["x 1 -> 2"]}),
                              {"private": False}, {"on": False}),
        data=DataFigures(0, {}), timing=Timing(1.0, 0.5))
    again = Report.from_json(json.loads(json.dumps(report.to_json())))
    assert again == report and again.max_epsilon == 2.9
