"""Partitioners (Flower Datasets' underneath): sizes, label proportions, coverage, seeds."""

import numpy as np
import pytest

from common.errors import ConfigError
from common.data.partition import PartitionSpec, holdout_split, partition, quantity_sizes

LABELS = np.repeat(np.arange(10), 100)


def covers_everything_once(parts: list[np.ndarray], n: int) -> bool:
    joined = np.concatenate(parts)
    return sorted(joined.tolist()) == list(range(n))


def top_class_share(parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))


def test_iid_shares_are_disjoint_cover_everything_and_differ_by_at_most_one() -> None:
    labels = np.arange(103) % 7
    parts = partition(labels, PartitionSpec(5, seed=1))
    assert covers_everything_once(parts, 103)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_shares_have_about_the_overall_label_mix() -> None:
    assert top_class_share(partition(LABELS, PartitionSpec(4, seed=0))) < 0.16


def test_every_partitioner_is_deterministic_in_the_seed() -> None:
    for kind in (dict(), dict(label_alpha=0.3), dict(size_alpha=0.5),
                 dict(label_alpha=0.3, size_alpha=0.5)):
        a = partition(LABELS, PartitionSpec(4, seed=7, **kind))
        b = partition(LABELS, PartitionSpec(4, seed=7, **kind))
        c = partition(LABELS, PartitionSpec(4, seed=8, **kind))
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), kind
        assert not all(np.array_equal(x, y) for x, y in zip(a, c)), kind


def test_label_skew_covers_everything_once_and_respects_the_minimum() -> None:
    parts = partition(LABELS, PartitionSpec(5, label_alpha=0.5, seed=0, min_per_site=20))
    assert covers_everything_once(parts, 1000)
    assert min(len(p) for p in parts) >= 20


def test_small_alpha_skews_labels_far_more_than_large_alpha() -> None:
    assert top_class_share(partition(LABELS, PartitionSpec(5, label_alpha=0.1, seed=3))) > 0.3
    assert top_class_share(partition(LABELS, PartitionSpec(5, label_alpha=100.0, seed=3))) < 0.16


def test_quantity_skew_gives_sites_very_different_sizes_with_even_labels() -> None:
    parts = partition(LABELS, PartitionSpec(5, size_alpha=0.3, seed=2))
    sizes = sorted(len(p) for p in parts)
    assert covers_everything_once(parts, 1000)
    assert sizes[-1] > 4 * sizes[0] and sizes[0] >= 10
    big = max(parts, key=len)
    assert np.bincount(LABELS[big], minlength=10).max() / len(big) < 0.16


def test_quantity_and_label_skew_combine_at_the_drawn_sizes() -> None:
    spec = PartitionSpec(5, label_alpha=0.2, size_alpha=0.5, seed=4)
    parts = partition(LABELS, spec)
    assert [len(p) for p in parts] == quantity_sizes(1000, 5, 0.5, 4)
    assert covers_everything_once(parts, 1000)
    assert top_class_share(parts) > 0.3


def test_quantity_sizes_sum_to_the_items_and_keep_the_minimum() -> None:
    sizes = quantity_sizes(500, 8, 0.1, seed=0, min_per_site=12)
    assert sum(sizes) == 500 and min(sizes) >= 12
    assert quantity_sizes(500, 8, 0.1, seed=0, min_per_site=12) == sizes


def test_holdout_split_is_disjoint_and_keeps_both_sides_non_empty() -> None:
    train, test = holdout_split(10, 0.2, seed=0)
    assert len(test) == 2 and len(train) == 8
    assert not set(train) & set(test)
    train, test = holdout_split(2, 0.01, seed=0)
    assert len(train) == 1 and len(test) == 1


def test_bad_partition_requests_are_refused_with_the_setting_named() -> None:
    with pytest.raises(ConfigError, match="--clients"):
        partition(np.zeros(30, int), PartitionSpec(5, label_alpha=0.5))
    with pytest.raises(ConfigError, match="--clients"):
        partition(np.zeros(4, int), PartitionSpec(5))
    # An image each would leave a site nothing to hold out (or nothing to train on).
    with pytest.raises(ConfigError, match="--clients 5 sites 2 images each"):
        partition(np.zeros(9, int), PartitionSpec(5))
    assert [len(p) for p in partition(np.zeros(10, int), PartitionSpec(5))] == [2] * 5
    assert [len(p) for p in partition(np.zeros(12, int), PartitionSpec(2))] == [6, 6]
    with pytest.raises(ConfigError, match="alpha"):
        PartitionSpec(2, label_alpha=-1.0)
    with pytest.raises(ConfigError, match="size-alpha"):
        quantity_sizes(100, 2, 0.0, seed=0)
    with pytest.raises(ConfigError, match="fraction"):
        holdout_split(10, 1.0, seed=0)


def test_a_site_left_with_one_readable_image_is_named_in_the_error(monkeypatch) -> None:
    # E.g. --skip-bad-images passing over all but one of a site's images.
    from common import site
    from common.config import RunConfig
    from common.features.extraction import SiteFeatures

    one = SiteFeatures(features=np.zeros((1, 4), np.float32), views=np.zeros((0, 1, 4)),
                       labels=np.zeros(1, np.int64), skipped=("b/y/0.png",), seconds=0.0,
                       extracted=0)
    monkeypatch.setattr(site, "site_features", lambda *args, **kwargs: one)
    with pytest.raises(ConfigError, match="site hospital-b: a site needs at least 2 images"):
        site.load_site(RunConfig(), "hospital-b", None, None, None, (0,))
