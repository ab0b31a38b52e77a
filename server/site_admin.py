"""`fedtl sites add|remove|list`: the registered sites of a running `fedtl server`.

Flower's SuperLink registers and unregisters SuperNodes while it runs, so adding a hospital
does not mean restarting the server. The key file is also kept in the daemon's --sites folder,
so a restarted daemon registers the same sites; a removed site's key is moved aside (to
``<state>/removed-sites/``), not deleted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.deploy.control import Control, ControlAddress
from common.deploy.credentials import key_fingerprint
from common.errors import ConfigError, FedtlError
from server.daemon import register_site
from server.site_registry import (REMOVED_KEYS, DaemonAddress, RegisteredSite, SiteRegistry,
                                  read_daemon_address)


@dataclass(frozen=True)
class SiteStatus:
    """A row of `fedtl sites list`: a registered site as the SuperLink sees it now."""

    name: str
    node_id: int
    status: str  # Flower's words: registered (never connected), online, offline
    since: str  # when it came online or went offline ("" if never)
    fingerprint: str


def _control(daemon: DaemonAddress) -> ControlAddress:
    return ControlAddress(daemon.control, ca=None if daemon.ca is None else Path(daemon.ca),
                          insecure=daemon.insecure)


@contextlib.contextmanager
def _reaching(daemon: DaemonAddress, state: Path) -> Iterator[Control]:
    """The daemon's Control API; a failure says which daemon and what to check first."""
    try:
        with Control(_control(daemon)) as control:
            yield control
    except FedtlError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise FedtlError(f"the fedtl server with state {state} did not answer at "
                         f"{daemon.control} (is it running?): {exc}") from exc


def _sites_folder(daemon: DaemonAddress, state: Path) -> Path:
    if daemon.insecure or daemon.sites is None:
        raise ConfigError(f"the server with state {state} runs with --insecure: it has no site "
                          "authentication, so any site may connect and none is registered; "
                          "restart it with --certs and --sites to control who joins")
    return Path(daemon.sites)


def _valid_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or not name.isprintable():
        raise ConfigError(f"site name {name!r} must be a plain file name")
    return name


def add_site(state: Path, key: Path, name: str | None = None) -> RegisteredSite:
    """Register ``key`` (a site's ``.pub``) on the running daemon and keep it in its --sites
    folder; the site may connect at once and takes part in the next run."""
    state, key = Path(state).expanduser(), Path(key).expanduser()
    daemon = read_daemon_address(state)
    folder = _sites_folder(daemon, state)
    name = _valid_name(name or key.stem)
    if not key.is_file():
        raise ConfigError(f"site key {key} does not exist (make one with `fedtl keys`)")
    fingerprint = key_fingerprint(key.read_bytes())  # refuses a file that is not a key
    registry = SiteRegistry(state)
    known = registry.sites()
    if name in known:
        raise ConfigError(f"a site named {name!r} is registered already (key "
                          f"{known[name].fingerprint}); remove it first or choose --name")
    kept = folder / f"{name}.pub"
    if kept.exists() and key_fingerprint(kept.read_bytes()) != fingerprint:
        raise ConfigError(f"{kept} holds another key for {name!r}; move it away first")
    with _reaching(daemon, state) as control:
        site = register_site(control, key, name, registry)
    if site is None:
        raise ConfigError(f"the server knows the key {fingerprint} already (under another "
                          "name, or removed: Flower does not take a removed key back; make the "
                          "site a new key pair with `fedtl keys`)")
    if not kept.exists():
        shutil.copyfile(key, kept)
    return site


def remove_site(state: Path, name: str) -> RegisteredSite:
    """Unregister a site on the running daemon; its key no longer lets it connect."""
    state = Path(state).expanduser()
    daemon = read_daemon_address(state)
    folder = _sites_folder(daemon, state)
    registry = SiteRegistry(state)
    site = registry.get(name)
    with _reaching(daemon, state) as control:
        control.unregister(site.node_id)
    registry.forget(name)
    kept = folder / f"{name}.pub"
    if kept.exists():
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = state / REMOVED_KEYS / f"{name}-{stamp}.pub"
        aside.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.move(str(kept), aside)
    return site


def list_sites(state: Path) -> list[SiteStatus]:
    """Every site registered by name, with its connection status from the SuperLink; nodes
    the SuperLink knows but fedtl never named (an --insecure daemon's) are listed unnamed."""
    state = Path(state).expanduser()
    daemon = read_daemon_address(state)
    with _reaching(daemon, state) as control:
        nodes = {int(n["node-id"]): n for n in control.nodes()}
    named = SiteRegistry(state).sites()
    rows = []
    for site in named.values():
        node = nodes.pop(site.node_id, {})
        rows.append(_row(site.name, site.node_id, node, site.fingerprint))
    for node_id, node in nodes.items():
        if node.get("status") not in ("unregistered", "deleted"):
            rows.append(_row("", node_id, node, ""))
    return sorted(rows, key=lambda r: (r.name == "", r.name, r.node_id))


def _row(name: str, node_id: int, node: dict, fingerprint: str) -> SiteStatus:
    status = str(node.get("status", "unknown"))
    since = node.get("online-at") if status == "online" else node.get("offline-at")
    return SiteStatus(name=name, node_id=node_id, status=status, since=str(since or ""),
                      fingerprint=fingerprint)
