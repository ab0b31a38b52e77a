"""The three standard DP-SGD tests, on the head fedtl trains."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from common.privacy.dp import SgdSettings, train_head
from common.features.model import head_layers, initial_head_weights

RNG = np.random.default_rng(0)
X = (RNG.normal(size=(40, 6)) * 3).astype(np.float32)
Y = RNG.integers(0, 3, 40).astype(np.int64)


def settings(**changes) -> SgdSettings:
    base = dict(sampling_rate=0.3, steps=6, learning_rate=0.5, momentum=0.0, private=True,
                clip_norm=1.0, noise_multiplier=0.0)
    return SgdSettings(**{**base, **changes})


def run(weights, s: SgdSettings, x=X, y=Y, width=4, seed=1):
    return train_head(x, y, weights, num_classes=3, head_width=width, settings=s,
                      rng=np.random.default_rng(seed))[0]


def test_without_noise_and_with_a_huge_clip_dp_training_equals_plain_training() -> None:
    start = initial_head_weights(6, 3, 4, seed=0)
    private = run(start, settings(clip_norm=1e9))
    plain = run(start, settings(private=False))
    for a, b in zip(private, plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(private[0], start[0])  # it did train


def _reference_clipped_sum(weights, x, y, clip: float, width: int) -> list[np.ndarray]:
    """Slow reference: one gradient per example, each clipped, then summed."""
    head = tf.keras.Sequential([tf.keras.Input((x.shape[1],)), *head_layers(3, width, 0)])
    head.set_weights(weights)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    total = [np.zeros_like(w) for w in weights]
    for i in range(len(y)):
        with tf.GradientTape() as tape:
            value = loss(y[i:i + 1], head(x[i:i + 1]))
        grads = [g.numpy() for g in tape.gradient(value, head.trainable_variables)]
        norm = np.sqrt(sum(np.sum(g ** 2) for g in grads))
        factor = min(1.0, clip / norm)
        total = [t + g * factor for t, g in zip(total, grads)]
    return total


@pytest.mark.parametrize("width", [0, 4])
def test_each_example_contributes_at_most_the_clip_norm(width: int) -> None:
    start = initial_head_weights(6, 3, width, seed=0)
    x = X.copy()
    x[0] *= 1000.0  # one example with an enormous gradient
    clip, n = 0.1, len(Y)
    # One full-batch step (sampling rate 1), lr 1: the update is minus the clipped sum / n.
    step = settings(sampling_rate=1.0, steps=1, learning_rate=1.0, clip_norm=clip)
    after = run(start, step, x=x, width=width)
    update = [(a - b) * -n for a, b in zip(after, start)]
    expected = _reference_clipped_sum(start, x, Y, clip, width)
    for got, want in zip(update, expected):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    single = run(start, step, x=x[:1], y=Y[:1], width=width)
    moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(single, start)))
    assert moved <= clip * (1 + 1e-5)
    plain = run(start, settings(sampling_rate=1.0, steps=1, learning_rate=1.0, private=False),
                x=x[:1], y=Y[:1], width=width)
    assert np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(plain, start))) > 10 * clip


def test_noise_has_standard_deviation_noise_multiplier_times_clip() -> None:
    # DP noise is never seeded, so the sample is large enough for the bounds to hold at
    # 5 standard errors or more (12,291 coordinates: the std is known to ~0.6 %).
    start = initial_head_weights(4096, 3, 0, seed=0)
    x = np.random.default_rng(3).normal(size=(50, 4096)).astype(np.float32)
    y = np.random.default_rng(4).integers(0, 3, 50).astype(np.int64)
    step = dict(sampling_rate=1.0, steps=1, learning_rate=1.0, clip_norm=0.5)
    clean = run(start, settings(**step), x=x, y=y, width=0)
    noisy = run(start, settings(noise_multiplier=2.0, **step), x=x, y=y, width=0)
    noise = np.concatenate([((a - b) * -50).ravel() for a, b in zip(noisy, clean)])
    assert noise.size == 4096 * 3 + 3
    assert np.std(noise) == pytest.approx(2.0 * 0.5, rel=0.05)
    assert abs(np.mean(noise)) < 0.05


@pytest.mark.parametrize("width", [0, 4])
def test_a_bias_only_step_moves_the_output_bias_alone_by_its_part_of_the_clipped_sum(
        width: int) -> None:
    start = initial_head_weights(6, 3, width, seed=0)
    # A trained head (the output kernel starts at zero, which stops the hidden gradient).
    start[-2] = np.random.default_rng(2).normal(size=start[-2].shape).astype(np.float32)
    clip, n = 0.1, len(Y)
    step = settings(sampling_rate=1.0, steps=1, learning_rate=1.0, clip_norm=clip)
    after = run(start, dataclasses.replace(step, bias_only=True), width=width)
    for a, b in zip(after[:-1], start[:-1]):
        np.testing.assert_array_equal(a, b)
    # Each example is clipped on its whole gradient, as in the mechanism the ledger charged.
    expected = _reference_clipped_sum(start, X, Y, clip, width)[-1]
    np.testing.assert_allclose((after[-1] - start[-1]) * -n, expected, rtol=1e-3, atol=1e-6)
    noisy = run(start, dataclasses.replace(step, bias_only=True, noise_multiplier=5.0),
                width=width)
    for a, b in zip(noisy[:-1], start[:-1]):
        np.testing.assert_array_equal(a, b)  # the other variables' noise is discarded
    assert np.abs(noisy[-1] - after[-1]).max() > 1e-3  # the bias's is not
    again = run(start, step, width=width)  # the same trainer moves every weight again
    assert all(not np.array_equal(a, b) for a, b in zip(again, start))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_reused_trainer_carries_nothing_from_the_previous_site(momentum: float) -> None:
    start = initial_head_weights(6, 3, 4, seed=0)
    step = settings(clip_norm=0.1, momentum=momentum)
    first = run(start, step)
    # Another site in the same process: other data, clip norm and noise.
    run(initial_head_weights(6, 3, 4, seed=5), settings(clip_norm=50.0, noise_multiplier=3.0,
                                                        momentum=momentum),
        x=X[::-1].copy(), seed=7)
    again = run(start, step)
    for a, b in zip(first, again):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_each_drawn_example_enters_a_step_as_exactly_one_of_its_views() -> None:
    from common.privacy.dp import sample_batches

    index, mask, drawn = sample_batches(50, settings(sampling_rate=0.2, steps=40),
                                        np.random.default_rng(0), num_views=3)
    rows = index[mask > 0]
    assert drawn == rows.size and 0 < drawn < 40 * 50
    assert set(np.unique(rows // 50)) == {0, 1, 2}
    for step in range(40):  # no example twice in a step, whatever its view
        examples = index[step][mask[step] > 0] % 50
        assert len(set(examples)) == len(examples)
    assert np.all(index[mask == 0] == 0)


def test_the_proximal_term_pulls_towards_the_global_head_by_mu_times_the_distance() -> None:
    start = initial_head_weights(6, 3, 0, seed=0)
    moved = [w + 0.5 for w in start]  # the "global" head the round starts from
    # No data signal (huge clip irrelevant, lr tiny on the data): one full-batch step.
    free = run(moved, settings(sampling_rate=1.0, steps=1, noise_multiplier=0.0), width=0)
    prox = run(moved, settings(sampling_rate=1.0, steps=1, noise_multiplier=0.0,
                               proximal_mu=3.0), width=0)
    # At the first step w == anchor, so the term adds nothing; it only acts once w moved.
    for a, b in zip(free, prox):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    many_free = run(moved, settings(sampling_rate=1.0, steps=20, learning_rate=2.0), width=0)
    many_prox = run(moved, settings(sampling_rate=1.0, steps=20, learning_rate=2.0,
                                    proximal_mu=0.3), width=0)

    def distance(ws: list[np.ndarray]) -> float:
        return float(np.sqrt(sum(np.sum((w - m) ** 2) for w, m in zip(ws, moved))))

    assert distance(many_prox) < 0.5 * distance(many_free)


def test_batches_are_poisson_samples_at_the_accounted_rate_and_step_count() -> None:
    """The accountant assumes each example joins each step independently with probability
    q; the drawn batches must look exactly like that (sizes Binomial(n, q), every example
    at rate q, no dependence between examples) and there must be exactly ``steps`` of them."""
    from common.privacy.dp import sample_batches

    n, q, steps = 200, 0.1, 3000
    index, mask, drawn = sample_batches(n, settings(sampling_rate=q, steps=steps),
                                        np.random.default_rng(1))
    assert index.shape[0] == steps  # empty samples are kept as steps: they are accounted
    sizes = mask.sum(axis=1)
    assert sizes.mean() == pytest.approx(n * q, rel=0.02)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.1)  # not a fixed batch size
    member = np.zeros((steps, n))
    for step in range(steps):
        member[step, index[step][mask[step] > 0]] = 1
    assert member.sum() == drawn
    rates = member.mean(axis=0)
    assert np.abs(rates - q).max() < 5 * np.sqrt(q * (1 - q) / steps)
    corr = np.corrcoef(member[:, :20].T)[np.triu_indices(20, 1)]
    assert np.abs(corr).max() < 0.1  # examples are drawn independently


def test_the_noisy_sum_is_divided_by_the_public_expected_batch_not_the_drawn_one() -> None:
    # One step at rate 1 with no noise and a huge clip: the update is lr * sum / divisor.
    start = initial_head_weights(6, 3, 0, seed=0)
    plain = dict(sampling_rate=1.0, steps=1, clip_norm=1e6)
    by_count = run(start, settings(**plain), width=0)
    by_public = run(start, settings(**plain, expected_batch=80.0), width=0)
    moved = [np.abs(a - s).sum() for a, s in zip(by_count, start)]
    moved_public = [np.abs(a - s).sum() for a, s in zip(by_public, start)]
    assert moved_public[0] == pytest.approx(moved[0] * len(Y) / 80.0, rel=1e-4)
