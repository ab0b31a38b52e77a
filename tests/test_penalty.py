"""The one-shot head's penalty set from the release's noise (``--ridge-penalty noise``): the
rule, how the server solves with it and hands it to the sites, and what a site accepts."""

import logging

import numpy as np
import pytest

from common import protocol
from common.config import RunConfig
from common.errors import ConfigError, UpdateRejectedError
from common.privacy.oneshot import (class_sums, embed, noised, public_basis, release_head,
                                    summed_std, sums_std)
from common.privacy.penalty import (HIGHEST, HULL_NOISE_SCALE, LOWEST, NOISE_SCALE,
                                    ROUNDS_NOISE_SCALE, noise_penalty, run_penalty)
from common.privacy.release import sums_noise
from server.oneshot import solve_release
from server.runbook import RunBook

DIM, COMPONENTS, CLASSES = 24, 12, 4
VARIANCES = np.full(COMPONENTS, 0.01)


def test_the_penalty_is_in_proportion_to_the_noise_on_the_pooled_mean() -> None:
    base = noise_penalty(2.0, 1000.0, VARIANCES)
    assert base == pytest.approx(NOISE_SCALE * (2.0 / 1000.0) / 0.01)
    assert noise_penalty(4.0, 1000.0, VARIANCES) == pytest.approx(2 * base)
    assert noise_penalty(2.0, 2000.0, VARIANCES) == pytest.approx(base / 2)
    # Relative to the mean public variance, as --ridge-lambda is: the absolute penalty
    # added to the moment stays the same when the variances double.
    assert noise_penalty(2.0, 1000.0, 2 * VARIANCES) == pytest.approx(base / 2)


def test_the_hull_prior_takes_a_smaller_penalty_for_the_same_noise() -> None:
    plain = noise_penalty(2.0, 1000.0, VARIANCES)
    assert noise_penalty(2.0, 1000.0, VARIANCES, hull=True) == pytest.approx(
        plain * HULL_NOISE_SCALE / NOISE_SCALE)
    assert HULL_NOISE_SCALE < NOISE_SCALE


def test_the_penalty_stays_within_the_range_the_rule_was_fitted_on() -> None:
    assert noise_penalty(0.0, 1000.0, VARIANCES) == LOWEST  # no noise is not no penalty
    assert noise_penalty(1e6, 10.0, VARIANCES) == HIGHEST
    assert noise_penalty(5.0, 0.0, VARIANCES) == HIGHEST  # a zero count is not a division


def test_a_fixed_penalty_is_the_runs_ridge_lambda_whatever_the_noise() -> None:
    cfg = RunConfig(head_method="ridge", ridge_lambda=3.5)
    assert run_penalty(cfg, 100.0, 10.0, VARIANCES) == 3.5
    noisy = cfg.replace(ridge_penalty="noise")
    assert run_penalty(noisy, 2.0, 1000.0, VARIANCES) == noise_penalty(2.0, 1000.0, VARIANCES)
    hull = noisy.replace(public="somewhere", sums_prior="public-hull")
    assert run_penalty(hull, 2.0, 1000.0, VARIANCES) == noise_penalty(2.0, 1000.0, VARIANCES,
                                                                      hull=True)


def test_a_head_that_dp_sgd_rounds_start_from_takes_the_rounds_constant() -> None:
    head_alone = RunConfig(head_method="ridge", ridge_penalty="noise")
    with_rounds = head_alone.replace(head_method="ridge+sgd")
    alone = run_penalty(head_alone, 2.0, 1000.0, VARIANCES)
    assert alone == pytest.approx(NOISE_SCALE * 0.002 / 0.01)
    assert run_penalty(with_rounds, 2.0, 1000.0, VARIANCES) == pytest.approx(
        alone * ROUNDS_NOISE_SCALE / NOISE_SCALE)
    assert ROUNDS_NOISE_SCALE > NOISE_SCALE
    # The hull prior's constant was fitted for the head alone and stays its own.
    hulls = [run_penalty(c.replace(public="somewhere", sums_prior="public-hull"), 2.0, 1000.0,
                         VARIANCES) for c in (head_alone, with_rounds)]
    assert hulls[0] == hulls[1] == pytest.approx(HULL_NOISE_SCALE * 0.002 / 0.01)


@pytest.mark.parametrize("other", [dict(second_moment="private"), dict(head_method="sgd"),
                                   dict(dp=False)])
def test_a_noise_set_penalty_is_refused_where_there_is_no_sums_noise_to_set_it_from(
        other: dict) -> None:
    with pytest.raises(ConfigError, match="--ridge-penalty noise"):
        RunConfig(**{"head_method": "ridge", "ridge_penalty": "noise", **other})


def test_a_command_line_giving_a_fixed_penalty_beside_the_noise_rule_is_refused() -> None:
    from common.cli import build_parser
    from common.cli.options import settings_from

    def parsed(*argv: str) -> RunConfig:
        return settings_from(build_parser().parse_args(["simulate", *argv]), out="o")

    with pytest.raises(ConfigError, match="--ridge-lambda 4 is the fixed penalty"):
        parsed("--ridge-penalty", "noise", "--ridge-lambda", "4")
    # The default penalty is not one given, and with the fixed rule the two agree.
    assert parsed("--ridge-penalty", "noise").ridge_penalty == "noise"
    assert parsed("--ridge-penalty", "fixed", "--ridge-lambda", "4").ridge_lambda == 4.0


def release_of(sites: int, images: int, cfg: RunConfig):  # noqa: ANN201
    rng = np.random.default_rng(0)
    centres = np.eye(CLASSES, DIM)
    public = centres[rng.integers(0, CLASSES, 400)] + 0.5 * rng.normal(size=(400, DIM))
    basis = public_basis(public, COMPONENTS, "test")
    y = rng.integers(0, CLASSES, images)
    clean = class_sums(embed(centres[y] + 0.5 * rng.normal(size=(images, DIM)), basis), y,
                       CLASSES)
    release = clean + sum(noised(np.zeros_like(clean), sums_noise(cfg), rng)
                          for _ in range(sites))
    return basis, release


@pytest.mark.parametrize("rule", ["fixed", "noise"])
def test_the_server_solves_the_head_with_the_runs_penalty_and_records_it(
        rule: str, caplog: pytest.LogCaptureFixture) -> None:
    cfg = RunConfig(classes=tuple(f"c{k}" for k in range(CLASSES)), head_method="ridge",
                    public_components=COMPONENTS, ridge_penalty=rule)
    basis, release = release_of(3, 900, cfg)
    book = RunBook([np.zeros((DIM, CLASSES), np.float32), np.zeros(CLASSES, np.float32)])
    book.begin_round(1, book.head)
    with caplog.at_level(logging.INFO, logger="fedtl.server"):
        solve_release(book, [release], 900.0, basis, cfg, 3)
    # The run's planned noise for three sites, each adding its own.
    want = (cfg.ridge_lambda if rule == "fixed" else
            noise_penalty(summed_std(sums_std(sums_noise(cfg)), 3), 900.0, basis.variances))
    assert book.current.ridge_lambda == pytest.approx(want)
    for got, expected in zip(book.head, release_head([release], 900.0, basis, want)):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    said = [r.getMessage() for r in caplog.records if "ridge penalty" in r.getMessage()]
    assert bool(said) is (rule == "noise")


def test_distributed_noise_sets_a_smaller_penalty_than_each_sites_own() -> None:
    cfg = RunConfig(classes=tuple(f"c{k}" for k in range(CLASSES)), head_method="ridge",
                    public_components=COMPONENTS, ridge_penalty="noise")
    basis, release = release_of(4, 300, cfg)
    penalties = []
    for mode in ("local", "distributed"):
        run = cfg.replace(sums_noise=mode, secure_aggregation=mode == "distributed")
        book = RunBook([np.zeros((DIM, CLASSES), np.float32), np.zeros(CLASSES, np.float32)])
        book.begin_round(1, book.head)
        solve_release(book, [release], 300.0, basis, run, 4)
        penalties.append(book.current.ridge_lambda)
    assert LOWEST < min(penalties) and max(penalties) < HIGHEST
    # Four sites' own noise adds up to twice one site's; shares of it add up to one site's.
    assert penalties[0] == pytest.approx(2 * penalties[1])


@pytest.mark.parametrize("value", [None, "4", True, float("nan"), 0.1, 100.0, -1.0])
def test_a_site_refuses_a_penalty_outside_the_rules_range(value: object) -> None:
    with pytest.raises(UpdateRejectedError, match="one-shot penalty"):
        protocol.check_one_shot_penalty(value, LOWEST, HIGHEST)


def test_a_site_accepts_a_penalty_the_rule_can_give() -> None:
    assert protocol.check_one_shot_penalty(4, LOWEST, HIGHEST) == 4.0
    assert protocol.check_one_shot_penalty(LOWEST, LOWEST, HIGHEST) == LOWEST
