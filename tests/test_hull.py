"""The public hull prior: class means denoised within the public features' hull, classes
from another domain left as released, and the option's preconditions."""

import numpy as np
import pytest

from common.config import RunConfig
from common.errors import ConfigError
from common.privacy.hull import MAX_DISTANCE, HullPrior, project_release
from common.privacy.oneshot import bounded, class_sums, public_basis, release_head
from server.oneshot import solve_release
from server.runbook import RunBook

DIM, CLASSES, PER_CLASS = 64, 4, 150


def domain(rng: np.random.Generator, centres: np.ndarray, n: int,
           offset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(CLASSES), n)
    x = centres[y] + 0.35 * rng.normal(size=(len(y), DIM))
    if offset is not None:
        x = x + offset
    return bounded(x), y


def setting(seed: int = 0, offset: float = 0.0):  # noqa: ANN201
    rng = np.random.default_rng(seed)
    centres = 0.5 * rng.normal(size=(CLASSES, DIM)) / np.sqrt(DIM) * 3
    public, _ = domain(rng, centres, 300)
    shift = None
    if offset:
        shift = np.zeros(DIM)
        shift[0] = offset
    site, y = domain(rng, centres, PER_CLASS, shift)
    return rng, public, class_sums(site, y, CLASSES)


def noisy(rng: np.random.Generator, clean: np.ndarray, std: float) -> np.ndarray:
    release = clean + rng.normal(0.0, std, clean.shape)
    release[-1] = clean[-1]  # the counts as released; their noise is not what is tested
    return release


def test_a_mean_inside_the_public_hull_loses_a_good_part_of_its_noise() -> None:
    rng, public, clean = setting()
    std = 6.0
    release = noisy(rng, clean, std)
    projection = project_release(release, HullPrior(public, std), sites=1)
    counts = clean[-1]
    before = np.linalg.norm((release[:-1] - clean[:-1]) / counts, axis=0)
    after = np.linalg.norm((projection.release[:-1] - clean[:-1]) / counts, axis=0)
    assert projection.projected.all() and np.all(projection.distances <= MAX_DISTANCE)
    assert np.all(after < 0.8 * before), (before, after)
    np.testing.assert_array_equal(projection.release[-1], release[-1])  # counts untouched


def test_a_mean_outside_the_public_hull_is_kept_as_released_and_named() -> None:
    rng, public, clean = setting(offset=3.0)  # another domain: every class moved off
    std = 2.0
    release = noisy(rng, clean, std)
    projection = project_release(release, HullPrior(public, std), sites=1)
    assert not projection.projected.any() and np.all(projection.distances > MAX_DISTANCE)
    np.testing.assert_array_equal(projection.release, release)
    summary = projection.summary([f"c{k}" for k in range(CLASSES)])
    assert "c0" in summary and "kept as released" in summary


def test_the_distance_is_measured_in_the_noise_of_all_sites_or_of_one_when_distributed() -> None:
    points = np.zeros((2, 3))
    assert HullPrior(points, 2.0).total_std(4) == pytest.approx(4.0)
    assert HullPrior(points, 2.0, distributed=True).total_std(4) == pytest.approx(2.0)


def test_the_server_solves_and_keeps_the_denoised_release() -> None:
    rng, public, clean = setting()
    std = 6.0
    release = noisy(rng, clean, std)
    basis = public_basis(public, DIM, "test")
    cfg = RunConfig(classes=tuple(f"c{k}" for k in range(CLASSES)), public="public",
                    head_method="ridge", sums_prior="public-hull")
    prior = HullPrior(public @ basis.components.astype(np.float64), std)
    # The points and the release in the basis' coordinates alike (no centring here).
    embedded_release = np.vstack([basis.components.T.astype(np.float64) @ release[:-1],
                                  release[-1:]])
    book = RunBook([np.zeros((DIM, CLASSES), np.float32), np.zeros(CLASSES, np.float32)])
    book.begin_round(1, book.head)
    count = float(clean[-1].sum())
    solve_release(book, [embedded_release], count, basis, cfg, 1, prior)
    expected = project_release(embedded_release, prior, 1).release
    np.testing.assert_allclose(book.one_shot[0][0], expected)
    assert set(book.current.hull_distance) == set(cfg.classes)
    for got, want in zip(book.head, release_head([expected], count, basis, cfg.ridge_lambda)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("kwargs", [
    {},  # no --public
    {"public": "p", "head_method": "sgd"},
    {"public": "p", "dp": False},
])
def test_the_public_hull_prior_needs_dp_a_one_shot_head_and_a_public_folder(kwargs) -> None:
    with pytest.raises(ConfigError, match="--sums-prior public-hull"):
        RunConfig(sums_prior="public-hull", **kwargs)
    RunConfig(sums_prior="public-hull", public="p")
