"""How much of a one-shot head is the release's noise: the measure, the server's warning
when the federation's head is mostly noise, and a site's when its own release is."""

import logging

import numpy as np
import pytest

from common.config import RunConfig
from common.personal import OwnRelease, note_own_release, own_release_share
from common.privacy.oneshot import (NOISE_SHARE_WARNING, class_sums, embed, noise_share,
                                    noised, noised_moment, public_basis, ridge_solution,
                                    second_moment, sums_std)
from common.privacy.release import sums_noise
from server.oneshot import solve_release
from server.runbook import RunBook

DIM, COMPONENTS, CLASSES = 24, 12, 4


def sites_features(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.linspace(-1.0, 1.0, CLASSES)[:, None] * np.eye(CLASSES, DIM)[0]
    centres = centres + 0.3 * np.eye(CLASSES, DIM, k=1)
    y = rng.integers(0, CLASSES, n)
    return centres[y] + 0.5 * rng.normal(size=(n, DIM)), y


def setting(n: int, seed: int = 0):  # noqa: ANN201
    rng = np.random.default_rng(seed)
    public, _ = sites_features(rng, 600)
    basis = public_basis(public, COMPONENTS, "test")
    x, y = sites_features(rng, n)
    return rng, basis, class_sums(embed(x, basis), y, CLASSES)


def spread(release: np.ndarray, count: float, variances: np.ndarray) -> float:
    # What noise_share divides by, computed here through the ridge solve itself.
    weights, _ = ridge_solution(release, count, variances, 8.0)
    centred = weights - weights.mean(axis=1, keepdims=True)
    return float(np.sum(variances[:, None] * centred**2))


def test_a_release_of_pure_noise_is_measured_as_all_noise() -> None:
    rng, basis, clean = setting(400)
    variances = basis.variances.astype(np.float64)
    shares = [noise_share(noised(np.zeros_like(clean), 1.5, rng), 400.0, variances, 8.0,
                          sums_std(1.5)) for _ in range(300)]
    assert np.mean(shares) == pytest.approx(1.0, abs=0.07)


def test_the_noise_part_is_what_the_noise_adds_to_the_heads_spread() -> None:
    rng, basis, clean = setting(400)
    variances, count, std = basis.variances.astype(np.float64), 400.0, sums_std(1.5)
    added, expected = [], []
    for _ in range(200):
        noise = noised(np.zeros_like(clean), 1.5, rng)
        # A draw and its mirror: the cross term of signal and noise cancels between them,
        # which leaves what the noise adds without the sampling error that term brings.
        pair = [clean + noise, clean - noise]
        added.append(np.mean([spread(r, count, variances) for r in pair])
                     - spread(clean, count, variances))
        expected.append(np.mean([noise_share(r, count, variances, 8.0, std)
                                 * spread(r, count, variances) for r in pair]))
    assert np.mean(expected) == pytest.approx(np.mean(added), rel=0.05)


def test_a_noise_free_release_has_no_noise_share_and_more_images_mean_less() -> None:
    variances_and_releases = [setting(n, seed=1)[1:] for n in (100, 1000, 10000)]
    assert noise_share(variances_and_releases[0][1], 100.0,
                       variances_and_releases[0][0].variances, 8.0, 0.0) == 0.0
    shares = [noise_share(noised(clean, 1.5, np.random.default_rng(2)), float(n),
                          b.variances, 8.0, sums_std(1.5))
              for (b, clean), n in zip(variances_and_releases, (100, 1000, 10000))]
    assert shares[0] > shares[1] > shares[2], shares


@pytest.mark.parametrize(("images", "warned"), [(40, True), (20000, False)])
def test_the_server_warns_when_the_one_shot_head_is_mostly_noise(
        caplog: pytest.LogCaptureFixture, images: int, warned: bool) -> None:
    cfg = RunConfig(classes=tuple(f"c{k}" for k in range(CLASSES)), head_method="ridge",
                    public_components=COMPONENTS)
    rng, basis, clean = setting(images)
    sites = 2
    # Each site's release as the run plans it (the server's measure uses that plan too).
    release = clean + sum(noised(np.zeros_like(clean), sums_noise(cfg), rng)
                          for _ in range(sites))
    book = RunBook([np.zeros((DIM, CLASSES), np.float32), np.zeros(CLASSES, np.float32)])
    book.begin_round(1, book.head)
    with caplog.at_level(logging.INFO, logger="fedtl.server"):
        solve_release(book, [release], float(images), basis, cfg, sites)
    share = book.current.noise_share
    assert (share >= NOISE_SHARE_WARNING) is warned, share
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) is warned, warnings
    line = next(r.getMessage() for r in caplog.records if "of their spread" in r.getMessage())
    assert f"{min(share, 1.0):.0%}" in line and f"{sites} site(s)" in line
    if warned:
        assert "mostly noise" in warnings[0] and "--public-components" in warnings[0]


def own_release(images: int, moment: bool = False, seed: int = 3) -> OwnRelease:
    rng, basis, _ = setting(images, seed)
    x, y = sites_features(rng, images)
    z = embed(x, basis)
    arrays = [noised(class_sums(z, y, CLASSES), 1.5, rng, moment=moment)]
    if moment:
        arrays.append(noised_moment(second_moment(z), 1.5, rng))
    return OwnRelease(arrays, float(images), basis)


def test_a_sites_own_release_of_pure_noise_is_measured_as_all_noise() -> None:
    rng, basis, clean = setting(400)
    shares = [own_release_share(OwnRelease([noised(np.zeros_like(clean), 1.5, rng)], 400.0,
                                           basis), 1.5, 8.0) for _ in range(300)]
    assert np.mean(shares) == pytest.approx(1.0, abs=0.07)


@pytest.mark.parametrize("moment", [False, True])
def test_a_sites_own_release_is_less_noise_the_more_images_it_sums(moment: bool) -> None:
    shares = [own_release_share(own_release(n, moment), 1.5, 8.0) for n in (10, 400, 20000)]
    assert shares[0] > shares[1] > shares[2], shares
    assert shares[0] >= NOISE_SHARE_WARNING > shares[2], shares


@pytest.mark.parametrize(("images", "warned"), [(10, True), (20000, False)])
def test_a_site_warns_when_its_personal_head_would_lean_on_mostly_noise(
        caplog: pytest.LogCaptureFixture, images: int, warned: bool) -> None:
    own = own_release(images)
    with caplog.at_level(logging.INFO, logger="fedtl.site"):
        share = note_own_release("site-7", own, 1.5, 8.0, 4.0)
    assert share == own_release_share(own, 1.5, 8.0)
    lines = [r for r in caplog.records if "site-7" in r.getMessage()]
    assert len(lines) == 1 and f"{min(share, 1.0):.0%} noise" in lines[0].getMessage()
    assert (lines[0].levelno == logging.WARNING) is warned
    if warned:
        assert "counts that release 4 times" in lines[0].getMessage()
        assert "--personal-ridge-weight" in lines[0].getMessage()


def test_a_site_that_estimates_its_weight_is_not_warned_of_a_noisy_own_release(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fedtl.site"):
        note_own_release("site-7", own_release(10), 1.5, 8.0, None)
    lines = [r for r in caplog.records if "site-7" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "its own estimate" in lines[0].getMessage()
