"""`fedtl server`: Flower's SuperLink with fedtl's defaults, site registration and run recovery.

The SuperLink does the networking (gRPC Fleet API for sites, Control API for launching runs);
this wrapper only chooses safe settings, registers the sites' public keys, relaunches runs a
killed daemon left unfinished, and turns Flower's log lines about refused sites into
messages an operator can act on.
"""

from __future__ import annotations

import ast
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.config import RunConfig
from common.deploy.control import Control, ControlAddress, flower_bin, flower_env
from common.deploy.credentials import ServerCerts, key_fingerprint
from common.errors import ConfigError, FedtlError
from server.launch import project_dir, write_run_config
from common.deploy.supervision import Supervised, stop_on_signals
from server.run_registry import RESUMABLE, SERVER_STATE_ENV, RunRegistry
from server.site_registry import (DaemonAddress, RegisteredSite, SiteRegistry, now,
                                  write_daemon_address)

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
# The SuperLink's INFO lines when a site connects or leaves (its words in 1.39, checked by a
# test like the one above).
_CONNECTED = re.compile(r"\[Fleet\.(Activate|Deactivate)Node\] (?:Activated|Deactivated) "
                        r"node_id=(\d+)")


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


def explain_line(line: str, name_of: Callable[[int], str | None] = lambda node: None
                 ) -> str | None:
    """fedtl's own message for a SuperLink log line that matters to an operator, if any
    (``name_of`` names a registered site by its node id)."""
    connected = _CONNECTED.search(line)
    if connected:
        node = int(connected.group(2))
        name = name_of(node)
        who = (f"site {name} (node {node})" if name
               else f"a site with no registered name (node {node})")
        return f"fedtl server: {who} {'connected' if connected.group(1) == 'Activate' else 'left'}"
    if UNREGISTERED_WORDS in line:
        match = _UNREGISTERED.search(line)
        who = "a site"
        if match:
            try:
                who = f"a site with key {key_fingerprint(ast.literal_eval(match.group(1)))}"
            except (ValueError, SyntaxError, FedtlError):
                pass
        return (f"fedtl server: REFUSED {who}: its public key is not registered. If it "
                "should join, add it with `fedtl sites add --state DIR --key FILE.pub` (no "
                "restart needed).")
    return None


def register_site(control: Control, key: Path, name: str, registry: SiteRegistry
                  ) -> RegisteredSite | None:
    """Register one site's public key under ``name``; None if the SuperLink knew it before
    (its earlier record stands)."""
    fingerprint = key_fingerprint(Path(key).read_bytes())
    try:
        node_id = control.register(Path(key), name)
    except FedtlError as exc:
        if "already in use" not in str(exc):
            raise
        return None
    site = RegisteredSite(name=name, node_id=node_id, fingerprint=fingerprint, added=now())
    registry.record(site)
    return site


def register_sites(control: Control, sites: Path, registry: SiteRegistry,
                   log: logging.Logger, nodes: list[dict] | None = None) -> dict[str, int]:
    """Register every ``*.pub`` in ``sites`` (already registered keys are kept).

    ``nodes`` is the SuperLink's node list, if the caller has it: a key this registry
    recorded under the same name, whose node is still registered there, is not sent again
    (each `flwr supernode register` is a process start; a restart would pay one per site).
    """
    registered: dict[str, int] = {}
    keys = sorted(Path(sites).glob("*.pub"))
    if not keys:
        log.warning(f"fedtl server: warning: {sites} holds no <site>.pub; no site can join "
                    "yet (add sites with `fedtl sites add`)")
    live = {int(n["node-id"]) for n in nodes or () if n.get("status") != "unregistered"}
    recorded = registry.sites()
    for key in keys:
        earlier = recorded.get(key.stem)
        if (earlier is not None and earlier.node_id in live
                and earlier.fingerprint == key_fingerprint(key.read_bytes())):
            log.info(f"fedtl server: site {key.stem} ({earlier.fingerprint}) was registered "
                     "before")
            continue
        site = register_site(control, key, key.stem, registry)
        if site is not None:
            registered[key.stem] = site.node_id
            log.info(f"fedtl server: registered site {key.stem} ({site.fingerprint})")
        else:
            log.info(f"fedtl server: site {key.stem} ({key_fingerprint(key.read_bytes())}) "
                     "was registered before")
    return registered


def relaunch_unfinished(control: Control, registry: RunRegistry, log: logging.Logger) -> None:
    """Launch again every run a killed daemon left unfinished; each resumes from its checkpoint."""
    runs, damaged = registry.scan()
    for problem in damaged:
        log.warning(f"fedtl server: warning: a run record is damaged and was skipped "
                    f"({problem}); move it away once you have looked at it")
    for run in (r for r in runs if r.status in RESUMABLE):
        try:
            cfg = RunConfig.from_flower(run.settings)
        except FedtlError as exc:
            log.error(f"fedtl server: could not relaunch run {run.run_id}: its settings are "
                      f"invalid ({exc})")
            registry.failed(run.run_id, str(exc))
            continue
        config_file = write_run_config(cfg, Path(registry.folder) / f"{run.run_id}.toml")
        try:
            flower_run = control.start(project_dir(), config_file)
            log.info(f"fedtl server: relaunched unfinished run {run.run_id} (output "
                     f"{run.out}, Flower run {flower_run}); it resumes after its last "
                     "checkpointed round")
        except FedtlError as exc:
            log.error(f"fedtl server: could not relaunch unfinished run {run.run_id} "
                      f"(output {run.out}): {exc}")


def _wait_for_control(control: Control, superlink: Supervised, timeout: float) -> list[dict]:
    """The SuperLink's node list, once its Control API answers."""
    deadline = time.monotonic() + timeout
    while True:
        if superlink.returncode is not None:
            raise FedtlError("the SuperLink exited while starting (see its log above)")
        try:
            return control.nodes()
        except FedtlError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def serve(opts: ServerOptions, log: logging.Logger) -> int:
    """Run the daemon until SIGINT/SIGTERM; returns the SuperLink's exit code."""
    state = Path(opts.state).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    if opts.insecure:
        log.warning(INSECURE_WARNING)
    sites = SiteRegistry(state)
    env = flower_env(state / "flwr", **{SERVER_STATE_ENV: str(state)})
    superlink = Supervised("the SuperLink", superlink_command(opts), log, env=env,
                           explain=lambda line: explain_line(line, sites.name_of)).start()
    stop_on_signals(superlink)
    try:
        with Control(opts.control) as control:
            nodes = _wait_for_control(control, superlink, timeout=120)
            if opts.sites is not None:
                register_sites(control, Path(opts.sites), sites, log, nodes)
            relaunch_unfinished(control, RunRegistry(state), log)
            control_at = opts.control
            write_daemon_address(state, DaemonAddress(
                control=control_at.address, insecure=control_at.insecure,
                ca=None if control_at.ca is None else str(Path(control_at.ca).resolve()),
                sites=None if opts.sites is None else str(Path(opts.sites).resolve())))
            log.info(f"fedtl server: ready; sites connect to {opts.fleet_address}, runs are "
                     f"launched at {opts.control.address} (`fedtl run --server "
                     f"{opts.control.address} ...`), sites are added and removed with "
                     f"`fedtl sites add|remove|list --state {state}`")
    except BaseException:
        superlink.stop()
        raise
    return superlink.wait()
