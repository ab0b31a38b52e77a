"""Partitioners: sizes, coverage, label skew and determinism by seed."""

import numpy as np
import pytest

from common.errors import ConfigError
from common.partition import dirichlet_partition, holdout_split, iid_partition


def test_iid_shares_are_disjoint_cover_everything_and_differ_by_at_most_one() -> None:
    parts = iid_partition(103, 5, seed=1)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(103))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_partitions_are_deterministic_in_the_seed() -> None:
    labels = np.repeat(np.arange(10), 50)
    a = dirichlet_partition(labels, 4, 0.3, seed=7)
    b = dirichlet_partition(labels, 4, 0.3, seed=7)
    c = dirichlet_partition(labels, 4, 0.3, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert [p.tolist() for p in iid_partition(50, 3, 2)] == [
        p.tolist() for p in iid_partition(50, 3, 2)]


def test_dirichlet_covers_everything_once_and_respects_the_minimum() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = dirichlet_partition(labels, 5, 0.5, seed=0, min_per_site=20)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(1000))
    assert min(len(p) for p in parts) >= 20


def test_small_alpha_skews_labels_far_more_than_large_alpha() -> None:
    labels = np.repeat(np.arange(10), 200)

    def mean_top_class_share(alpha: float) -> float:
        parts = dirichlet_partition(labels, 5, alpha, seed=3)
        return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p)
                              for p in parts]))

    assert mean_top_class_share(0.1) > 0.3
    assert mean_top_class_share(100.0) < 0.15


def test_holdout_split_is_disjoint_and_keeps_both_sides_non_empty() -> None:
    train, test = holdout_split(10, 0.2, seed=0)
    assert len(test) == 2 and len(train) == 8
    assert not set(train) & set(test)
    train, test = holdout_split(2, 0.01, seed=0)
    assert len(train) == 1 and len(test) == 1


def test_bad_partition_requests_are_refused_with_the_setting_named() -> None:
    with pytest.raises(ConfigError, match="--clients"):
        iid_partition(3, 5, seed=0)
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet_partition(np.zeros(100, int), 2, 0.0, seed=0)
    with pytest.raises(ConfigError, match="fraction"):
        holdout_split(10, 1.0, seed=0)
