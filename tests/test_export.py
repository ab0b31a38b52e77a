"""`fedtl export`'s formats are checked before TensorFlow loads (the export itself is in
tests/test_e2e_simulation.py, on the digits run's model)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.errors import ConfigError
from common.features.export import parse_formats

from .conftest import PROJECT


def test_one_or_both_formats_are_accepted_once_each_in_the_order_given() -> None:
    assert parse_formats("tflite") == ["tflite"]
    assert parse_formats("tflite, savedmodel,tflite") == ["tflite", "savedmodel"]


@pytest.mark.parametrize("value, said", [("onnx", "tf2onnx"), ("savedmodel,pt", "'pt'"),
                                         (" , ", "empty")])
def test_an_unknown_or_missing_format_is_refused_naming_it(value: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        parse_formats(value)


def test_a_wrong_format_is_refused_before_tensorflow_loads(tmp_path) -> None:
    probe = ("import sys; from common.cli.main import main; "
             "code = main(['export', '--model', 'm.keras', '--format', 'onnx', '--out', 'x']); "
             "print(code, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=PROJECT, timeout=120)
    assert done.stdout.split() == ["4", "False"], done.stderr
    assert "tf2onnx" in done.stderr
