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
from common.model_card import JSON_FILE, MARKDOWN_FILE
from common.storage import write_atomically

FORMATS = ("savedmodel", "tflite")


def parse_formats(value: str) -> list[str]:
    """``savedmodel``, ``tflite`` or both comma-separated, checked before TensorFlow loads."""
    formats = list(dict.fromkeys(f.strip() for f in value.split(",") if f.strip()))
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"--format must be one or more of {FORMATS}, comma-separated. "
                              f"Found {fmt!r}." + (" ONNX needs tf2onnx, which fedtl does not "
                                                   "install (README, \"Working with your "
                                                   "tools\")." if fmt == "onnx" else ""))
    if not formats:
        raise ConfigError(f"--format is empty; give one or more of {FORMATS}")
    return formats


def export_model(model_path: Path, formats: list[str], out: Path) -> list[Path]:
    """Export the fedtl model at ``model_path`` in each of ``formats`` into folder ``out`` (its
    model card beside them); returns the exported paths. The model is loaded once. Nothing is
    left half-written on failure."""
    import tensorflow as tf

    from common.features.evaluation import load_model  # here: `parse_formats` runs before TF

    formats = parse_formats(",".join(formats))
    out = Path(out)
    if "savedmodel" in formats and (out / "savedmodel").exists():
        raise ConfigError(f"{out / 'savedmodel'} already exists; choose another --out")
    model = load_model(model_path)
    size = int(model.get_layer("resize").get_config()["height"])
    signature = tf.TensorSpec([None, size, size, 3], tf.float32, name="image")
    serve = tf.function(lambda image: model(image, training=False), input_signature=[signature])
    out.mkdir(parents=True, exist_ok=True)
    targets = []
    for fmt in formats:
        if fmt == "savedmodel":
            target = out / "savedmodel"
            staging = Path(tempfile.mkdtemp(dir=out, prefix=".savedmodel."))
            try:  # written beside, renamed when complete
                tf.saved_model.save(model, str(staging / "model"),
                                    signatures={"serving_default":
                                                serve.get_concrete_function()})
                (staging / "model").rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            target = out / "model.tflite"
            converter = tf.lite.TFLiteConverter.from_concrete_functions(
                [serve.get_concrete_function()], model)
            flatbuffer = converter.convert()
            write_atomically(target, lambda handle: handle.write(flatbuffer), mode=0o644)
        targets.append(target)
    for card in (JSON_FILE, MARKDOWN_FILE):
        if (Path(model_path).parent / card).is_file():
            shutil.copyfile(Path(model_path).parent / card, out / card)
    return targets
