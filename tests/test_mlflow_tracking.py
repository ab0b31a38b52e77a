"""`--mlflow URI`: a fedtl run as an MLflow run, checked by reading a local store back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow")  # the `mlflow` extra; installed with the dev group

from common.errors import ConfigError  # noqa: E402
from common.report import RoundRecord  # noqa: E402
from server.mlflow_tracking import RUN_FILE, MlflowLog  # noqa: E402


def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def read_back(uri: str, run_id: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client, client.get_run(run_id)


@pytest.mark.parametrize("kind", ["sqlite", "folder"])
def test_settings_rounds_and_files_land_in_one_mlflow_run_beside_the_store(
        tmp_path: Path, monkeypatch, kind: str) -> None:
    monkeypatch.chdir(tmp_path)  # artifacts must not follow the working folder
    uri = store(tmp_path)
    if kind == "folder":  # MLflow's plain-folder store, behind MLflow's own opt-in switch
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (tmp_path / "store" / "mlruns").as_uri()
    out = tmp_path / "runs" / "r1"
    log = MlflowLog(uri, "fedtl-test", out, "run-abc",
                    {"target-epsilon": 3.0, "classes": "a,b", "strategy": "fedavg"})
    log.round(RoundRecord(round=1, accuracy=0.55, mean_site_accuracy=0.5, epsilon_max=1.0,
                          site_accuracy={"clinic (A)": 0.4}), {"clinic (A)": 1.0})
    log.round(RoundRecord(round=2, accuracy=0.7, mean_site_accuracy=0.75, epsilon_max=2.0),
              {"clinic (A)": 2.0})
    for name in ("report.json", "model.keras", "accuracy.png", "checkpoint.npz"):
        (out / name).write_bytes(b"x")
    log.finish()
    client, run = read_back(uri, log.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "runs/r1"
    assert run.data.params == {"target-epsilon": "3.0", "classes": "a,b", "strategy": "fedavg"}
    assert run.data.tags["fedtl.run_id"] == "run-abc"
    history = client.get_metric_history(log.run_id, "accuracy/mean_site")
    assert {(m.step, m.value) for m in history} == {(1, 0.5), (2, 0.75)}
    assert client.get_run(log.run_id).data.metrics["site_epsilon/clinic _A_"] == 2.0
    assert {a.path for a in client.list_artifacts(log.run_id)} == {
        "report.json", "model.keras", "accuracy.png"}  # not the checkpoint
    assert (tmp_path / "store" / "mlruns").is_dir() and not (tmp_path / "mlruns").exists()


def test_a_resumed_run_logs_into_the_mlflow_run_it_began_and_a_failure_is_marked(
        tmp_path: Path) -> None:
    out = tmp_path / "r"
    first = MlflowLog(store(tmp_path), "fedtl", out, "run-1", {"rounds": 3})
    first.round(RoundRecord(round=1, accuracy=0.5), {})
    first.failed()
    assert read_back(store(tmp_path), first.run_id)[1].info.status == "FAILED"
    again = MlflowLog(store(tmp_path), "fedtl", out, "run-1", {"rounds": 3}, resume=True)
    assert again.run_id == first.run_id
    fresh = MlflowLog(store(tmp_path), "fedtl", out, "run-2", {"rounds": 3})
    assert fresh.run_id != first.run_id  # no checkpoint: a new run, whatever the folder holds
    assert (out / RUN_FILE).exists()


def test_an_unusable_uri_or_a_missing_extra_is_a_configuration_error(
        tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="--mlflow URI"):
        MlflowLog("nosuchscheme://x", "fedtl", tmp_path, "r", {})
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match="extra `mlflow`"):
        MlflowLog(store(tmp_path), "fedtl", tmp_path, "r", {})
