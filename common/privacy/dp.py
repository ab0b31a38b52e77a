"""DP-SGD training of the head, with tensorflow-privacy's fast gradient clipping.

Each step draws a Poisson sample of the site's examples (every example independently with
probability ``sampling_rate``), sums their per-example-clipped gradients, adds Gaussian noise
of standard deviation ``noise_multiplier * clip_norm`` and divides by the *expected* batch
size. That is exactly the subsampled Gaussian mechanism the accountant composes
(Abadi et al., arXiv 1607.00133), so the epsilon fedtl reports is the one it spends.

Clipping uses tensorflow-privacy's fast gradient clipping (per-example gradient norms from
its layer registry, never per-example gradients; the algorithm of its ``DPSequential``), the
fastest of its DP implementations for Dense heads (README, "Performance").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from common.features.model import head_layers
from common.privacy.sgd import SgdSettings
from common.privacy.tf_privacy import (clip_grads, dp_optimizer_keras, gradient_clipping_utils,
                               layer_registry)

__all__ = ["HeadTrainer", "SgdSettings", "sample_batches", "train_head"]


@dataclass(frozen=True)
class TrainerKey:
    """What a compiled training step is specialised for."""

    feature_dim: int
    num_classes: int
    head_width: int
    private: bool
    momentum: float


class HeadTrainer:
    """A compiled head whose whole round of steps runs as one TensorFlow graph call.

    Building and tracing costs seconds, more than a warm round of training, so a process keeps
    its trainers (`trainer_for`) and only swaps weights, learning rate, clip norm and noise.
    """

    def __init__(self, key: TrainerKey) -> None:
        self.key = key
        self.model = tf.keras.Sequential([tf.keras.Input((key.feature_dim,)),
                                          *head_layers(key.num_classes, key.head_width, 0)])
        self.optimizer = tf.keras.optimizers.SGD(learning_rate=1.0, momentum=key.momentum)
        # SUM, not mean: the noisy sum is divided by the expected batch size through the
        # learning rate, as Poisson-sampled DP-SGD requires (the actual size is private).
        self._loss = tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.SUM)
        self._per_example_loss = tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.NONE)
        self.model.compile(loss=self._loss, optimizer=self.optimizer)
        self.optimizer.build(self.model.trainable_variables)
        self._registry = layer_registry.make_default_layer_registry()
        # Variables, not Python floats as in DPSequential: one compiled step serves every
        # site and run, whatever clip norm and noise multiplier they use.
        self._clip = tf.Variable(1.0, trainable=False, dtype=tf.float32)
        self._sigma = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        # FedProx: weight of (w - anchor) in the summed gradient, and the anchor (the global
        # head the round started from). 0 turns the term off without a second trace.
        self._prox = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        self._anchor = [tf.Variable(v, trainable=False) for v in self.model.trainable_variables]
        # 1 where a variable moves, 0 where its gradient is discarded (SgdSettings.bias_only):
        # a variable, so one trace serves both.
        self._moves = [tf.Variable(1.0, trainable=False) for _ in self.model.trainable_variables]
        dim = key.feature_dim
        # No AutoGraph: the loop is an explicit tf.while_loop, and AutoGraph's conversion of
        # tensorflow-privacy's registry code took ~10 s of every process's first round.
        self._run = tf.function(self._steps, autograph=False, input_signature=[
            tf.TensorSpec([None, dim], tf.float32), tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.float32),
        ])

    def _gradients(self, xb: tf.Tensor, yb: tf.Tensor, wb: tf.Tensor) -> tuple[
            list[tf.Tensor], tf.Tensor]:
        """Gradients of the weighted summed loss (clipped per example and noised when private)
        and the logits before the update."""
        variables = self.model.trainable_variables
        if not self.key.private:
            with tf.GradientTape() as tape:
                logits = self.model(xb, training=True)
                loss = self._loss(yb, logits, wb)
            return tape.gradient(loss, variables), logits
        # tensorflow-privacy's fast gradient clipping (per-example norms from the layer
        # registry), then its noise for a summed loss: DPSequential.train_step's two calls.
        grads, logits, _ = clip_grads.compute_clipped_gradients_and_outputs(
            input_model=self.model, l2_norm_clip=self._clip, layer_registry=self._registry,
            x_batch=xb, y_batch=yb, weight_batch=wb, clipping_loss=self._loss)
        grads = gradient_clipping_utils.add_aggregate_noise(
            grads, tf.shape(yb)[0], self._clip, self._sigma, loss_reduction="sum")
        return grads, logits

    def _steps(self, x: tf.Tensor, y: tf.Tensor, index: tf.Tensor,
               mask: tf.Tensor) -> tf.Tensor:
        def step(i: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            xb, yb, wb = tf.gather(x, index[i]), tf.gather(y, index[i]), mask[i]
            grads, logits = self._gradients(xb, yb, wb)
            grads = [m * (g + self._prox * (v - a)) for g, v, a, m in
                     zip(grads, self.model.trainable_variables, self._anchor, self._moves,
                         strict=True)]
            # Loss before the update, over the drawn rows only (padding has weight 0).
            loss = tf.reduce_sum(wb * self._per_example_loss(yb, logits))
            with tf.control_dependencies([loss]):
                update = self.optimizer.apply_gradients(zip(grads,
                                                            self.model.trainable_variables))
            with tf.control_dependencies([update]):
                return i + 1, total + loss

        _, total = tf.while_loop(lambda i, _: i < tf.shape(index)[0], step,
                                 (tf.constant(0), tf.constant(0.0, tf.float32)))
        return total

    def train(self, x: np.ndarray, y: np.ndarray, weights: Sequence[np.ndarray],
              settings: SgdSettings, learning_rate: float, index: np.ndarray,
              mask: np.ndarray, proximal_weight: float = 0.0) -> tuple[list[np.ndarray], float]:
        """Run one step per row of ``index`` (rows of ``x``; ``mask`` 0 marks padding).

        ``proximal_weight`` multiplies (w - weights) in the summed gradient (FedProx).
        """
        self.model.set_weights(list(weights))
        for anchor, start in zip(self._anchor, weights, strict=True):
            anchor.assign(start)
        self._prox.assign(proximal_weight)
        last = len(self._moves) - 1  # the output layer's bias: head_layers end with it
        for i, moves in enumerate(self._moves):
            moves.assign(1.0 if i == last or not settings.bias_only else 0.0)
        for variable in self.optimizer.variables:  # momentum and step count start afresh
            variable.assign(tf.zeros_like(variable))
        self.optimizer.learning_rate.assign(learning_rate)
        self._clip.assign(settings.clip_norm)
        self._sigma.assign(settings.noise_multiplier)
        total = self._run(tf.constant(x, tf.float32), tf.constant(y, tf.int64),
                          tf.constant(index, tf.int32), tf.constant(mask, tf.float32))
        return [w.astype(np.float32) for w in self.model.get_weights()], float(total)


# A per-process memo of compiled trainers, like tf.function's own trace cache: simulated
# sites share a worker process, and their settings differ in few ways.
@functools.lru_cache(maxsize=8)
def trainer_for(key: TrainerKey) -> HeadTrainer:
    return HeadTrainer(key)


def sample_batches(num_examples: int, settings: SgdSettings, rng: np.random.Generator,
                   num_views: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """Poisson samples for ``settings.steps`` steps, padded into one (steps, capacity) table.

    Returns row indices (into ``num_views`` stacked copies of the examples, one view drawn
    per sampled example), the 0/1 padding mask and how many examples were drawn in all.
    An empty sample is a row of padding: it still gets its noise.
    """
    n = num_examples
    drawn = [np.flatnonzero(rng.random(n) < settings.sampling_rate)
             for _ in range(settings.steps)]
    capacity = max(1, max((d.size for d in drawn), default=1))
    index = np.zeros((settings.steps, capacity), dtype=np.int32)
    mask = np.zeros((settings.steps, capacity), dtype=np.float32)
    for step, rows in enumerate(drawn):
        views = rng.integers(0, num_views, rows.size) if num_views > 1 else 0
        index[step, : rows.size] = rows + views * n
        mask[step, : rows.size] = 1.0
    return index, mask, int(sum(d.size for d in drawn))


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    weights: Sequence[np.ndarray],
    *,
    num_classes: int,
    head_width: int,
    settings: SgdSettings,
    rng: np.random.Generator,
    views: np.ndarray | None = None,
) -> tuple[list[np.ndarray], float]:
    """Run ``settings.steps`` Poisson-sampled steps; return new weights and mean train loss.

    ``views`` (K x n x d) are precomputed augmented views of the examples: each drawn example
    enters a step as one view chosen at random, so it still contributes one clipped gradient.
    The loss is the average per-example loss over the examples the steps drew, before each
    step's update (a training-progress figure, computed from private data).
    """
    n, dim = features.shape
    key = TrainerKey(dim, num_classes, head_width, settings.private, float(settings.momentum))
    stacked = features if views is None or len(views) == 0 else np.concatenate(
        [features[None], views]).reshape(-1, dim)
    index, mask, drawn = sample_batches(n, settings, rng, len(stacked) // n)
    expected_batch = settings.expected_batch or settings.sampling_rate * n
    # The step divides the summed gradient by the expected batch through the learning rate;
    # the proximal gradient mu * (w - w_global) belongs to the mean loss, so it is scaled up.
    new_weights, total = trainer_for(key).train(
        stacked, np.tile(labels, len(stacked) // n), weights, settings,
        settings.learning_rate / expected_batch, index, mask,
        proximal_weight=settings.proximal_mu * expected_batch)
    return new_weights, total / max(drawn, 1)


def microbatched_optimizer(settings: SgdSettings, batch_size: int) -> tf.keras.optimizers.Optimizer:
    """tensorflow-privacy's classic DP-SGD optimizer, one microbatch per example.

    fedtl does not train with it (it computes every per-example gradient, ~10x slower than
    fast clipping); `benchmarks/bench.py` uses it for the naive baseline.
    """
    return dp_optimizer_keras().DPKerasSGDOptimizer(
        l2_norm_clip=settings.clip_norm, noise_multiplier=settings.noise_multiplier,
        num_microbatches=batch_size, learning_rate=settings.learning_rate,
        momentum=settings.momentum)
