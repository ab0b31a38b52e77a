"""`fedtl evaluate` refuses what it cannot score, naming it."""

from pathlib import Path

import pytest

from common.cli import main
from common.errors import FedtlError
from common.features.evaluation import evaluate_model


def test_missing_model_file_is_named(tmp_path: Path, image_folder: Path) -> None:
    with pytest.raises(FedtlError, match="model file .*nope.keras does not exist"):
        evaluate_model(tmp_path / "nope.keras", str(image_folder))


def test_a_file_that_is_not_a_keras_model_is_refused(tmp_path: Path,
                                                     image_folder: Path) -> None:
    fake = tmp_path / "model.keras"
    fake.write_text("not a model")
    with pytest.raises(FedtlError, match="is not a Keras zip model file"):
        evaluate_model(fake, str(image_folder))


def test_an_hdf5_model_whose_lambda_would_run_code_is_refused_unloaded(
        tmp_path: Path, image_folder: Path) -> None:
    import tensorflow as tf

    ran = tmp_path / "code-ran"
    inputs = tf.keras.Input((4,))
    # A Lambda layer's Python code runs again when the legacy HDF5 loader rebuilds it.
    outputs = tf.keras.layers.Lambda(
        lambda x, marker=str(ran): x + 0 * len(open(marker, "w").name))(inputs)
    hostile = tmp_path / "model.keras"
    tf.keras.Model(inputs, outputs).save(tmp_path / "m.h5")
    (tmp_path / "m.h5").rename(hostile)  # an HDF5 file under a .keras name
    ran.unlink(missing_ok=True)  # building the model ran it once, here
    with pytest.raises(FedtlError, match="not a Keras zip model file"):
        evaluate_model(hostile, str(image_folder))
    assert not ran.exists()


def test_a_keras_zip_with_code_inside_is_refused_by_safe_mode(tmp_path: Path,
                                                              image_folder: Path) -> None:
    import tensorflow as tf

    inputs = tf.keras.Input((4,))
    outputs = tf.keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = tmp_path / "lambda.keras"
    tf.keras.Model(inputs, outputs).save(path)
    with pytest.raises(FedtlError, match="safely"):
        evaluate_model(path, str(image_folder))


def test_cli_reports_errors_in_one_line_and_exits_with_the_data_error_code(
        tmp_path: Path, capsys) -> None:
    code = main(["evaluate", "--model", str(tmp_path / "m.keras"), "--data", str(tmp_path)])
    assert code == 5
    err = capsys.readouterr().err
    assert err.startswith("fedtl: error: model file") and "Traceback" not in err


def test_summary_counts_each_true_and_predicted_pair_and_recalls_present_classes() -> None:
    import numpy as np

    from common.features.evaluation import summarise

    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 0, 1, 1, 0])
    accuracy, recall, confusion = summarise(labels, predicted, ("a", "b", "c", "d"))
    assert confusion.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert accuracy == pytest.approx(4 / 6)
    assert recall == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 0.0})  # "d" has no images
    with pytest.raises(ValueError, match="0..3"):
        summarise(labels, np.array([0, 1, 0, 1, 1, 4]), ("a", "b", "c", "d"))


def test_the_text_report_lists_every_class_and_the_matrix_only_while_it_fits() -> None:
    from common.cli.main import CONFUSION_MAX_CLASSES, evaluation_table

    text = evaluation_table(("airplane", "automobile", "bird"),
                            ((50, 3, 1), (2, 60, 0), (0, 0, 0))).splitlines()
    assert text[1].split() == ["0", "airplane", "0.926", "54"]
    assert text[3].split() == ["2", "bird", "-", "0"]  # no images: no recall
    assert text[-5] == "confusion matrix (rows: true class, columns: predicted class)"
    assert text[-4].split() == ["0", "1", "2"]
    assert [row.split() for row in text[-3:]] == [["0", "50", "3", "1"],
                                                  ["1", "2", "60", "0"], ["2", "0", "0", "0"]]
    k = CONFUSION_MAX_CLASSES + 1
    wide = evaluation_table(tuple(f"c{i}" for i in range(k)),
                            tuple(tuple(int(i == j) for j in range(k)) for i in range(k)))
    assert wide.splitlines()[-1] == f"confusion matrix: {k} classes, in --json"
    assert len(wide.splitlines()) == k + 2
