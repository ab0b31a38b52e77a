"""The accountant against published settings, and the budget calibration."""

import math

import pytest

from common.privacy.accounting import epsilon, noise_for_budget
from common.errors import ConfigError


def test_tensorflow_privacy_test_setting_gives_its_pinned_epsilon() -> None:
    # 60,000 examples, batch 150, noise 1.3, 15 epochs, delta 1e-5 (tensorflow-privacy tests).
    eps = epsilon(sampling_rate=150 / 60000, noise_multiplier=1.3, steps=15 * 400, delta=1e-5)
    assert eps == pytest.approx(0.7242234026, abs=1e-6)


def test_opacus_accountant_test_setting_gives_its_pinned_epsilon() -> None:
    eps = epsilon(sampling_rate=0.04, noise_multiplier=1.5, steps=2250, delta=1e-5)
    assert eps == pytest.approx(7.32911, abs=5e-3)


@pytest.mark.parametrize(("accountant", "expected"), [("rdp", 2.5966), ("pld", 2.3817)])
def test_abadi_mnist_setting_with_poisson_sampling(accountant: str, expected: float) -> None:
    eps = epsilon(sampling_rate=256 / 60000, noise_multiplier=1.1, steps=14062, delta=1e-5,
                  accountant=accountant)
    assert eps == pytest.approx(expected, abs=1e-3)


def test_epsilon_grows_with_steps_and_shrinks_with_noise() -> None:
    base = dict(sampling_rate=0.1, delta=1e-5)
    assert epsilon(noise_multiplier=1.0, steps=10, **base) < epsilon(
        noise_multiplier=1.0, steps=100, **base)
    assert epsilon(noise_multiplier=2.0, steps=100, **base) < epsilon(
        noise_multiplier=1.0, steps=100, **base)


def test_no_steps_spend_nothing_and_no_noise_spends_everything() -> None:
    assert epsilon(sampling_rate=0.5, noise_multiplier=1.0, steps=0, delta=1e-5) == 0.0
    assert math.isinf(epsilon(sampling_rate=0.5, noise_multiplier=0.0, steps=1, delta=1e-5))


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_calibrated_noise_meets_the_target_and_no_less_noise_would(accountant: str) -> None:
    sigma = noise_for_budget(target_epsilon=3.0, delta=1e-5, sampling_rate=0.25, steps=40,
                             accountant=accountant)
    spent = epsilon(sampling_rate=0.25, noise_multiplier=sigma, steps=40, delta=1e-5,
                    accountant=accountant)
    assert spent <= 3.0 + 1e-9
    assert spent > 2.98
    assert epsilon(sampling_rate=0.25, noise_multiplier=sigma * 0.98, steps=40,
                   delta=1e-5, accountant=accountant) > 3.0


def test_pld_calibrates_less_noise_than_rdp_for_the_same_guarantee() -> None:
    # The one-shot release (one Gaussian at rate 1) then DP-SGD rounds planned around it.
    plans = [dict(sampling_rate=1.0, steps=1, target_epsilon=2.55),
             dict(sampling_rate=0.2, steps=50, target_epsilon=3.0)]
    for plan in plans:
        rdp, pld = (noise_for_budget(delta=1e-5, accountant=a, **plan) for a in ("rdp", "pld"))
        assert 0.8 * rdp < pld < rdp


def test_the_search_finds_the_noise_dp_accountings_own_search_finds() -> None:
    from common.privacy.accounting import Mechanism, dp_accounting_calibrated

    plan = dict(target_epsilon=3.0, delta=1e-5, sampling_rate=0.2, steps=50)
    prior = [Mechanism(1.0, 1.7267, 1)]
    ours = noise_for_budget(accountant="rdp", prior=prior, **plan)
    assert ours == pytest.approx(dp_accounting_calibrated("rdp", prior=prior, **plan), rel=1e-3)


@pytest.mark.parametrize("kwargs", [
    dict(target_epsilon=0.0, delta=1e-5, sampling_rate=0.1, steps=10),
    dict(target_epsilon=1.0, delta=0.0, sampling_rate=0.1, steps=10),
    dict(target_epsilon=1.0, delta=1e-5, sampling_rate=1.5, steps=10),
    dict(target_epsilon=1.0, delta=1e-5, sampling_rate=0.1, steps=0),
    dict(target_epsilon=1e-6, delta=1e-12, sampling_rate=1.0, steps=10**6),
])
def test_impossible_or_malformed_budgets_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        noise_for_budget(**kwargs)


def test_cached_rdp_curves_give_exactly_the_accountants_epsilon() -> None:
    import dp_accounting

    from common.privacy.accounting import Mechanism, composed_epsilon

    runs = [Mechanism(0.64, 1.3, 7), Mechanism(0.05, 0.9, 300), Mechanism(0.64, 1.3, 2)]
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            m.sampling_rate, dp_accounting.GaussianDpEvent(m.noise_multiplier)), m.steps)
        for m in runs]))
    expected = accountant.get_epsilon(1e-5)
    assert composed_epsilon(runs, delta=1e-5) == pytest.approx(expected, rel=1e-12)
    assert composed_epsilon(runs, delta=1e-5) == pytest.approx(expected, rel=1e-12)  # cached


def tensorflow_privacy_epsilon(*, epochs: float, noise: float, rate: float, delta: float,
                               accountant: str) -> float:
    import common.privacy.tf_privacy  # noqa: F401  (sets tensorflow-privacy's import escape hatch)
    from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib as lib

    return lib._compute_dp_sgd_example_privacy(
        num_epochs=epochs, noise_multiplier=noise, example_delta=delta,
        used_microbatching=False, poisson_subsampling_probability=rate,
        accountant_type=lib.AccountantType[accountant.upper()])


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize(("n", "batch", "noise", "epochs"), [
    (60000, 256, 1.1, 60),  # Abadi et al. 2016, MNIST
    (60000, 150, 1.3, 15),  # tensorflow-privacy's tutorial setting
    (2000, 512, 3.4, 10),  # a small fedtl site: few steps at a high sampling rate
])
def test_epsilon_matches_tensorflow_privacys_own_statement_for_poisson_dp_sgd(
        accountant: str, n: int, batch: int, noise: float, epochs: int) -> None:
    rate = batch / n
    steps = math.ceil(epochs / rate)  # how tensorflow-privacy counts steps for epochs
    ours = epsilon(sampling_rate=rate, noise_multiplier=noise, steps=steps, delta=1e-5,
                   accountant=accountant)
    theirs = tensorflow_privacy_epsilon(epochs=epochs, noise=noise, rate=rate, delta=1e-5,
                                        accountant=accountant)
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_the_abadi_setting_as_tensorflow_privacys_statement_prints_it() -> None:
    import common.privacy.tf_privacy  # noqa: F401
    from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib as lib

    statement = lib.compute_dp_sgd_privacy_statement(
        number_of_examples=60000, batch_size=256, num_epochs=60, noise_multiplier=1.1,
        delta=1e-5, used_microbatching=False)
    ours = epsilon(sampling_rate=256 / 60000, noise_multiplier=1.1,
                   steps=math.ceil(60 * 60000 / 256), delta=1e-5)
    assert f"{ours:.3f}" in statement  # its Poisson line; the shuffled-batch line is ~57
