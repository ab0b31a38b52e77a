"""The feature store and the augmentation views, on small arrays (no TensorFlow)."""

from pathlib import Path

import numpy as np

import common.features.cache
from common.features.augment import augmented
from common.features.cache import DigestMemo, FeatureCache


def _digest(i: int) -> str:
    return f"{i:064x}"


def test_rows_written_by_one_cache_are_read_by_the_next(tmp_path: Path) -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    FeatureCache(tmp_path).add([_digest(i) for i in range(3)], rows, bad=[_digest(9)])
    again = FeatureCache(tmp_path)
    np.testing.assert_array_equal(again.get([_digest(2), _digest(0)]), rows[[2, 0]])
    assert _digest(9) in again.bad and _digest(9) not in again


def test_many_shards_are_merged_without_losing_rows(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(common.features.cache, "MAX_SHARDS", 3)
    cache = FeatureCache(tmp_path)
    for i in range(7):
        cache.add([_digest(i)], np.full((1, 2), i, np.float32))
    assert len(list(tmp_path.glob("shard-*.npz"))) <= 3
    again = FeatureCache(tmp_path)
    np.testing.assert_array_equal(again.get([_digest(i) for i in range(7)])[:, 0], np.arange(7))


def test_a_memory_cache_touches_no_disk(tmp_path: Path) -> None:
    cache = FeatureCache(None)
    cache.add([_digest(1)], np.ones((1, 2), np.float32))
    assert _digest(1) in cache and not list(tmp_path.iterdir())


def test_digest_memo_remembers_by_item_and_stamp(tmp_path: Path) -> None:
    memo = DigestMemo(tmp_path / "memo.npz")
    memo.save(["a/1.jpg"], ["10:5"], [_digest(1)])
    assert DigestMemo(tmp_path / "memo.npz").known == {("a/1.jpg", "10:5"): _digest(1)}
    (tmp_path / "memo.npz").write_bytes(b"garbage")
    assert DigestMemo(tmp_path / "memo.npz").known == {}


def test_augmented_view_zero_is_the_image_and_other_views_are_deterministic() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    digests = [_digest(i + 1) for i in range(3)]
    assert augmented(pixels, digests, 0) is pixels
    one, again = augmented(pixels, digests, 1), augmented(pixels, digests, 1)
    np.testing.assert_array_equal(one, again)
    assert one.shape == pixels.shape and one.dtype == np.uint8
    assert not np.array_equal(one, augmented(pixels, digests, 2))
    # A view only moves and mirrors pixels: the colour histogram barely changes.
    assert abs(float(one.mean()) - float(pixels.mean())) < 10


def test_a_process_builds_one_base_per_spec_whatever_folder_each_caller_keeps_stats_in(
        tmp_path: Path) -> None:
    # Sites served by one process (a test module, a simulation worker) share the base;
    # the first folder named serves its one build.
    from common.features.extraction import LazyBase
    from common.features.model import BaseSpec
    from common.features.weights import PYPI_SOURCE

    spec = BaseSpec(weights=PYPI_SOURCE, image_size=24, base_layer="block1_pool")
    first = LazyBase.shared(spec, tmp_path / "site-a")
    assert LazyBase.shared(spec, tmp_path / "site-b") is first
    assert first.stats_cache == tmp_path / "site-a"
    other = LazyBase.shared(BaseSpec(weights=PYPI_SOURCE, image_size=24,
                                     base_layer="block2_pool"), tmp_path / "site-b")
    assert other is not first and other.stats_cache == tmp_path / "site-b"
