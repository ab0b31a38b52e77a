"""A run's TensorBoard event files hold its rounds' figures, readable by TensorBoard."""

from pathlib import Path

import pytest

from common.report import RoundRecord
from server.tensorboard import FOLDER, TensorBoardLog


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    import tensorflow as tf

    values: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "scalars":
                    values.setdefault(v.tag, {})[event.step] = float(tf.make_ndarray(v.tensor))
    return values


def test_each_round_is_a_step_with_its_accuracy_and_epsilon(tmp_path: Path) -> None:
    log = TensorBoardLog(tmp_path, {"target-epsilon": 3.0, "strategy": "fedavg"})
    log.round(RoundRecord(round=1, accuracy=0.55, mean_site_accuracy=0.5,
                          worst_site_accuracy=0.4, epsilon_max=1.0,
                          site_accuracy={"site-0": 0.4, "site-1": 0.6},
                          sites_trained=["site-0", "site-1"]), {"site-0": 1.0, "site-1": 0.9})
    log.round(RoundRecord(round=2, accuracy=0.6, mean_site_accuracy=0.625, epsilon_max=2.0,
                          unseen_accuracy=0.3),
              {"site-0": 2.0})
    log.close()
    scalars = read_scalars(tmp_path / FOLDER)
    assert scalars["accuracy/mean_site"] == {1: 0.5, 2: 0.625}
    assert scalars["accuracy/weighted"] == {1: pytest.approx(0.55), 2: pytest.approx(0.6)}
    assert scalars["epsilon/max_site"] == {1: 1.0, 2: 2.0}
    assert scalars["site_accuracy/site-1"] == {1: pytest.approx(0.6)}
    assert scalars["site_epsilon/site-0"] == {1: 1.0, 2: 2.0}
    assert scalars["accuracy/unseen_site"] == {2: pytest.approx(0.3)}
    assert scalars["train/sites_trained"] == {1: 2.0, 2: 0.0}
    assert "epsilon/client_level" not in scalars  # a figure the run does not have is left out
    assert "strategy | fedavg" in read_text(tmp_path / FOLDER)["settings"]


def read_text(folder: Path) -> dict[str, str]:
    import tensorflow as tf

    texts = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "text":
                    texts[v.tag] = tf.make_ndarray(v.tensor).item().decode()
    return texts
