"""Hand a saved fedtl model to other runtimes: a TensorFlow SavedModel (TF Serving) or a
TensorFlow Lite flatbuffer (phones, edge devices).

ONNX is not offered: the converter, tf2onnx, is not among fedtl's locked dependencies and
its support for TensorFlow 2.21 is unverified here (README, "Working with your tools").
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from common.errors import ConfigError
from common.features.evaluation import load_model
from common.model_card import JSON_FILE, MARKDOWN_FILE
from common.storage import write_atomically

FORMATS = ("savedmodel", "tflite")


def export_model(model_path: Path, fmt: str, out: Path) -> Path:
    """Export the fedtl model at ``model_path`` as ``fmt`` into folder ``out`` (its model card
    beside it); returns the exported path. Nothing is left half-written on failure."""
    import tensorflow as tf

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}. Found {fmt!r}."
                          + (" ONNX needs tf2onnx, which fedtl does not install (README, "
                             "\"Working with your tools\")." if fmt == "onnx" else ""))
    model = load_model(model_path)
    size = int(model.get_layer("resize").get_config()["height"])
    signature = tf.TensorSpec([None, size, size, 3], tf.float32, name="image")
    serve = tf.function(lambda image: model(image, training=False), input_signature=[signature])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "savedmodel":
        target = out / "savedmodel"
        if target.exists():
            raise ConfigError(f"{target} already exists; choose another --out")
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".savedmodel."))
        try:  # written beside, renamed when complete
            tf.saved_model.save(model, str(staging / "model"),
                                signatures={"serving_default": serve.get_concrete_function()})
            (staging / "model").rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        target = out / "model.tflite"
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [serve.get_concrete_function()], model)
        flatbuffer = converter.convert()
        write_atomically(target, lambda handle: handle.write(flatbuffer), mode=0o644)
    for card in (JSON_FILE, MARKDOWN_FILE):
        if (Path(model_path).parent / card).is_file():
            shutil.copyfile(Path(model_path).parent / card, out / card)
    return target
