"""The server's record of its registered sites (name, Flower node id, key fingerprint) and of
where its running daemon can be reached.

Flower's SuperLink keeps node ids and public keys but not the names sites were registered
under (`flwr supernode list` shows none), so fedtl keeps them in its state folder: the
daemon's log and `fedtl sites list` then speak of "clinic-a", not of node 8123987.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.storage import exclusive_lock, write_json_atomically

SITES_FILE = "sites.json"
DAEMON_FILE = "daemon.json"
REMOVED_KEYS = "removed-sites"


@dataclass(frozen=True)
class RegisteredSite:
    name: str
    node_id: int
    fingerprint: str
    added: str  # UTC, ISO 8601


@dataclass(frozen=True)
class DaemonAddress:
    """What `fedtl sites` needs to reach a running `fedtl server` on this host."""

    control: str
    ca: str | None
    insecure: bool
    sites: str | None  # the daemon's --sites folder (None when --insecure)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path} cannot be read ({exc}); move it away and restart "
                          "`fedtl server`, which registers the --sites folder again") from exc


class SiteRegistry:
    """``<state>/sites.json``; every change under the state folder's lock, written atomically."""

    def __init__(self, state: Path) -> None:
        self.state = Path(state)
        self.path = self.state / SITES_FILE
        self._lock = self.state / f".{SITES_FILE}.lock"

    def sites(self) -> dict[str, RegisteredSite]:
        if not self.path.exists():
            return {}
        raw = _read_json(self.path, "the site registry")
        try:
            return {name: RegisteredSite(**entry) for name, entry in raw.items()}
        except (TypeError, AttributeError) as exc:
            raise ConfigError(f"the site registry {self.path} is damaged ({exc})") from exc

    def record(self, site: RegisteredSite) -> None:
        with exclusive_lock(self._lock):
            sites = self.sites()
            sites[site.name] = site
            self._write(sites)

    def get(self, name: str) -> RegisteredSite:
        sites = self.sites()
        if name not in sites:
            raise ConfigError(f"no site named {name!r} is registered on this server "
                              f"(registered: {', '.join(sorted(sites)) or 'none'})")
        return sites[name]

    def forget(self, name: str) -> RegisteredSite:
        with exclusive_lock(self._lock):
            gone = self.get(name)
            sites = self.sites()
            sites.pop(name)
            self._write(sites)
        return gone

    def name_of(self, node_id: int) -> str | None:
        try:
            sites = self.sites()
        except ConfigError:
            return None  # a log line must not fail over a damaged registry
        return next((s.name for s in sites.values() if s.node_id == node_id), None)

    def _write(self, sites: dict[str, RegisteredSite]) -> None:
        write_json_atomically(self.path, {name: asdict(s) for name, s in sorted(sites.items())})


def write_daemon_address(state: Path, address: DaemonAddress) -> None:
    write_json_atomically(Path(state) / DAEMON_FILE, asdict(address))


def read_daemon_address(state: Path) -> DaemonAddress:
    path = Path(state) / DAEMON_FILE
    if not path.exists():
        raise ConfigError(f"no `fedtl server` has started with --state {state} on this host "
                          f"({path} is missing); run `fedtl sites` where the server runs, "
                          "with its --state folder")
    try:
        return DaemonAddress(**_read_json(path, "the daemon's address file"))
    except TypeError as exc:
        raise ConfigError(f"{path} is damaged ({exc}); restart `fedtl server`") from exc
