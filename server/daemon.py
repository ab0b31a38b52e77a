"""`fedtl server`: Flower's SuperLink with fedtl's defaults, site registration and run recovery.

The SuperLink does the networking (gRPC Fleet API for sites, Control API for launching runs);
this wrapper only chooses safe settings, registers the sites' public keys, relaunches runs a
killed daemon left unfinished, and turns Flower's log lines about refused sites into
messages an operator can act on.
"""

from __future__ import annotations

import ast
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from common.config import RunConfig
from common.deploy.control import Control, ControlAddress, flower_bin, flower_env
from common.deploy.credentials import ServerCerts, key_fingerprint
from common.errors import ConfigError, FedtlError
from server.launch import project_dir, write_run_config
from common.deploy.supervision import Supervised, stop_on_signals
from server.run_registry import RUNNING, SERVER_STATE_ENV, RunRegistry

INSECURE_WARNING = """\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! fedtl server --insecure: NO TLS, NO SITE AUTHENTICATION.                    !!
!! Model updates travel in clear text and ANY machine that reaches this port   !!
!! can join the federation. Use only for experiments on a trusted network.     !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"""

_UNREGISTERED = re.compile(r"public key: (b'-----BEGIN PUBLIC KEY-----.*?')")
# Flower's SuperLink names a refused key only in its log; its words in 1.39 (a test fails if
# Flower's source stops using them).
UNREGISTERED_WORDS = "No SuperNode found with the given public key"


@dataclass(frozen=True)
class ServerOptions:
    """How the daemon runs; parsed once from `fedtl server`'s arguments."""

    state: Path
    certs: Path | None = None
    sites: Path | None = None
    insecure: bool = False
    fleet_address: str = "0.0.0.0:9092"
    control_host: str = "127.0.0.1"
    control_port: int = 9093

    def __post_init__(self) -> None:
        if not self.insecure and self.certs is None:
            raise ConfigError("fedtl server needs TLS certificates: --certs DIR (with ca.crt, "
                              "server.pem, server.key; `fedtl certs --out DIR` makes test "
                              "ones), or --insecure for a throwaway experiment")
        if self.insecure and (self.certs is not None or self.sites is not None):
            raise ConfigError("--insecure turns TLS and site authentication off; do not "
                              "combine it with --certs or --sites")
        if not self.insecure and self.sites is None:
            raise ConfigError("fedtl server needs the folder of registered sites' public keys "
                              "(--sites DIR with one <site>.pub per site, made by `fedtl keys`)")
        if self.sites is not None and not Path(self.sites).is_dir():
            raise ConfigError(f"sites folder {self.sites} does not exist")

    @property
    def control(self) -> ControlAddress:
        host = "127.0.0.1" if self.control_host in ("0.0.0.0", "::") else self.control_host
        if self.insecure:
            return ControlAddress(f"{host}:{self.control_port}", insecure=True)
        return ControlAddress(f"{host}:{self.control_port}",
                              ca=ServerCerts.in_folder(Path(str(self.certs))).ca)


def superlink_command(opts: ServerOptions) -> list[str]:
    cmd = [flower_bin("flower-superlink"),
           "--database", str(Path(opts.state) / "superlink.db"),
           "--fleet-api-address", opts.fleet_address,
           "--host", opts.control_host, "--port", str(opts.control_port),
           # Sites and servers here reach only package registries: never install at run time.
           "--disable-runtime-dependency-installation"]
    if opts.insecure:
        return [*cmd, "--insecure"]
    certs = ServerCerts.in_folder(Path(str(opts.certs)))
    return [*cmd, "--ssl-ca-certfile", str(certs.ca), "--ssl-certfile", str(certs.cert),
            "--ssl-keyfile", str(certs.key), "--enable-supernode-auth"]


def explain_line(line: str) -> str | None:
    """fedtl's own message for a SuperLink log line that matters to an operator, if any."""
    if UNREGISTERED_WORDS in line:
        match = _UNREGISTERED.search(line)
        who = "a site"
        if match:
            try:
                who = f"a site with key {key_fingerprint(ast.literal_eval(match.group(1)))}"
            except (ValueError, SyntaxError, FedtlError):
                pass
        return (f"fedtl server: REFUSED {who}: its public key is not registered. If it "
                "should join, put its .pub file in the --sites folder and restart the server.")
    return None


def register_sites(control: Control, sites: Path, out: TextIO) -> dict[str, int]:
    """Register every ``*.pub`` in ``sites`` (already registered keys are kept)."""
    registered: dict[str, int] = {}
    keys = sorted(Path(sites).glob("*.pub"))
    if not keys:
        print(f"fedtl server: warning: {sites} holds no <site>.pub; no site can join yet",
              file=out, flush=True)
    for key in keys:
        fingerprint = key_fingerprint(key.read_bytes())
        try:
            registered[key.stem] = control.register(key, key.stem)
            print(f"fedtl server: registered site {key.stem} ({fingerprint})", file=out,
                  flush=True)
        except FedtlError as exc:
            if "already in use" not in str(exc):
                raise
            print(f"fedtl server: site {key.stem} ({fingerprint}) was registered before",
                  file=out, flush=True)
    return registered


def relaunch_unfinished(control: Control, registry: RunRegistry, out: TextIO) -> None:
    """Launch again every run a killed daemon left unfinished; each resumes from its checkpoint."""
    runs, damaged = registry.scan()
    for problem in damaged:
        print(f"fedtl server: warning: a run record is damaged and was skipped ({problem}); "
              "move it away once you have looked at it", file=out, flush=True)
    for run in (r for r in runs if r.status == RUNNING):
        try:
            cfg = RunConfig.from_flower(run.settings)
        except FedtlError as exc:
            print(f"fedtl server: could not relaunch run {run.run_id}: its settings are "
                  f"invalid ({exc})", file=out, flush=True)
            registry.failed(run.run_id, str(exc))
            continue
        config_file = write_run_config(cfg, Path(registry.folder) / f"{run.run_id}.toml")
        try:
            flower_run = control.start(project_dir(), config_file)
            print(f"fedtl server: relaunched unfinished run {run.run_id} (output {run.out}, "
                  f"Flower run {flower_run}); it resumes after its last checkpointed round",
                  file=out, flush=True)
        except FedtlError as exc:
            print(f"fedtl server: could not relaunch unfinished run {run.run_id} (output "
                  f"{run.out}): {exc}", file=out, flush=True)


def _wait_for_control(control: Control, superlink: Supervised, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if superlink.returncode is not None:
            raise FedtlError("the SuperLink exited while starting (see its log above)")
        try:
            control.nodes()
            return
        except FedtlError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def serve(opts: ServerOptions, out: TextIO = sys.stdout) -> int:
    """Run the daemon until SIGINT/SIGTERM; returns the SuperLink's exit code."""
    state = Path(opts.state).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    if opts.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    env = flower_env(state / "flwr", **{SERVER_STATE_ENV: str(state)})
    superlink = Supervised("the SuperLink", superlink_command(opts), out, env=env,
                           explain=explain_line).start()
    stop_on_signals(superlink)
    try:
        with Control(opts.control) as control:
            _wait_for_control(control, superlink, timeout=120)
            if opts.sites is not None:
                register_sites(control, Path(opts.sites), out)
            relaunch_unfinished(control, RunRegistry(state), out)
            print(f"fedtl server: ready; sites connect to {opts.fleet_address}, runs are "
                  f"launched at {opts.control.address} (`fedtl run --server "
                  f"{opts.control.address} ...`)", file=out, flush=True)
    except BaseException:
        superlink.stop()
        raise
    return superlink.wait()
