"""Simulated scenarios: which images and which shift each site gets, and the unseen site."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import RunConfig
from common.errors import ConfigError, DataError
from common.data.scenario import UNSEEN, build_scenario


def items(site) -> set[str]:  # type: ignore[no-untyped-def]
    return set(site.listing.items)


def test_domain_sites_each_see_their_own_shift_and_the_unseen_site_is_disjoint() -> None:
    cfg = RunConfig(dataset="digits", clients=4, partition="domain", alpha=0.5, seed=1)
    scenario = build_scenario(cfg)
    assert len(scenario.sites) == 4 and scenario.unseen is not None
    assert len({s.shift.name for s in scenario.sites if s.shift}) == 4
    assert scenario.unseen.shift is not None
    assert scenario.unseen.shift.kind not in {s.shift.kind for s in scenario.sites if s.shift}
    everything = [items(s) for s in scenario.sites] + [items(scenario.unseen)]
    assert sum(len(x) for x in everything) == len(set().union(*everything)) == 1797
    again = build_scenario(cfg)
    assert [items(s) for s in again.sites] == [items(s) for s in scenario.sites]
    assert UNSEEN in scenario.describe()


def test_iid_and_dirichlet_scenarios_have_no_shift_and_no_unseen_site() -> None:
    for partition in ("iid", "dirichlet"):
        scenario = build_scenario(RunConfig(dataset="digits", clients=3, partition=partition))
        assert scenario.unseen is None and all(s.shift is None for s in scenario.sites)


def test_label_skew_in_a_domain_scenario_follows_alpha() -> None:
    def top_share(alpha: float) -> float:
        scenario = build_scenario(RunConfig(dataset="digits", clients=4, partition="domain",
                                            alpha=alpha))
        return float(np.mean([np.bincount(s.listing.labels).max() / len(s.listing)
                              for s in scenario.sites]))

    assert top_share(0.1) > 2 * top_share(0.0)


def write_site(root: Path, classes: list[str], per_class: int = 3) -> None:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(root / c / f"{i}.png")


def test_folders_scenario_makes_each_folder_a_site(tmp_path: Path) -> None:
    for site in ("hospital-a", "hospital-b"):
        write_site(tmp_path / site, ["cat", "dog"])
    scenario = build_scenario(RunConfig(dataset=str(tmp_path), clients=2, partition="folders"))
    assert [s.name for s in scenario.sites] == ["hospital-a", "hospital-b"]
    assert scenario.classes == ("cat", "dog") and scenario.unseen is None


def test_folders_with_mismatched_classes_name_the_site(tmp_path: Path) -> None:
    write_site(tmp_path / "a", ["cat", "dog"])
    write_site(tmp_path / "b", ["cat", "cow"])
    with pytest.raises(DataError, match=r"site folder .*b.*missing: \['dog'\]"):
        build_scenario(RunConfig(dataset=str(tmp_path), clients=2, partition="folders"))


def test_folder_count_must_match_clients_and_the_message_says_how(tmp_path: Path) -> None:
    write_site(tmp_path / "a", ["cat", "dog"])
    with pytest.raises(DataError, match="--clients 1"):
        build_scenario(RunConfig(dataset=str(tmp_path), clients=3, partition="folders"))
    with pytest.raises(DataError, match="does not exist"):
        build_scenario(RunConfig(dataset=str(tmp_path / "nope"), partition="folders"))


def test_skew_settings_that_do_not_apply_are_refused() -> None:
    with pytest.raises(ConfigError, match="iid"):
        RunConfig(partition="iid", alpha=0.3)
    with pytest.raises(ConfigError, match="folders"):
        RunConfig(partition="folders", size_alpha=0.3)
    assert RunConfig(partition="dirichlet").label_alpha == 0.5
    assert RunConfig(partition="domain").label_alpha == 0.0


def test_an_unseen_site_folder_is_kept_out_of_training_and_scored_whole(tmp_path: Path) -> None:
    for site in ("art", "photo", "sketch"):
        write_site(tmp_path / site, ["cat", "dog"])
    scenario = build_scenario(RunConfig(dataset=str(tmp_path), clients=2, partition="folders",
                                        unseen_site="sketch"))
    assert [s.name for s in scenario.sites] == ["art", "photo"]
    assert scenario.unseen is not None and scenario.unseen.name == "sketch"
    assert len(scenario.unseen.listing) == 6 and scenario.unseen.shift is None
    assert scenario.describe()["sketch"]["trains"] is False


def test_an_unseen_site_must_be_one_of_the_folders_and_of_a_folders_run(tmp_path: Path) -> None:
    for site in ("art", "photo"):
        write_site(tmp_path / site, ["cat", "dog"])
    with pytest.raises(DataError, match=r"'cartoon' is not a site folder .*\['art', 'photo'\]"):
        build_scenario(RunConfig(dataset=str(tmp_path), clients=1, partition="folders",
                                 unseen_site="cartoon"))
    with pytest.raises(DataError, match="1 of them training.*--clients 1"):
        build_scenario(RunConfig(dataset=str(tmp_path), clients=2, partition="folders",
                                 unseen_site="art"))
    with pytest.raises(ConfigError, match="unseen-site"):
        RunConfig(partition="domain", unseen_site="art")
