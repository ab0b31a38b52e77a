"""The model card beside a saved model says what it is, what it expects and what privacy it
carries, read from the run's report."""

import dataclasses
from pathlib import Path

import pytest

from common.model_card import (JSON_FILE, MARKDOWN_FILE, card_markdown, model_card,
                               read_model_card, write_model_card)
from common.report import (BaseInfo, DataFigures, FinalFigures, Guarantees, RecordLevel,
                           Report, Timing)


def a_report(private: bool = True) -> Report:
    return Report(
        run_id="run-7", settings={"classes": "cat,dog", "head-width": 0},
        base=BaseInfo("imagenet-pypi", "ab" * 32, "block4_pool", 32, "vgg16-caffe"),
        versions={"fedtl": "0.1", "tensorflow": "2.21.0"}, rounds=[],
        final=FinalFigures(accuracy=0.8, per_site_accuracy={"a": 0.8}, mean_site_accuracy=0.8,
                           worst_site_accuracy=0.7, site_accuracy_std=0.1,
                           per_site_global_accuracy={"a": 0.8, "b": 0.7},
                           per_site_personal_accuracy=None, unseen_domain_accuracy=None,
                           strategy="fedavg", personalized=False,
                           epsilon={"a": 2.9, "b": 3.0} if private else {}, delta=1e-5,
                           target_epsilon=3.0 if private else None, private=private),
        sites={"a": {"images": 100}, "b": {}}, privacy={},
        guarantees=Guarantees(RecordLevel(private, "one image", 3.0 if private else None,
                                          1e-5, "rdp", ["head updates"], ["held-out accuracy"],
                                          {}), {"private": False}, {"on": False}),
        data=DataFigures(0, {}), timing=Timing(1.0, 0.5))


def test_the_card_names_classes_input_base_privacy_and_data(tmp_path: Path) -> None:
    card = write_model_card(tmp_path, a_report())
    assert read_model_card(tmp_path / "model.keras") == card
    assert card["classes"] == ["cat", "dog"] and card["input"]["image_size"] == 32
    assert card["base"]["fingerprint"] == "ab" * 32
    record = card["privacy"]["record_level"]
    assert record["epsilon_per_site"] == {"a": 2.9, "b": 3.0} and record["delta"] == 1e-5
    assert card["data"]["images_per_site"] == {"a": 100, "b": None}
    text = (tmp_path / MARKDOWN_FILE).read_text()
    assert "epsilon at most 3" in text and "cat, dog" in text and "held-out accuracy" in text
    assert (tmp_path / JSON_FILE).stat().st_mode & 0o777 == 0o644


def test_a_model_without_dp_says_so_on_its_card() -> None:
    assert "**not private**" in card_markdown(model_card(a_report(private=False)))


def test_a_centred_runs_card_says_its_head_expects_centred_features() -> None:
    plain = model_card(a_report())
    centred = model_card(dataclasses.replace(
        a_report(), settings={**a_report().settings, "feature-centring": "site"}))
    assert not plain["centred_features"] and centred["centred_features"]
    assert "centred on the images' own mean" in card_markdown(centred)
    assert "centred" not in card_markdown(plain)


def test_no_card_or_a_damaged_one_is_none(tmp_path: Path) -> None:
    assert read_model_card(tmp_path / "model.keras") is None
    (tmp_path / JSON_FILE).write_text("{broken")
    assert read_model_card(tmp_path / "model.keras") is None


def test_the_card_gives_the_saved_global_heads_accuracy_not_the_personal_heads() -> None:
    report = a_report()
    report = dataclasses.replace(report, final=dataclasses.replace(
        report.final, personalized=True, per_site_personal_accuracy={"a": 0.95, "b": 0.9},
        per_site_accuracy={"a": 0.95, "b": 0.9}, mean_site_accuracy=0.925,
        worst_site_accuracy=0.9))
    card = model_card(report)
    assert card["held_out_accuracy"] == {
        "mean_site": pytest.approx(0.75), "weighted_by_images": 0.8, "worst_site": 0.7,
        "per_site": {"a": 0.8, "b": 0.7}, "unseen_site": None, "noised": None}
    assert ("mean over sites 0.750, worst site 0.700, weighted by the sites' held-out images "
            "0.800") in card_markdown(card)
