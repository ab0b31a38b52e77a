"""DP-SGD training of the head: the one module that imports tensorflow_privacy.

Each step draws a Poisson sample of the site's examples (every example independently with
probability ``sampling_rate``), sums their per-example-clipped gradients, adds Gaussian noise
of standard deviation ``noise_multiplier * clip_norm`` and divides by the *expected* batch
size. That is exactly the subsampled Gaussian mechanism the accountant composes
(Abadi et al., arXiv 1607.00133), so the epsilon fedtl reports is the one it spends.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

# tensorflow_privacy's package __init__ imports the Estimator API that TF >= 2.16 removed;
# this flag is its own escape hatch, after which we import the submodules we use directly.
sys.skip_tf_privacy_import = True  # type: ignore[attr-defined]
from tensorflow_privacy.privacy.fast_gradient_clipping import layer_registry  # noqa: E402
from tensorflow_privacy.privacy.keras_models import dp_keras_model  # noqa: E402

from common.model import head_layers  # noqa: E402
from common.sgd import SgdSettings  # noqa: E402

__all__ = ["SgdSettings", "make_head", "padded_batch_size", "train_head"]


def make_head(feature_dim: int, num_classes: int, head_width: int, settings: SgdSettings,
              weights: Sequence[np.ndarray], num_examples: int) -> tf.keras.Model:
    """A compiled head holding ``weights``; a fast-clipping DP model when private."""
    layers = [tf.keras.Input((feature_dim,)), *head_layers(num_classes, head_width, seed=0)]
    if settings.private:
        model: tf.keras.Model = dp_keras_model.DPSequential(
            l2_norm_clip=settings.clip_norm,
            noise_multiplier=settings.noise_multiplier,
            layer_registry=layer_registry.make_default_layer_registry(),
            layers=layers,
        )
    else:
        model = tf.keras.Sequential(layers)
    model.set_weights(list(weights))
    model.compile(
        # SUM, not mean: the noisy sum is divided by the expected batch size through the
        # learning rate, as Poisson-sampled DP-SGD requires (the actual size is private).
        loss=tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.SUM
        ),
        optimizer=tf.keras.optimizers.SGD(
            learning_rate=settings.learning_rate / (settings.sampling_rate * num_examples),
            momentum=settings.momentum,
        ),
        run_eagerly=False,
    )
    return model


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    weights: Sequence[np.ndarray],
    *,
    num_classes: int,
    head_width: int,
    settings: SgdSettings,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], float]:
    """Run ``settings.steps`` Poisson-sampled steps; return new weights and mean train loss.

    The loss is the average per-example loss over the examples the steps drew, before each
    step's update (a training-progress figure, computed from private data).
    """
    n = len(labels)
    model = make_head(features.shape[1], num_classes, head_width, settings, weights, n)
    x = tf.constant(features, dtype=tf.float32)
    y = tf.constant(labels, dtype=tf.int64)
    step = tf.function(
        model.train_step,
        input_signature=[(tf.TensorSpec([None, features.shape[1]], tf.float32),
                          tf.TensorSpec([None], tf.int64),
                          tf.TensorSpec([None], tf.float32))],
    )
    capacity = padded_batch_size(n, settings.sampling_rate)
    total_loss, drawn = 0.0, 0
    for _ in range(settings.steps):
        idx = np.flatnonzero(rng.random(n) < settings.sampling_rate)
        # tensorflow-privacy's clipping retraces for every new batch shape (~1 s each), so
        # Poisson batches are padded to a fixed size with zero-weight rows, which add
        # nothing to the clipped sum. An empty sample still gets its noise.
        size = capacity if idx.size <= capacity else n
        padded = np.zeros(size, dtype=np.int64)
        padded[: idx.size] = idx
        mask = np.zeros(size, dtype=np.float32)
        mask[: idx.size] = 1.0
        model.reset_metrics()  # Keras' loss tracker is a running mean; we want this batch's
        logs = step((tf.gather(x, padded), tf.gather(y, padded), tf.constant(mask)))
        total_loss += float(logs["loss"])
        drawn += idx.size
    return [w.astype(np.float32) for w in model.get_weights()], total_loss / max(drawn, 1)


def padded_batch_size(num_examples: int, sampling_rate: float) -> int:
    """A batch capacity that a Poisson sample exceeds with probability below 1e-9."""
    mean = num_examples * sampling_rate
    std = float(np.sqrt(mean * (1.0 - sampling_rate)))
    return int(min(num_examples, np.ceil(mean + 6.5 * std + 1)))
