"""`fedtl client`: Flower's SuperNode for one site, with that site's data, state and budget.

Site-specific settings (image folder, state folder, budget, name) go into the SuperNode's node
config and never to the server. The folder is checked before connecting, the budget is
written to the site's ledger, and Flower's connection errors become messages a site operator
can act on.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from client.supernode import (HEARTBEAT_SECONDS, MAX_HEARTBEAT_SECONDS, MAX_POLL_SECONDS,
                              MIN_HEARTBEAT_SECONDS, MIN_POLL_SECONDS, POLL_SECONDS)
from common.config import (NODE_ACCOUNTANT, NODE_BASE_DTYPE, NODE_BUDGET, NODE_CACHE,
                           NODE_DATA, NODE_DELTA, NODE_NAME, NODE_POLICY, NODE_STATE)
from common.deploy.control import flower_env
from common.deploy.credentials import key_fingerprint
from common.data.images import list_dataset
from common.errors import REFUSED_BY_SERVER, ConfigError
from common.privacy.ledger import PrivacyLedger, SiteBudget
from common.privacy.policy import SitePolicy
from common.storage import write_atomically
from common.deploy.supervision import Supervised, stop_on_signals

POLICY_FILE = "site-policy.toml"  # the policy in force, as `fedtl client` resolved it
RUNTIME_SECRET = "runtime.secret"  # authenticates the site's worker to its SuperNode

INSECURE_WARNING = ("fedtl client --insecure: NO TLS and NO SITE KEY; this site's updates "
                    "travel in clear text. Only for experiments on a trusted network.")

REFUSED_EXIT = REFUSED_BY_SERVER


@dataclass(frozen=True)
class ClientOptions:
    """One site's settings; parsed once from `fedtl client`'s arguments."""

    server: str
    data: Path
    state: Path
    budget: SiteBudget
    name: str
    key: Path | None = None
    ca: Path | None = None
    insecure: bool = False
    cache: bool = True
    max_wait: float | None = None
    poll: float = POLL_SECONDS  # between the SuperNode's asks for work in a run
    heartbeat: float = HEARTBEAT_SECONDS  # between the SuperNode's signs of life
    policy: SitePolicy = SitePolicy()  # what this site grants any run (safe defaults)
    base_dtype: str = ""  # this site's arithmetic for the base ("": as the run says)

    def __post_init__(self) -> None:
        if not MIN_POLL_SECONDS <= self.poll <= MAX_POLL_SECONDS:
            raise ConfigError(f"--poll must be between {MIN_POLL_SECONDS} and "
                              f"{MAX_POLL_SECONDS} seconds. Found {self.poll}.")
        if not MIN_HEARTBEAT_SECONDS <= self.heartbeat <= MAX_HEARTBEAT_SECONDS:
            raise ConfigError(f"--heartbeat must be between {MIN_HEARTBEAT_SECONDS:g} and "
                              f"{MAX_HEARTBEAT_SECONDS:g} seconds (what Flower's SuperLink "
                              f"accepts). Found {self.heartbeat}.")
        if self.insecure and (self.key is not None or self.ca is not None):
            raise ConfigError("--insecure turns TLS and site authentication off; do not "
                              "combine it with --key or --ca")
        if not self.insecure:
            if self.key is None or self.ca is None:
                raise ConfigError("fedtl client needs the site's private key (--key FILE, "
                                  "from `fedtl keys`) and the server's CA certificate (--ca "
                                  "FILE), or --insecure for a throwaway experiment")
            for what, path in (("private key", self.key), ("CA certificate", self.ca)):
                if not Path(path).is_file():
                    raise ConfigError(f"the site's {what} {path} does not exist")

    @property
    def policy_file(self) -> Path:
        return Path(self.state).expanduser().resolve() / POLICY_FILE

    @property
    def public_key(self) -> Path | None:
        return None if self.key is None else Path(self.key).with_suffix(".pub")


def _free_port() -> int:
    # Each SuperNode serves a local API for its ClientApps; sites sharing a host need their own.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quote(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ConfigError(f"paths and names may not contain quotes or newlines: {value!r}")
    return f'"{value}"'


def supernode_command(opts: ClientOptions, runtime_port: int, secret: Path) -> list[str]:
    """Flower's SuperNode for the site: it runs no app code itself (``--isolation process``);
    the site's worker, holding ``secret``, takes its tasks from the Runtime API on
    ``runtime_port`` (loopback)."""
    node = {
        NODE_DATA: _quote(str(Path(opts.data).expanduser().resolve())),
        NODE_STATE: _quote(str(Path(opts.state).expanduser().resolve())),
        NODE_NAME: _quote(opts.name),
        NODE_BUDGET: repr(float(opts.budget.epsilon)),
        NODE_DELTA: repr(float(opts.budget.delta)),
        NODE_ACCOUNTANT: _quote(opts.budget.accountant),
        NODE_CACHE: "true" if opts.cache else "false",
        NODE_POLICY: _quote(str(opts.policy_file)),
        **({NODE_BASE_DTYPE: _quote(opts.base_dtype)} if opts.base_dtype else {}),
    }
    # Flower's SuperNode, with its poll shortened during runs (`client.supernode`).
    cmd = [sys.executable, "-m", "client.supernode", "--poll", repr(float(opts.poll)),
           "--heartbeat", repr(float(opts.heartbeat)),
           "--superlink", opts.server,
           "--host", "127.0.0.1", "--port", str(runtime_port),
           "--isolation", "process", "--superexec-auth-secret-file", str(secret),
           "--node-config", " ".join(f"{k}={v}" for k, v in node.items())]
    if opts.max_wait is not None:
        cmd += ["--max-wait-time", str(opts.max_wait)]
    if opts.insecure:
        return [*cmd, "--insecure"]
    return [*cmd, "--root-certificates", str(opts.ca),
            "--auth-supernode-private-key", str(opts.key)]


def write_policy(policy: SitePolicy, path: Path) -> None:
    """The policy every message of this site is held against (read by its ClientApp)."""
    import tomli_w

    text = tomli_w.dumps(policy.to_mapping()).encode()
    write_atomically(path, lambda handle: handle.write(text))


def describe(policy: SitePolicy) -> str:
    """One line an operator can check at start-up."""
    parts = ["DP required" if not policy.allow_no_dp else "runs without DP allowed",
             f"at most epsilon {policy.max_run_epsilon} per run",
             f"noise multiplier >= {policy.min_noise_multiplier}",
             f"counts at most {policy.example_counts}",
             f"figures at most {policy.site_metrics}",
             f"on a looser run: {policy.on_violation}"]
    if policy.require_secure_aggregation:
        parts.append("secure aggregation required")
    if policy.distributed_noise_sites:
        parts.append(f"one-shot release: 1/{policy.distributed_noise_sites} of its noise under "
                     f"secure aggregation over >= {policy.distributed_noise_sites} sites")
    if policy.allow_joint_personal_heads:
        parts.append("personal heads may be fitted here without noise (joint; never sent)")
    if policy.require_approval:
        parts.append("runs need approval (`fedtl approve`)"
                     + (f" or match {list(policy.approved_runs)}" if policy.approved_runs else ""))
    return "; ".join(parts)


# Flower tells a refused SuperNode only in its log (no exit code or API says it); these are
# its words in 1.39, and tests/test_daemons.py fails if Flower's source stops using them.
REFUSED_WORDS = ("Failed to activate SuperNode", "code: 2004")
# Its words when it shuts down. Flower 1.39 can log them and then hang (a heartbeat thread
# raises on a node the server has just removed), so the site ends it after ENDED_GRACE s.
ENDED_WORDS = "SuperNode terminated gracefully"
ENDED_GRACE = 15.0


def explain_line(line: str, opts: ClientOptions) -> str | None:
    """fedtl's own message for a SuperNode log line that matters to a site operator."""
    if any(words in line for words in REFUSED_WORDS):
        key = opts.public_key
        which = ""
        if key is not None and key.exists():
            which = f" ({key}, {key_fingerprint(key.read_bytes())})"
        return (f"fedtl client: REFUSED by the server at {opts.server}: this site's public "
                f"key{which} is not registered there. Send the .pub file to the coordinator; "
                "once the coordinator has added it (`fedtl sites add`), start this site "
                "again.")
    if "CERTIFICATE_VERIFY_FAILED" in line or "certificate verify failed" in line:
        return (f"fedtl client: the server at {opts.server} presented a certificate that "
                f"{opts.ca} does not vouch for; ask the coordinator for the right CA file.")
    return None


def worker_command(runtime_port: int, secret: Path, verbose: bool = False) -> list[str]:
    """The site's worker (`client.worker`), from this site's own installation."""
    return [sys.executable, "-m", "client.worker", "--runtime", f"127.0.0.1:{runtime_port}",
            "--secret-file", str(secret), "--parent", str(os.getpid()),
            *(["--verbose"] if verbose else [])]


def new_secret(path: Path) -> Path:
    """A fresh secret for this start (0600): only the site's user can take its tasks."""
    secret = secrets.token_bytes(32)
    write_atomically(path, lambda handle: handle.write(secret))
    return path


def run_site(opts: ClientOptions, log: logging.Logger, verbose: bool = False) -> int:
    """Check the site, then run its SuperNode and its worker until it stops; returns the
    SuperNode's exit code (`REFUSED_EXIT` if the server refused the site's key)."""
    listing = list_dataset(str(Path(opts.data).expanduser()))  # fails early, naming the folder
    state = Path(opts.state).expanduser()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    ledger = PrivacyLedger(state)
    ledger.set_budget(opts.budget)
    write_policy(opts.policy, opts.policy_file)
    summary = ledger.summary()
    log.info(f"fedtl client: site {opts.name}: {len(listing)} images in {len(listing.classes)} "
          f"classes; privacy budget epsilon {opts.budget.epsilon} at delta "
          f"{opts.budget.delta} ({opts.budget.accountant}, all runs composed), "
          f"{summary.spent:.3f} spent so far")
    log.info(f"fedtl client: site policy ({opts.policy_file}): {describe(opts.policy)}")
    if opts.insecure:
        log.warning(INSECURE_WARNING)
    port = _free_port()
    secret = new_secret(state / RUNTIME_SECRET)
    refused, ended = threading.Event(), threading.Event()

    def explain(line: str) -> str | None:
        if ENDED_WORDS in line:
            ended.set()
        message = explain_line(line, opts)
        if message and "REFUSED" in message:
            refused.set()
        return message

    env = flower_env(state / "flwr")
    supernode = Supervised("the SuperNode", supernode_command(opts, port, secret), log,
                           env=env, explain=explain, verbose=verbose).start()
    worker = Supervised("the site's worker", worker_command(port, secret, verbose), log, env=env,
                        keep_alive=True, verbose=verbose).start()
    stop_on_signals(supernode, worker)
    threading.Thread(target=lambda: ended.wait() and supernode.reap(ENDED_GRACE),
                     name="reaper", daemon=True).start()
    code = supernode.wait()
    worker.stop()
    worker.wait()
    if (code == 0 or ended.is_set()) and not supernode.asked_to_stop and not refused.is_set():
        # Flower's SuperNode ends quietly when the server unregisters it; say what it means.
        log.error(f"fedtl client: the server at {opts.server} ended this site's connection "
                  "(it was removed with `fedtl sites remove`, or the server shut down its "
                  "registration); ask the coordinator before starting it again")
        return REFUSED_EXIT
    return REFUSED_EXIT if refused.is_set() else code
