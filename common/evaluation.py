"""Accuracy of a saved fedtl Keras model on an image folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.data import check_same_classes, list_dataset, load_images
from common.errors import DataError, FedtlError


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    n: int
    skipped: int
    classes: tuple[str, ...]
    per_class_accuracy: dict[str, float]


def evaluate_model(model_path: Path, data: str, *, skip_bad: bool = False) -> Evaluation:
    """Load ``model_path`` with plain Keras and score it on the class folders of ``data``.

    Output index i is the i-th class folder in sorted order, as in training; if the run's
    report.json is beside the model, the folder's class names must match its classes.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FedtlError(f"model file {model_path} does not exist")
    try:
        model = tf.keras.models.load_model(model_path)
    except Exception as exc:  # Keras raises many types for a file it cannot read
        raise FedtlError(f"{model_path} is not a Keras model file: {exc}") from exc
    listing = list_dataset(data)
    report = model_path.parent / "report.json"
    if report.exists():
        trained = json.loads(report.read_text())["settings"].get("classes", "")
        check_same_classes(tuple(trained.split(",")), listing.classes, f"folder {data}")
    outputs = int(model.output_shape[-1])
    if outputs != len(listing.classes):
        raise DataError(f"{data} has {len(listing.classes)} classes, the model predicts {outputs}")
    size = int(model.get_layer("resize").get_config()["height"])
    images = load_images(listing, size, skip_bad=skip_bad)
    predicted = np.argmax(model.predict(images.pixels.astype(np.float32), batch_size=64,
                                        verbose=0), axis=1)
    correct = predicted == images.labels
    per_class = {c: float(np.mean(correct[images.labels == i]))
                 for i, c in enumerate(listing.classes) if np.any(images.labels == i)}
    return Evaluation(accuracy=float(np.mean(correct)), n=int(len(correct)),
                      skipped=len(images.skipped), classes=listing.classes,
                      per_class_accuracy=per_class)
