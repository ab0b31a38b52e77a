"""Accuracy of a saved fedtl Keras model on an image folder."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.data.dicom import parse_window
from common.data.images import check_same_classes, list_dataset, load_images
from common.errors import DataError
from common.features.model import head_logits
from common.privacy.centring import centred_on_own_mean


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    n: int
    skipped: int
    classes: tuple[str, ...]
    per_class_accuracy: dict[str, float]  # recall of each class with images in the folder
    confusion: tuple[tuple[int, ...], ...]  # [true class][predicted class] image counts


def summarise(labels: np.ndarray, predicted: np.ndarray,
              classes: tuple[str, ...]) -> tuple[float, dict[str, float], np.ndarray]:
    """Accuracy, each present class's recall and the confusion matrix of integer labels."""
    k = len(classes)
    if labels.size and (labels.min() < 0 or max(labels.max(), predicted.max()) >= k):
        raise ValueError(f"labels and predictions must lie in 0..{k - 1}")
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {c: float(confusion[i, i] / confusion[i].sum())
                 for i, c in enumerate(classes) if confusion[i].sum()}
    accuracy = float(np.trace(confusion) / labels.size) if labels.size else float("nan")
    return accuracy, per_class, confusion


def evaluate_model(model_path: Path, data: str, *, skip_bad: bool = False,
                   dicom_window: str = "") -> Evaluation:
    """Load ``model_path`` with plain Keras and score it on the class folders of ``data``.

    Output index i is the i-th class folder in sorted order, as in training; if the run's
    report.json is beside the model, the folder's class names must match its classes and
    DICOM files are windowed as in training (unless ``dicom_window`` says otherwise).
    """
    model = load_model(model_path)
    scored = predict_folder(model, model_path, data, skip_bad=skip_bad,
                            dicom_window=dicom_window)
    accuracy, per_class, confusion = summarise(
        scored.labels, np.argmax(scored.probabilities, axis=1), scored.classes)
    return Evaluation(accuracy=accuracy, n=int(len(scored.labels)),
                      skipped=scored.skipped, classes=scored.classes,
                      per_class_accuracy=per_class,
                      confusion=tuple(tuple(int(v) for v in row) for row in confusion))


@dataclass(frozen=True)
class Scored:
    """A model's class probabilities for every readable image of a folder."""

    probabilities: np.ndarray
    labels: np.ndarray
    skipped: int
    classes: tuple[str, ...]


def load_model(model_path: Path) -> tf.keras.Model:
    """A saved fedtl model, or an error naming the file.

    Only the Keras zip format, loaded in safe mode: an HDF5 file (whatever its name) goes
    through tf-keras' legacy loader, which runs the code of Lambda layers, and safe mode
    refuses to deserialise code from a zip file, so a model file cannot run code here.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(f"model file {model_path} does not exist")
    if not zipfile.is_zipfile(model_path):
        raise DataError(f"{model_path} is not a Keras zip model file (.keras); fedtl loads "
                         "no other format (an HDF5 file could run code when loaded)")
    with zipfile.ZipFile(model_path) as archive:
        if "config.json" not in archive.namelist():
            raise DataError(f"{model_path} is a zip file but not a Keras model (no "
                             "config.json in it)")
    try:
        return tf.keras.models.load_model(model_path, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a file it cannot read
        raise DataError(f"{model_path} is not a Keras model fedtl can load safely: "
                         f"{exc}") from exc


def predict_folder(model: tf.keras.Model, model_path: Path, data: str, *,
                   skip_bad: bool = False, dicom_window: str = "") -> Scored:
    """``model``'s probabilities on the class folders of ``data`` (classes checked against
    the model's outputs and, if beside it, its run's report)."""
    listing = list_dataset(data)
    report = Path(model_path).parent / "report.json"
    centring = False
    if report.exists():
        settings = json.loads(report.read_text())["settings"]
        centring = settings.get("feature-centring") == "site"
        trained = settings.get("classes", "")
        check_same_classes(tuple(trained.split(",")), listing.classes, f"folder {data}")
        dicom_window = dicom_window or settings.get("dicom-window", "")
    outputs = int(model.output_shape[-1])
    if outputs != len(listing.classes):
        raise DataError(f"{data} has {len(listing.classes)} classes, the model predicts {outputs}")
    size = int(model.get_layer("resize").get_config()["height"])
    images = load_images(listing, size, skip_bad=skip_bad,
                         dicom_window=parse_window(dicom_window))
    pixels = images.pixels.astype(np.float32)
    probabilities = centred_probabilities(model, pixels) if centring else model.predict(
        pixels, batch_size=64, verbose=0)
    return Scored(probabilities=np.asarray(probabilities, dtype=np.float64),
                  labels=np.asarray(images.labels), skipped=len(images.skipped),
                  classes=listing.classes)


def centred_probabilities(model: tf.keras.Model, pixels: np.ndarray) -> np.ndarray:
    """The global model of a ``--feature-centring site`` run, whose head takes features
    centred on a site's own mean: the folder's own mean stands in for it, as a new site
    would centre its images (each site's personal model has its mean folded in instead)."""
    resize, base = model.get_layer("resize"), model.get_layer("frozen_base")
    features = np.concatenate([base(resize(pixels[i:i + 64]), training=False).numpy()
                               for i in range(0, len(pixels), 64)])
    head = [w for layer in model.layers if layer.name.startswith("head_")
            for w in layer.get_weights()]
    logits = head_logits(centred_on_own_mean(features), head)
    return tf.nn.softmax(logits).numpy()
