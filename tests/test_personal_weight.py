"""A site's estimated personal weight (``--personal-weighting estimated``): near 0 when its
own release differs from its share of the federation's only by noise and sampling, larger
the more its images differ, and never above the cap."""

from __future__ import annotations

import numpy as np
import pytest

from common.personal import OwnRelease, estimated_weight
from common.privacy.oneshot import class_sums, embed, noised, public_basis

D, CLASSES, K, SITES, SIGMA = 64, 10, 32, 5, 1.9
CENTRES = np.random.default_rng(0).normal(size=(CLASSES, D))


def basis_of(rng: np.random.Generator):
    public = rng.normal(size=(2000, D)) + CENTRES[rng.integers(0, CLASSES, 2000)]
    return public_basis(public, K, "test")


def sums(rng, basis, n: int, shift: np.ndarray | float = 0.0,
         prior: np.ndarray | None = None) -> np.ndarray:
    labels = rng.choice(CLASSES, n, p=prior)
    x = rng.normal(size=(n, D)) + CENTRES[labels] + shift
    return class_sums(embed(x, basis), labels, CLASSES)


def weight_of_first(rng, basis, site_sums: list[np.ndarray], n: int,
                    cap: float = 16.0) -> tuple[float, float]:
    released = [noised(s, SIGMA, rng) for s in site_sums]
    own = OwnRelease([released[0]], float(n), basis, SIGMA)
    return estimated_weight([sum(released)], float(SITES * n), own, cap)


@pytest.mark.parametrize("n", [100, 600, 3000])
def test_a_site_like_the_others_sets_its_weight_near_zero(n: int) -> None:
    rng = np.random.default_rng(1)
    basis = basis_of(rng)
    weights = [weight_of_first(rng, basis, [sums(rng, basis, n) for _ in range(SITES)], n)[0]
               for _ in range(40)]
    # Without the sampling term, 3,000 alike images per site read as a difference (w ~ 4).
    assert np.mean(np.array(weights) == 0.0) >= 0.75 and max(weights) < 1.0, weights


def test_the_more_a_site_differs_the_more_its_own_release_counts() -> None:
    rng = np.random.default_rng(2)
    basis = basis_of(rng)
    direction = rng.normal(size=D)
    weights = []
    for size in (0.0, 0.3, 0.6, 1.2):  # the first site's images shifted by this much
        site_sums = [sums(rng, basis, 600, size * direction)] + [
            sums(rng, basis, 600) for _ in range(SITES - 1)]
        weights.append(weight_of_first(rng, basis, site_sums, 600, cap=1e6)[0])
    assert weights[0] < 0.5 and weights == sorted(weights) and weights[-1] > 4, weights


def test_a_site_whose_label_mix_differs_counts_its_own_release_more() -> None:
    rng = np.random.default_rng(3)
    basis = basis_of(rng)
    skewed = np.full(CLASSES, 0.02)
    skewed[:2] = 0.42
    site_sums = [sums(rng, basis, 600, prior=skewed)] + [
        sums(rng, basis, 600) for _ in range(SITES - 1)]
    assert weight_of_first(rng, basis, site_sums, 600)[0] > 4


def test_the_weight_is_the_excess_over_the_sites_share_and_never_above_the_cap() -> None:
    rng = np.random.default_rng(4)
    basis = basis_of(rng)
    site_sums = [sums(rng, basis, 600, 0.8 * rng.normal(size=D))] + [
        sums(rng, basis, 600) for _ in range(SITES - 1)]
    released = [noised(s, SIGMA, rng) for s in site_sums]
    own = OwnRelease([released[0]], 600.0, basis, SIGMA)
    weight, excess = estimated_weight([sum(released)], 3000.0, own, 1e6)
    assert excess > 0 and weight == pytest.approx(excess / 0.2)
    assert estimated_weight([sum(released)], 3000.0, own, 2.0)[0] == 2.0


def test_an_own_release_without_its_noise_cannot_be_weighed() -> None:
    rng = np.random.default_rng(5)
    basis = basis_of(rng)
    own = OwnRelease([sums(rng, basis, 100)], 100.0, basis)  # exact, or an old kept file
    with pytest.raises(ValueError, match="the own release.s noise"):
        estimated_weight([own.arrays[0]], 500.0, own, 16.0)


def test_totals_from_a_hostile_server_move_the_weight_no_further_than_the_cap() -> None:
    # Totals and count pass the site's checks (finite, count at least its own); whatever
    # they are, the weight stays a number in [0, cap]: it shapes only the site's own head.
    rng = np.random.default_rng(6)
    basis = basis_of(rng)
    own = OwnRelease([noised(sums(rng, basis, 300), SIGMA, rng)], 300.0, basis, SIGMA)
    for totals, count in ((np.full_like(own.arrays[0], 1e200), 301.0),
                          (-own.arrays[0] * 1e6, 1e11), (own.arrays[0], 300.0)):
        weight, excess = estimated_weight([totals], count, own, 16.0)
        assert 0.0 <= weight <= 16.0 and not np.isnan(excess), (weight, excess)


def test_a_site_without_dp_keeps_the_fixed_weight_and_one_with_dp_estimates_its_own() -> None:
    # Without noise the estimate would rest on the sampling bound alone (public statistics
    # of other images can understate it): such a site keeps the run's fixed weight.
    from types import SimpleNamespace

    from client.client_app import _own_weight
    from common.config import RunConfig

    rng = np.random.default_rng(7)
    basis = basis_of(rng)
    site_sums = [sums(rng, basis, 600, 1.2 * rng.normal(size=D))] + [
        sums(rng, basis, 600) for _ in range(SITES - 1)]
    site = SimpleNamespace(name="site-1")
    plain = SimpleNamespace(cfg=RunConfig(dp=False), site=site)
    weight, about = _own_weight(plain, [sum(site_sums)], 3000.0,
                                OwnRelease([site_sums[0]], 600.0, basis, 0.0))
    assert weight == RunConfig().personal_ridge_weight and "own_release_excess" not in about
    released = [noised(s, SIGMA, rng) for s in site_sums]
    private = SimpleNamespace(cfg=RunConfig(), site=site)
    weight, about = _own_weight(private, [sum(released)], 3000.0,
                                OwnRelease([released[0]], 600.0, basis, SIGMA))
    assert about["own_release_weight"] == pytest.approx(weight, abs=1e-4) and weight > 4
    assert about["own_release_excess"] > 0 and 0 < about["own_release_noise_share"] < 1
