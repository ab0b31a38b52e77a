"""The comparison runner's bookkeeping: variants, repeats combined, the table."""

import numpy as np
import pytest

from common.errors import ConfigError
from common.config import RunConfig
from simulations.compare import Variant, combine, parse_variants, table
from simulations.pooled import pooled_head


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


def test_variants_name_a_head_method_privacy_and_the_non_private_references() -> None:
    assert [v.name for v in parse_variants("local,pooled")] == ["local", "pooled"]
    variants = parse_variants("pooled,fedavg:ridge,fedavg:ridge+sgd+personalize,"
                              "fedprox:nodp,fedavg:ridge:nodp")
    assert variants == [Variant("pooled"), Variant("fedavg", head="ridge"),
                        Variant("fedavg", True, "ridge+sgd"),
                        Variant("fedprox", private=False),
                        Variant("fedavg", head="ridge", private=False)]
    assert [v.name for v in variants] == ["pooled", "fedavg:ridge",
                                          "fedavg:ridge+sgd+personalize", "fedprox:nodp",
                                          "fedavg:ridge:nodp"]
    cfg = variants[2].settings(RunConfig(rounds=3))
    assert (cfg.strategy, cfg.head_method, cfg.personalize, cfg.dp) == (
        "fedavg", "ridge+sgd", True, True)
    assert variants[4].settings(RunConfig()).dp is False
    for bad in ("fedavg:lasso", "fedavg:ridge:sgd", "fedavg:nodp:nodp"):
        with pytest.raises(ConfigError, match="unknown variant"):
            parse_variants(bad)


def test_pooled_head_is_logistic_regression_padded_for_absent_classes() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)) + np.repeat(np.eye(4)[:3] * 4, 40, axis=0)
    y = np.repeat([0, 1, 3], 40)  # class 2 has no training image
    kernel, bias = pooled_head(x, y, 4)
    assert kernel.shape == (4, 4) and bias[2] < -1e8
    assert np.mean(np.argmax(x @ kernel + bias, axis=1) == y) > 0.95


def test_repeats_combine_into_means_and_their_spread() -> None:
    combined = combine([run(0.4, 0.6), run(0.6, 0.7, unseen=None)])
    assert combined["repeats"] == 2
    assert combined["worst_site_accuracy"] == pytest.approx(0.5)
    assert combined["worst_site_accuracy_sd"] == pytest.approx(0.1)
    assert combined["unseen_domain_accuracy"] == pytest.approx(0.4)  # the one run that had it
    assert combined["per_site_accuracy"]["a"] == pytest.approx(0.5)
    assert combined["per_site_accuracy_sd"] == {"a": pytest.approx(0.1),
                                                "b": pytest.approx(0.0)}
    assert combined["rounds"][0]["accuracy"] == pytest.approx(0.55)
    assert combined["rounds"][0]["unseen_accuracy"] is None
    assert combine([run(0.4, 0.6)])["worst_site_accuracy_sd"] is None
    assert combine([run(0.4, 0.6)])["per_site_accuracy_sd"] is None


def test_the_table_has_a_row_per_variant_with_mean_and_spread_and_each_sites() -> None:
    text = table({"fedavg": combine([run(0.4, 0.6), run(0.6, 0.7)]),
                  "fedavg+personalize": combine([run(0.7, 0.8)])})
    lines = text.splitlines()
    assert len(lines) == 7 and "worst site" in lines[0]
    assert "0.500 ±0.100" in lines[1] and lines[2].startswith("fedavg+personalize")
    assert lines[4].split() == ["per", "site", "a", "b"]
    assert lines[5].split()[1:] == ["0.500", "±0.100", "0.800", "±0.000"]
    assert lines[6].split()[1:] == ["0.700", "0.900"]  # one run: no spread to state


def test_beside_the_pooled_reference_the_table_states_the_ratio_and_each_sites_gap() -> None:
    text = table({"pooled": combine([run(0.8, 0.85)]),
                  "fedavg:ridge": combine([run(0.6, 0.68), run(0.7, 0.68)])})
    lines = text.splitlines()
    assert lines[0].split()[-2:] == ["/", "pooled"]
    assert lines[1].endswith("100%") and lines[2].endswith("80%")
    assert "per site (vs pooled)" in lines[4]
    assert lines[5].split()[1:] == ["0.800", "0.900"]  # the reference has no gap to itself
    # a: 0.65 against 0.8 is 15 points behind; b: 0.71 against 0.9, 19 behind.
    assert lines[6].split()[1:] == ["0.650", "±0.050", "(-15.0)", "0.710", "±0.050", "(-19.0)"]


def test_personalized_variants_state_what_own_heads_gain_over_their_runs_global_heads(
        ) -> None:
    personal = [dict(run(0.5, 0.6), personal_gain_mean=gain, personal_gain_worst=worst)
                for gain, worst in ((0.05, 0.02), (0.07, 0.06))]
    text = table({"fedavg": combine([run(0.4, 0.6)]),
                  "fedavg+personalize": combine(personal)})
    lines = text.splitlines()
    assert lines[-2].startswith("own heads against each run's own global head")
    # Means over the runs with their spread: +6.0 ±1.0 points, the worst site +4.0 ±2.0.
    assert lines[-1].split() == ["fedavg+personalize", "+6.0", "±1.0", "+4.0", "±2.0"]
    assert "own heads" not in table({"fedavg": combine([run(0.4, 0.6)])})


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
