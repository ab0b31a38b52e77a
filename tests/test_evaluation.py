"""`fedtl evaluate` refuses what it cannot score, naming it."""

from pathlib import Path

import pytest

from common.cli import main
from common.errors import FedtlError
from common.evaluation import evaluate_model


def test_missing_model_file_is_named(tmp_path: Path, image_folder: Path) -> None:
    with pytest.raises(FedtlError, match="model file .*nope.keras does not exist"):
        evaluate_model(tmp_path / "nope.keras", str(image_folder))


def test_a_file_that_is_not_a_keras_model_is_refused(tmp_path: Path,
                                                     image_folder: Path) -> None:
    fake = tmp_path / "model.keras"
    fake.write_text("not a model")
    with pytest.raises(FedtlError, match="is not a Keras model file"):
        evaluate_model(fake, str(image_folder))


def test_cli_reports_errors_in_one_line_and_exits_2(tmp_path: Path, capsys) -> None:
    code = main(["evaluate", "--model", str(tmp_path / "m.keras"), "--data", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("fedtl: error: model file") and "Traceback" not in err
