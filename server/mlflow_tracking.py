"""An MLflow run per fedtl run: settings as params, per-round figures as metrics, and the
report, model, model card and plots as artifacts (`--mlflow URI`, optional extra `mlflow`).

MLflow's explicit `MlflowClient` is used rather than `mlflow.start_run`, whose active run is
process-global state. A restarted run keeps logging into the MLflow run it began (its id is
kept in the output folder beside the checkpoint).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.report import RoundRecord, round_metrics
from common.storage import write_json_atomically

RUN_FILE = "mlflow_run.json"
INSTALL_HINT = ("--mlflow needs the optional extra `mlflow`: `uv sync --extra mlflow` or "
                "`pip install 'fedtl[mlflow]'`")
# MLflow's limit on a param's value; a longer class list is cut (the report has it whole).
_PARAM_CHARS = 6000
# Characters MLflow admits in metric names; anything else in a site's name becomes "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")
# What a run's output folder holds that belongs in MLflow (checkpoints and caches do not).
ARTIFACTS = ("report.json", "model.keras", "model_card.json", "model_card.md",
             "accuracy.png", "sites.png", "epsilon.png")


def _artifacts_beside(uri: str) -> str | None:
    """For a local SQLite store, artifacts in ``mlruns`` beside the database file, not in
    MLflow's default ``./mlruns`` under whatever folder the command ran in."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None  # a tracking server chooses its own artifact store
    return (Path(uri[len(prefix):]).expanduser().resolve().parent / "mlruns").as_uri()


class MlflowLog:
    """Logs one fedtl run to the MLflow tracking server or store at ``uri``."""

    def __init__(self, uri: str, experiment: str, out: Path, run_id: str,
                 settings: Mapping[str, Any], resume: bool = False) -> None:
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise ConfigError(INSTALL_HINT) from None
        self._out = Path(out)
        try:
            self._client = client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            experiment_id = (found.experiment_id if found is not None else
                             client.create_experiment(experiment, _artifacts_beside(uri)))
            self.run_id = (resume and self._resumed()) or self._start(experiment_id, run_id,
                                                                      settings)
        except ConfigError:
            raise
        except Exception as exc:  # MLflow raises its own and its stores' errors
            raise ConfigError(f"MLflow at {uri!r} cannot be used ({type(exc).__name__}: "
                              f"{exc}); check the --mlflow URI (e.g. sqlite:///mlflow.db "
                              "or http://host:5000)") from exc

    def _resumed(self) -> str | None:
        kept = self._out / RUN_FILE
        return str(json.loads(kept.read_text())["run_id"]) if kept.exists() else None

    def _start(self, experiment_id: str, run_id: str, settings: Mapping[str, Any]) -> str:
        from mlflow.entities import Param

        # The last two folders name it: `runs/<time>`, or a comparison's `<variant>/run-2`.
        name = "/".join(self._out.resolve().parts[-2:])
        run = self._client.create_run(experiment_id, run_name=name,
                                      tags={"fedtl.run_id": run_id,
                                            "fedtl.out": str(self._out.resolve())})
        params = [Param(k, str(v)[:_PARAM_CHARS]) for k, v in sorted(settings.items())]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self._client.log_batch(run.info.run_id, params=params[start:start + 100])
        write_json_atomically(self._out / RUN_FILE, {"run_id": run.info.run_id})
        return str(run.info.run_id)

    def round(self, record: RoundRecord, epsilon_by_site: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_UNSAFE.sub("_", tag), value, now, record.round)
                   for tag, value in round_metrics(record, epsilon_by_site).items()]
        self._client.log_batch(self.run_id, metrics=metrics)

    def finish(self) -> None:
        """The run's files as artifacts; the MLflow run marked finished."""
        for name in ARTIFACTS:
            if (self._out / name).exists():
                self._client.log_artifact(self.run_id, str(self._out / name))
        self._client.set_terminated(self.run_id, "FINISHED")

    def failed(self) -> None:
        self._client.set_terminated(self.run_id, "FAILED")
