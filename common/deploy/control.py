"""Talking to a SuperLink's Control API through Flower's own `flwr` CLI.

The CLI reads connections from ``$FLWR_HOME/config.toml``; fedtl writes one connection into a
private Flower home per use, so an operator's own ``~/.flwr`` is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from common.errors import ConfigError, FedtlError

CONNECTION = "fedtl"
DEFAULT_CONTROL = "127.0.0.1:9093"


def flower_bin(name: str) -> str:
    """A Flower executable from the environment fedtl runs in (not whatever is on PATH)."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FedtlError(f"cannot find Flower's `{name}` next to {sys.executable}; install "
                         "fedtl's dependencies (uv sync) in this environment")
    return found


def flower_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    """The environment for a Flower process: its own Flower home, Flower's tools on PATH."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


@dataclass(frozen=True)
class ControlAddress:
    """Where a SuperLink's Control API listens and how to trust it."""

    address: str = DEFAULT_CONTROL
    ca: Path | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.insecure == (self.ca is not None):
            raise ConfigError("give the server's CA certificate (--ca FILE) or, for a server "
                              "started with --insecure, --insecure; not both, not neither")
        if self.ca is not None and not Path(self.ca).is_file():
            raise ConfigError(f"CA certificate {self.ca} does not exist")


def stage_app(app: Path, into: Path) -> Path:
    """A copy of the Flower App's own files in ``into``: its pyproject.toml and the Python
    files of the packages the pyproject names (what runs on the server).

    `flwr run DIR` walks every file under DIR before it filters them (Flower 1.39): in a
    checkout with its .venv that is ~70,000 files and 6-8 s a run; the copy has ~150.
    """
    pyproject = app / "pyproject.toml"
    try:
        packages = tomllib.loads(pyproject.read_text())["tool"]["hatch"]["build"][
            "targets"]["wheel"]["packages"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise FedtlError(f"cannot read the Flower App's packages from {pyproject} "
                         f"([tool.hatch.build.targets.wheel] packages): {exc}") from exc
    into.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pyproject, into / "pyproject.toml")
    for package in packages:
        for source in (app / package).rglob("*.py"):
            target = into / source.relative_to(app)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


class Control:
    """Runs `flwr` commands against one SuperLink; use as a context manager."""

    def __init__(self, target: ControlAddress) -> None:
        self.target = target
        self._home = Path(tempfile.mkdtemp(prefix="fedtl-flwr-"))
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "{target.address}"']
        if target.insecure:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{Path(str(target.ca)).resolve()}"')
        (self._home / "config.toml").write_text("\n".join(lines) + "\n")

    def __enter__(self) -> Control:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        shutil.rmtree(self._home, ignore_errors=True)

    def command(self, *args: str) -> list[str]:
        return [flower_bin("flwr"), *args]

    @property
    def env(self) -> dict[str, str]:
        return flower_env(self._home)

    def _json(self, *args: str, timeout: float = 120) -> dict:
        done = subprocess.run(self.command(*args, "--format", "json"), env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        text = done.stdout.strip()
        start = text.find("{")
        try:
            result = json.loads(text[start:]) if start >= 0 else {}
        except ValueError:
            result = {}
        if done.returncode != 0 or not result.get("success", False):
            detail = result.get("error-message") or (done.stderr.strip() or text)[-800:]
            raise FedtlError(f"`flwr {' '.join(args)}` failed against the server at "
                             f"{self.target.address}: {detail}")
        return result

    def nodes(self) -> list[dict]:
        return list(self._json("supernode", "list", CONNECTION).get("nodes", []))

    def register(self, public_key: Path, name: str) -> int:
        """Register a site's public key; returns its node id."""
        result = self._json("supernode", "register", str(public_key), CONNECTION,
                            "--name", name)
        return int(result["node-id"])

    def unregister(self, node_id: int) -> None:
        """Remove a site: its key no longer lets it connect (Flower keeps the node's record,
        marked unregistered)."""
        self._json("supernode", "unregister", str(node_id), CONNECTION)

    def start(self, app: Path, run_config: Path) -> int:
        """Submit a run of ``app``; returns Flower's run id."""
        staged = stage_app(app, self._home / "app")
        result = self._json("run", str(staged), CONNECTION, "--run-config", str(run_config),
                            timeout=300)
        return int(result["run-id"])

    def log_command(self, run_id: int) -> list[str]:
        """`flwr log` following a run until it ends."""
        return self.command("log", str(run_id), CONNECTION, "--stream")

    def status(self, run_id: int) -> tuple[str, str]:
        """A run's status (e.g. ``finished:completed``, ``finished:failed``) and details,
        as Flower's Control API states it (not read from its log text)."""
        runs = self._json("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
        if not runs:
            raise ConfigError(f"the server at {self.target.address} knows no run {run_id}")
        return str(runs[0].get("status", "")), str(runs[0].get("status-details", ""))
