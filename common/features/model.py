"""The Keras model of the design: a frozen, truncated VGG16 base and a small trainable head."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.features.public_stats import RECIPE, feature_stats
from common.storage import cached_arrays
from common.features.weights import VGG16_CONV_LAYERS, fingerprint, load_conv_weights

if TYPE_CHECKING:
    import tensorflow as tf

# TensorFlow is imported inside the functions that build Keras models: a site answering an
# evaluation from its feature cache never needs it, and importing it costs ~10 s per message
# (Flower 1.39 starts a fresh ClientApp process for every message).

PREPROCESSING = f"vgg16-caffe-bgr-mean|gap|l2|standardize:{RECIPE}|scale:1/sqrt(d)"
_FEATURE_DIM = {"block1_pool": 64, "block2_pool": 128, "block3_pool": 256,
                "block4_pool": 512, "block5_pool": 512}
# ImageNet channel means of Keras' "caffe" preprocessing, in BGR order.
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def cpu_has_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 arithmetic units (AVX-512 BF16 or AMX): there mixed
    bfloat16 nearly doubles VGG16's speed; without them it halves it."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def compute_dtype(choice: str) -> str:
    """The dtype the base computes in for ``choice`` (auto: bfloat16 where the CPU has it)."""
    if choice == "auto":
        return "bfloat16" if cpu_has_bfloat16() else "float32"
    return choice


@dataclass(frozen=True)
class BaseSpec:
    """What determines the frozen feature extractor.

    ``compute_dtype`` is how this machine runs the convolutions (bfloat16 where its CPU has
    bf16 units); it is not part of the fingerprint: the weights, preprocessing and public
    statistics every site shares are the same either way, only the arithmetic differs.
    """

    weights: str
    image_size: int
    base_layer: str
    compute_dtype: str = "float32"

    @property
    def for_saving(self) -> BaseSpec:
        """The float32 base a saved model carries (portable, whatever computed it here)."""
        return dataclasses.replace(self, compute_dtype="float32")

    @property
    def feature_dim(self) -> int:
        return _FEATURE_DIM[self.base_layer]


@dataclass(frozen=True)
class FrozenBase:
    """A built feature extractor and the fingerprint every update must carry."""

    spec: BaseSpec
    model: tf.keras.Model
    fingerprint: str


def layers_up_to(base_layer: str) -> list[str]:
    """The conv layers that feed ``base_layer`` (the rest of VGG16 is never built)."""
    block = int(base_layer[len("block")])
    return [name for name in VGG16_CONV_LAYERS if int(name[len("block")]) <= block]


def base_fingerprint(spec: BaseSpec, weights: dict[str, list[np.ndarray]] | None = None) -> str:
    """The fingerprint of ``spec``'s base, without building the Keras model."""
    weights = load_conv_weights(spec.weights) if weights is None else weights
    return fingerprint(
        weights, layers_up_to(spec.base_layer), preprocessing=PREPROCESSING,
        image_size=spec.image_size, base_layer=spec.base_layer,
    )


def build_base(spec: BaseSpec, stats_cache: Path | None = None) -> FrozenBase:
    """Image (RGB, 0..255, ``image_size`` square) -> L2-normalised pooled VGG16 features.

    The public standardisation statistics are computed in float32 (every site must share
    them exactly) and, with ``stats_cache``, kept there under the base's fingerprint, so a
    process builds the same base again without re-running the public images.
    """
    import tensorflow as tf

    weights = load_conv_weights(spec.weights)
    fingerprint = base_fingerprint(spec, weights)
    trunk = _trunk(spec, weights)

    def pooled(trunk: tf.keras.Model) -> tuple[tf.Tensor, tf.Tensor]:
        inputs = tf.keras.Input((spec.image_size, spec.image_size, 3), name="image")
        x = trunk(_caffe_preprocessing()(inputs))
        x = tf.keras.layers.GlobalAveragePooling2D(name="gap", dtype="float32")(x)
        # Per-example normalisation: scales features without statistics from private data.
        return inputs, tf.keras.layers.UnitNormalization(name="l2_normalize")(x)

    def featurize(images: np.ndarray) -> np.ndarray:
        model = tf.keras.Model(*pooled(trunk))
        return model.predict(images, batch_size=64, verbose=0)

    mean, variance = public_statistics(fingerprint, stats_cache,
                                       lambda: feature_stats(featurize, spec.image_size))
    if spec.compute_dtype == "bfloat16":
        trunk = _in_bfloat16(trunk)
    inputs, features = pooled(trunk)
    x = tf.keras.layers.Normalization(mean=mean, variance=variance, name="public_standardize")(
        features)
    # Standardised features have norm ~sqrt(d); bring it to ~1 so one clip norm fits all layers.
    x = tf.keras.layers.Rescaling(1.0 / np.sqrt(spec.feature_dim), name="unit_scale")(x)
    model = tf.keras.Model(inputs, x, name="frozen_base")
    model.trainable = False
    return FrozenBase(spec=spec, model=model, fingerprint=fingerprint)


def _trunk(spec: BaseSpec, weights: dict[str, list[np.ndarray]]) -> tf.keras.Model:
    """Keras' VGG16 up to ``spec.base_layer`` with the given ImageNet weights, float32."""
    import tensorflow as tf

    vgg = tf.keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(spec.image_size, spec.image_size, 3)
    )
    for name in layers_up_to(spec.base_layer):
        vgg.get_layer(name).set_weights(weights[name])
    return tf.keras.Model(vgg.input, vgg.get_layer(spec.base_layer).output, name="vgg16")


def _in_bfloat16(trunk: tf.keras.Model) -> tf.keras.Model:
    """The same trunk computing in bfloat16 (weights kept in float32: Keras' mixed policy),
    per layer, so no process-wide Keras policy is changed."""
    import tensorflow as tf

    def mixed(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        return type(layer).from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})

    clone = tf.keras.models.clone_model(trunk, clone_function=mixed)
    clone.set_weights(trunk.get_weights())
    return clone


def public_statistics(fingerprint: str, cache: Path | None,
                      compute: Callable[[], tuple[np.ndarray, np.ndarray]]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The public standardisation statistics of the base ``fingerprint``: read from
    ``cache`` if a sane copy is there, else computed (and kept there)."""
    def sane(saved: dict[str, np.ndarray]) -> bool:
        mean, variance = saved["mean"], saved["variance"]
        return (mean.shape == variance.shape and mean.ndim == 1
                and bool(np.all(np.isfinite(mean))) and bool(np.all(variance > 0)))

    def fresh() -> dict[str, np.ndarray]:
        mean, variance = compute()
        return {"mean": mean, "variance": variance}

    kept = cached_arrays(Path(cache) / f"{fingerprint}.npz" if cache is not None else None,
                         fresh, sane)
    return kept["mean"].astype(np.float32), kept["variance"].astype(np.float32)


def _caffe_preprocessing() -> tf.keras.layers.Layer:
    import tensorflow as tf

    # Keras' preprocess_input is a Python function, not a layer; a frozen 1x1 convolution
    # does the same (RGB->BGR, minus the ImageNet mean) and survives saving to .keras.
    kernel = np.zeros((1, 1, 3, 3), dtype=np.float32)
    for out_channel in range(3):
        kernel[0, 0, 2 - out_channel, out_channel] = 1.0
    layer = tf.keras.layers.Conv2D(
        3, 1, name="vgg16_preprocess", trainable=False,
        kernel_initializer=tf.keras.initializers.Constant(kernel),
        bias_initializer=tf.keras.initializers.Constant(-_CAFFE_MEAN_BGR),
    )
    return layer


def head_layers(num_classes: int, head_width: int, seed: int) -> list[tf.keras.layers.Layer]:
    """Dense(head_width, relu) + Dense(num_classes) logits; a linear head if width is 0."""
    import tensorflow as tf

    init = tf.keras.initializers.GlorotUniform(seed=seed)
    layers: list[tf.keras.layers.Layer] = []
    if head_width > 0:
        layers.append(tf.keras.layers.Dense(head_width, activation="relu",
                                            kernel_initializer=init, name="head_hidden"))
    # Zero logits to start: a random start is extra noise that few DP steps cannot wash out.
    layers.append(tf.keras.layers.Dense(num_classes, kernel_initializer="zeros",
                                        name="head_logits"))
    return layers


def initial_head_weights(feature_dim: int, num_classes: int, head_width: int,
                         seed: int) -> list[np.ndarray]:
    """The head's starting weights, the same on every machine for the same seed."""
    if head_width == 0:  # zero logits (see `head_layers`): a server need not load TensorFlow
        return [np.zeros(shape, np.float32)
                for shape in head_shapes(feature_dim, num_classes, head_width)]
    import tensorflow as tf

    head = tf.keras.Sequential([tf.keras.Input((feature_dim,)),
                                *head_layers(num_classes, head_width, seed)])
    return [w.astype(np.float32) for w in head.get_weights()]


def head_shapes(feature_dim: int, num_classes: int, head_width: int) -> list[tuple[int, ...]]:
    """Shapes of the head's weight arrays, in the order the model lists them."""
    shapes: list[tuple[int, ...]] = []
    width_in = feature_dim
    for width_out in ([head_width] if head_width > 0 else []) + [num_classes]:
        shapes += [(width_in, width_out), (width_out,)]
        width_in = width_out
    return shapes


def full_model(base: FrozenBase, head_weights: Sequence[np.ndarray], num_classes: int,
               head_width: int) -> tf.keras.Model:
    """Base + head + softmax taking RGB images of any size, as saved for users."""
    import tensorflow as tf

    inputs = tf.keras.Input((None, None, 3), name="image")
    size = base.spec.image_size
    x = tf.keras.layers.Resizing(size, size, name="resize")(inputs)
    x = base.model(x)
    head = head_layers(num_classes, head_width, seed=0)
    for layer in head:
        x = layer(x)
    outputs = tf.keras.layers.Softmax(name="probabilities")(x)
    model = tf.keras.Model(inputs, outputs, name="fedtl_vgg16")
    weights_iter = iter(head_weights)
    for layer in head:
        layer.set_weights([next(weights_iter), next(weights_iter)])
    return model


def head_logits(features: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
    """The head of `head_layers` applied in numpy (Dense, ReLU between; no TensorFlow needed)."""
    x = np.asarray(features, dtype=np.float32)
    pairs = [(weights[i], weights[i + 1]) for i in range(0, len(weights), 2)]
    for depth, (kernel, bias) in enumerate(pairs):
        x = x @ kernel + bias
        if depth < len(pairs) - 1:
            x = np.maximum(x, 0.0)
    return x


def predict_classes(features: np.ndarray, weights: Sequence[np.ndarray], *, num_classes: int,
                    head_width: int) -> np.ndarray:
    """Class index per feature row under the head ``weights``."""
    shapes = head_shapes(features.shape[1], num_classes, head_width)
    if [tuple(w.shape) for w in weights] != shapes:
        raise ValueError(f"head weights have shapes {[w.shape for w in weights]}, not {shapes}")
    return np.argmax(head_logits(features, weights), axis=1)


def save_model(model: Any, path: Path) -> None:
    """Save a Keras model to ``path`` through a temporary file, so no half-written model stays."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
