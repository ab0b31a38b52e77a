"""benchmarks/carve_validation.py: a validation federation holds only the images the product
trains on, never a held-out one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from common.config import RunConfig
from common.data.images import list_dataset
from common.data.partition import holdout_split
from common.data.scenario import build_scenario

from .conftest import PROJECT, write_image_folder


def _carve_module():
    spec = importlib.util.spec_from_file_location(
        "carve_validation", PROJECT / "benchmarks" / "carve_validation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_validation_federation_links_each_sites_training_images_and_no_held_out_one(
        tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    write_image_folder(sites / "photo", {"a": 7, "b": 5}, seed=1)
    write_image_folder(sites / "sketch", {"a": 4, "b": 9}, seed=2)
    counts = _carve_module().carve(sites, tmp_path / "val")
    assert counts == {"photo": 10, "sketch": 10}  # 12 and 13 images, 2 and 3 held out
    # The folder sites the product builds, and the split it makes for each of them.
    scenario = build_scenario(RunConfig(dataset=str(sites), partition="folders", clients=2))
    for site in scenario.sites:
        assert site.holdout_seed == (0,)  # the seed the carve assumes
        train, held = holdout_split(len(site.listing.labels), 0.2, site.holdout_seed)
        linked = set(list_dataset(str(tmp_path / "val" / site.name), 0).items)
        assert linked == {site.listing.items[i] for i in train}
        assert not linked & {site.listing.items[i] for i in held}
