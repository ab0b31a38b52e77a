"""`fedtl run`: launch a training run on a running `fedtl server` and follow it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import tomli_w

from common.config import RunConfig
from common.deploy.control import Control, ControlAddress
from common.errors import ConfigError, FedtlError, RunFailedError
from common.report import Report


def project_dir() -> Path:
    """The Flower App (this project: pyproject.toml with [tool.flwr.app]) that runs are built from."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise FedtlError(f"cannot find fedtl's Flower App at {root}; `fedtl run` needs the "
                         "project checkout (install it with `uv sync` from the checkout)")
    return root


def write_run_config(cfg: RunConfig, path: Path) -> Path:
    """The run's settings as a TOML file for `flwr run --run-config` (no shell quoting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(cfg.to_flower()))
    return path


def wait_finished(control: Control, run_id: int, timeout: float = 120.0) -> tuple[str, str]:
    """The run's final status (its log stream can end a moment before the status is set)."""
    deadline = time.monotonic() + timeout
    while True:
        status, details = control.status(run_id)
        if status.startswith("finished") or time.monotonic() > deadline:
            return status, details
        time.sleep(1.0)


def launch(cfg: RunConfig, target: ControlAddress, *, follow: bool = True,
           out: TextIO = sys.stdout) -> Report | None:
    """Submit ``cfg`` to the server; with ``follow``, stream its log until it ends.

    Returns the run's report when the output folder is visible from here (the server writes
    it on its own host), else None.
    """
    if not cfg.classes:
        raise ConfigError("a deployed run needs its class list: --classes a,b,c or "
                          "--classes-from FOLDER (a folder whose subfolders are the classes)")
    # The ServerApp reads and writes these on the server's host, from its own working folder.
    for option, path in (("--out", cfg.out), ("--public", cfg.public)):
        if path and not Path(path).is_absolute():
            raise ConfigError(f"{option} must be an absolute path on the server's host. "
                              f"Found {path!r}.")
    if cfg.unread_public:
        print(f"fedtl run: {cfg.unread_public}", file=out, flush=True)
    with tempfile.TemporaryDirectory(prefix="fedtl-run-") as tmp, Control(target) as control:
        config_file = write_run_config(cfg, Path(tmp) / "run-config.toml")
        run_id = control.start(project_dir(), config_file)
        print(f"fedtl run: the server accepted the run (Flower run {run_id})", file=out,
              flush=True)
        if not follow:
            return None
        subprocess.run(control.log_command(run_id), env=control.env, stdout=out,
                       stderr=subprocess.STDOUT)
        status, details = wait_finished(control, run_id)
        if not status.endswith(":completed"):
            raise RunFailedError(f"the run ended {status or 'without a status'} on the server at "
                             f"{target.address}" + (f": {details}" if details else "")
                             + " (its log above says why)")
    report = Path(cfg.out) / "report.json"
    if follow and report.exists():
        return Report.read(report)
    return None
