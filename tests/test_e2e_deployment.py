"""End to end, deployed: `fedtl server` and `fedtl client` processes on loopback, TLS and site keys.

One daemon serves the whole module; each test bounds its own waits and every process is killed
at the end. Runs use the bundled digits written as site folders (`fedtl demo-data`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from dataclasses import asdict
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common.privacy.accounting import Mechanism, composed_epsilon
from common.privacy.ledger import LedgerEvent, PrivacyLedger, RunHeader, SiteBudget
from server.checkpoint import load_checkpoint

from .conftest import PROJECT
from .processes import Proc, fedtl_args, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

GOOD = ("site-1", "site-2", "site-3")
SITE_BUDGET = 20.0  # room for the module's runs at target epsilon 3 each
# Each site's own policy: the good sites release exact held-out figures (the tests check
# accuracy on ~120 held-out digits, where noised figures would be too rough); site-3
# refuses, rather than tightens, a run that asks for less privacy than it allows.
POLICY_FLAGS = {"site-1": ["--site-metrics", "exact"], "site-2": ["--site-metrics", "exact"],
                "site-3": ["--site-metrics", "exact", "--on-violation", "refuse"]}
REPORT_KEYS = {"settings", "base", "versions", "rounds", "final", "data", "timing", "run_id"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fedtl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(fedtl_args(*args), capture_output=True, text=True, timeout=timeout)


class World:
    """Certificates, keys, site folders, the daemon and the site processes of the module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fleet = f"127.0.0.1:{free_port()}"
        self.control_port = free_port()
        self.procs: dict[str, Proc] = {}
        from common.deploy.credentials import make_site_keys
        from common.data.demo import write_demo_sites

        assert fedtl("certs", "--out", str(root / "certs")).returncode == 0
        (root / "sites").mkdir()
        # What `fedtl keys` and `fedtl demo-data` do, in this process (a CLI start each).
        for name in (*GOOD, "spent", "poison", "intruder"):
            keys = make_site_keys(root / "keys", name)
            if name != "intruder":
                (root / "sites" / f"{name}.pub").write_bytes(keys.public.read_bytes())
        write_demo_sites(root / "data", 3)

    @property
    def control(self) -> str:
        return f"127.0.0.1:{self.control_port}"

    def start_server(self) -> Proc:
        proc = Proc("server", fedtl_args(
            "server", "--state", str(self.root / "server-state"),
            "--certs", str(self.root / "certs"), "--sites", str(self.root / "sites"),
            "--address", self.fleet, "--control-port", str(self.control_port)),
            self.root / "server.log")
        self.procs["server"] = proc
        return proc

    def site_args(self, name: str, data: str, budget: float = SITE_BUDGET) -> list[str]:
        return fedtl_args("client", "--server", self.fleet, "--data", str(self.root / data),
                          "--state", str(self.root / "state" / name), "--budget", str(budget),
                          "--key", str(self.root / "keys" / f"{name}.key"),
                          "--ca", str(self.root / "certs" / "ca.crt"), "--name", name,
                          *POLICY_FLAGS.get(name, []))

    def start_site(self, name: str, data: str | None = None,
                   budget: float = SITE_BUDGET) -> Proc:
        data = data or f"data/{name}"
        proc = Proc(name, self.site_args(name, data, budget), self.root / f"{name}.log")
        self.procs[name] = proc
        return proc

    def run(self, out: str, *extra: str, detach: bool = False,
            timeout: float = 1200) -> subprocess.CompletedProcess:
        # These runs pin DP-SGD's per-round mechanics (a charge per round, resumed rounds,
        # SecAgg+ rounds); the one-shot round runs the same apps end to end in simulation.
        head = [] if "--head-method" in extra else ["--head-method", "sgd"]
        args = ["run", "--server", self.control, "--ca", str(self.root / "certs" / "ca.crt"),
                "--classes-from", str(self.root / "data" / "site-1"),
                "--out", str(self.root / out), *head, *extra]
        return fedtl(*args, *(["--detach"] if detach else []), timeout=timeout)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.kill()


def wait_ready(proc: Proc) -> None:
    proc.wait_for("fedtl server: ready", timeout=180)


def wait_online(world: World, proc: Proc) -> None:
    proc.wait_for(r"SuperNode ID: \d+", timeout=120)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    w = World(tmp_path_factory.mktemp("deploy"))
    server = w.start_server()
    try:
        wait_ready(server)
        for site in [w.start_site(name) for name in GOOD]:  # their TensorFlow loads overlap
            wait_online(w, site)
        yield w
    finally:
        w.stop_all()


def report_of(world: World, out: str) -> dict:
    return json.loads((world.root / out / "report.json").read_text())


def test_the_daemon_refuses_to_start_without_certificates_unless_insecure(tmp_path) -> None:
    done = fedtl("server", "--state", str(tmp_path / "s"))
    assert done.returncode == 4 and "--certs" in done.stderr and "--insecure" in done.stderr


def test_an_unregistered_site_is_refused_with_a_clear_message_on_both_sides(world) -> None:
    intruder = Proc("intruder", world.site_args("intruder", "data/site-1"),
                    world.root / "intruder.log")
    world.procs["intruder"] = intruder
    assert intruder.popen.wait(timeout=180) == 3
    assert "REFUSED by the server" in intruder.text()
    said = world.procs["server"].text()
    intruder_pub = (world.root / "keys" / "intruder.pub").read_bytes()
    from common.deploy.credentials import key_fingerprint

    assert f"REFUSED a site with key {key_fingerprint(intruder_pub)}" in said


POISON = textwrap.dedent('''\
    import os, sys, threading
    from pathlib import Path
    import numpy as np
    from flwr.app import ArrayRecord
    from client.client_app import make_client_app
    from client.worker import SiteWorker

    counter = Path(os.environ["FEDTL_POISON_COUNTER"])
    honest = make_client_app()

    def poisoned(message, context):
        reply = honest(message, context)
        if message.metadata.message_type == "train" and not reply.has_error():
            n = int(counter.read_text()) if counter.exists() else 0
            counter.write_text(str(n + 1))
            arrays = reply.content["arrays"].to_numpy_ndarrays()
            mode = ("nan", "shape", "norm")[n % 3]
            if mode == "nan":
                arrays[0][0, 0] = np.nan
            elif mode == "shape":
                arrays[0] = arrays[0][:-1]
            else:
                arrays = [a + 1e6 for a in arrays]
            reply.content["arrays"] = ArrayRecord(arrays)
        return reply

    runtime, secret = sys.argv[1], Path(sys.argv[2]).read_bytes()
    SiteWorker(runtime, secret, app=poisoned).serve(threading.Event())
''')


def start_poisoned_site(world: World) -> list[Proc]:
    """A registered site whose machine runs a tampered worker (its owner's choice) that
    sends NaN, a wrong shape and a huge update in turn, beside Flower's own SuperNode."""
    state = world.root / "state" / "poison"
    state.mkdir(parents=True, exist_ok=True)
    # Its folder is site-2's, whose features the runs before extracted: the same images'
    # features, copied as that site's operator could (CI time; extraction is tested above).
    for cache in ("features", "public-stats"):
        if (world.root / "state" / "site-2" / cache).is_dir():
            shutil.copytree(world.root / "state" / "site-2" / cache, state / cache,
                            dirs_exist_ok=True)
    secret = state / "runtime.secret"
    secret.write_bytes(os.urandom(32))
    port = free_port()
    env = dict(os.environ, FLWR_HOME=str(state / "flwr"),
               FEDTL_POISON_COUNTER=str(world.root / "poison-count"))
    node_config = (f'data="{world.root / "data" / "site-2"}" state="{state}" '
                   f'site-name="poison" budget=4.0')
    supernode = Proc("poison", [
        str(Path(sys.executable).parent / "flower-supernode"), "--superlink", world.fleet,
        "--port", str(port), "--isolation", "process", "--superexec-auth-secret-file",
        str(secret), "--root-certificates", str(world.root / "certs" / "ca.crt"),
        "--auth-supernode-private-key", str(world.root / "keys" / "poison.key"),
        "--node-config", node_config], world.root / "poison.log", env=env)
    (world.root / "poison-worker.py").write_text(POISON)
    worker = Proc("poison-worker", [sys.executable, str(world.root / "poison-worker.py"),
                                    f"127.0.0.1:{port}", str(secret)],
                  world.root / "poison-worker.log", env={**env, "PYTHONPATH": str(PROJECT)})
    world.procs.update({"poison": supernode, "poison-worker": worker})
    return [supernode, worker]


def spent_site(world: World) -> Proc:
    """A site whose budget an earlier run used up, started once and left running: a killed
    site's SuperNode session outlives it on the SuperLink for a while, so a restart under the
    same key could not reconnect at once."""
    if "spent" not in world.procs:
        spend_all_of(world.root / "state" / "spent", SiteBudget(1.0))
        wait_online(world, world.start_site("spent", data="data/site-3", budget=1.0))
    return world.procs["spent"]


def spend_all_of(state: Path, budget: SiteBudget) -> None:
    """An earlier run that used up the site's whole budget, as its ledger would record it."""
    sigma, steps = 1.0, 1
    while composed_epsilon([Mechanism(0.5, sigma, steps)], delta=budget.delta) < budget.epsilon:
        steps *= 2
    ledger = PrivacyLedger(state)
    ledger.set_budget(budget)
    with ledger.transaction() as book:
        book.append("an-earlier-run", [LedgerEvent("dp-sgd", 0.5, sigma, steps)],
                    RunHeader(target_epsilon=100.0, delta=budget.delta, accountant="rdp",
                              public_count=100, noise_multiplier=sigma))


def test_an_added_site_trains_in_a_secagg_run_that_recovers_a_dropout_and_removal_ends_it(
        world) -> None:
    # One run for two paths (CI time). The intruder above was refused; the coordinator now
    # admits its key, without a restart, and it trains in the next run. That run uses
    # SecAgg+, and the spent site takes part in its key exchange (Flower's mod answers for
    # it), then declines to train: a dropout mid-round, after its masks are in the others' sums.
    state = str(world.root / "server-state")
    added = fedtl("sites", "add", "--state", state, "--key",
                  str(world.root / "keys" / "intruder.pub"))
    assert added.returncode == 0, added.stdout + added.stderr
    assert (world.root / "sites" / "intruder.pub").exists()  # a restart registers it again
    newcomer = world.start_site("intruder", "data/site-1")
    spent = spent_site(world)
    wait_online(world, newcomer)
    world.procs["server"].wait_for(r"site intruder \(node \d+\) connected", timeout=60)
    listed = {r["name"]: r for r in json.loads(fedtl("sites", "list", "--state", state,
                                                     "--json").stdout)}
    assert {*GOOD, "intruder", "spent"} <= set(listed)
    assert listed["intruder"]["status"] == "online"
    mark = len(spent.text())
    done = world.run("run-s", "--rounds", "1", "--min-sites", "5", "--round-timeout", "300",
                     "--target-epsilon", "3", "--secure-aggregation")
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    report = report_of(world, "run-s")
    assert report["guarantees"]["secure_aggregation"]["on"] is True
    assert [r["round"] for r in report["rounds"]] == [1]
    trained = [*GOOD, "intruder"]
    for r in report["rounds"]:
        assert sorted(r["sites_trained"]) == sorted(trained)
        assert len(r["declined"]) == 1  # the spent site, recovered from by SecAgg+
    final = report["final"]
    assert final["accuracy"] > 0.3  # one private round on ten digits: chance is 0.1
    assert set(final["epsilon"]) == set(trained)
    assert set(report["privacy"]) == set(trained)
    # Four messages reached the spent site (setup, key shares, masked round, and the
    # evaluation), so it was inside the protocol when it dropped out.
    assert spent.text()[mark:].count("Receiving: train message") >= 3

    removed = fedtl("sites", "remove", "--state", state, "intruder")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert newcomer.popen.wait(timeout=120) == 3  # told, not left retrying
    assert "ended this site's connection" in newcomer.text()
    listed = json.loads(fedtl("sites", "list", "--state", state, "--json").stdout)
    assert "intruder" not in {r["name"] for r in listed}
    assert not (world.root / "sites" / "intruder.pub").exists()
    assert list((world.root / "server-state" / "removed-sites").glob("intruder-*.pub"))


def test_tls_sites_complete_a_run_while_a_spent_site_declines_and_poison_is_rejected(
        world) -> None:
    # What site-1 had spent before (the module's other runs, in whatever order they ran).
    before = PrivacyLedger(world.root / "state" / "site-1").summary()
    spent_site(world)
    poison = start_poisoned_site(world)
    try:
        wait_online(world, poison[0])
        done = world.run("run-a", "--rounds", "3", "--min-sites", "3",
                         "--target-epsilon", "3", "--strategy", "fedprox", "--personalize")
    finally:
        for proc in poison:
            proc.kill()
        # Removed, not only killed: the SuperLink would count a killed node online until
        # its heartbeat lapses (~60 s), and the next run would wait for it.
        fedtl("sites", "remove", "--state", str(world.root / "server-state"), "poison")
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert "round | train loss" in done.stdout
    report = report_of(world, "run-a")
    assert REPORT_KEYS <= set(report)
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    for r in report["rounds"]:
        assert sorted(r["sites_trained"]) == list(GOOD)
        assert len(r["declined"]) == 1 and len(r["rejected"]) == 1
    assert int((world.root / "poison-count").read_text()) == 3  # NaN, shape and norm all sent
    final = report["final"]
    assert set(GOOD) <= set(final["epsilon"]) and "spent" not in final["epsilon"]
    # Every poisoned reply was rejected for its arrays, but each left the site: its spending
    # is in the report as in its ledger.
    assert final["epsilon"]["poison"] == pytest.approx(ledger_runs(world, "poison")[
        report["run_id"]]["epsilon"], abs=1e-6)
    assert all(2.9 < eps <= 3.0 + 1e-6 for eps in final["epsilon"].values())
    # The good sites' exact figures (ten digits: chance is 0.1). The run's average also holds
    # the poisoned site's DP-noised figure of ~120 images, which swung 0.17-0.91 in one run.
    good = [final["per_site_global_accuracy"][site] for site in GOOD]
    assert sum(good) / len(good) > 0.5, final["per_site_global_accuracy"]
    assert (world.root / "run-a" / "model.keras").stat().st_size > 0
    # FedProx over gRPC, then each site fine-tuned and kept its own head (with DP-SGD alone
    # the default tunes its bias; the spent site declined that too); the report has both
    # accuracies per site.
    assert report["settings"]["strategy"] == "fedprox" and final["personalized"] is True
    assert set(GOOD) <= set(final["per_site_personal_accuracy"])
    assert "spent" not in final["per_site_personal_accuracy"]
    assert final["worst_site_accuracy"] == min(final["per_site_accuracy"].values())
    for site in GOOD:
        personal = world.root / "state" / site / "personal" / report["run_id"]
        assert (personal / "model.keras").stat().st_size > 0
    # Each site's ledger: the run is recorded under the server's run id, within budget,
    # composed with the runs before it (the whole module: the secure-aggregation run).
    ledger = json.loads(fedtl("budget", "--state", str(world.root / "state" / "site-1"),
                              "--json").stdout)
    assert ledger["runs"][report["run_id"]]["epsilon"] == pytest.approx(3.0, abs=1e-3)
    assert set(ledger["runs"]) == set(before.runs) | {report["run_id"]}
    assert ledger["budget"] == SITE_BUDGET
    assert report["guarantees"]["record_level"]["tightened_by_sites"] == {}
    if before.runs:  # runs of 3 each compose to less than their sum
        assert max(3.0, before.spent) < ledger["spent"] < before.spent + 3.0
    else:
        assert ledger["spent"] == pytest.approx(3.0, abs=1e-3)
    assert ledger["remaining"] == pytest.approx(SITE_BUDGET - ledger["spent"], abs=1e-6)
    spent_ledger = asdict(PrivacyLedger(world.root / "state" / "spent").summary())
    assert set(spent_ledger["runs"]) == {"an-earlier-run"}  # declining charged nothing
    assert spent_ledger["remaining"] == 0.0
    assert "1 declined (budget), 1 rejected" in done.stdout


def audit_trail(world: World, site: str) -> list[dict]:
    from dataclasses import asdict

    from common.privacy.audit_trail import AuditTrail

    return [asdict(d) for d in AuditTrail(world.root / "state" / site).decisions()]


def ledger_runs(world: World, site: str) -> dict[str, dict]:
    """A site's ledger as `fedtl budget --json` prints it (read here: one CLI call is
    tested in the TLS run; the rest need not pay a process start each)."""
    return PrivacyLedger(world.root / "state" / site).summary().runs


def test_a_coordinator_cannot_switch_dp_off_at_the_sites(world) -> None:
    spent_site(world)
    before = {s: ledger_runs(world, s) for s in (*GOOD, "spent")}
    done = world.run("run-n", "--rounds", "1", "--min-sites", "4", "--no-dp",
                     "--site-metrics", "exact", "--round-timeout", "300")
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "no site contributed" in said and "refusal(s) by sites' own policies" in said
    assert not (world.root / "run-n" / "report.json").exists()
    for site in (*GOOD, "spent"):
        assert ledger_runs(world, site) == before[site]  # nothing trained, nothing charged
        refusals = [d for d in audit_trail(world, site) if d["decision"] == "refused"]
        assert refusals and "without differential privacy" in refusals[-1]["reason"]
        assert refusals[-1]["settings"]["dp"] is False


def test_a_run_asking_for_more_epsilon_is_tightened_or_refused_as_each_site_says(
        world) -> None:
    # The default head: round 1 is the one-shot release, planned under each site's
    # tightened target like the DP-SGD round and the personal heads after it (by default
    # built from each site's kept release and the summed one sent back, then their bias
    # fine-tuned).
    done = world.run("run-e", "--rounds", "2", "--min-sites", "2", "--round-timeout", "300",
                     "--target-epsilon", "8", "--head-method", "ridge+sgd", "--personalize")
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    report = report_of(world, "run-e")
    for r in report["rounds"]:
        assert sorted(r["sites_trained"]) == ["site-1", "site-2"]  # site-3 refuses
        assert len(r["refused"]) >= 1
    tightened = report["guarantees"]["record_level"]["tightened_by_sites"]
    assert set(tightened) == {"site-1", "site-2"}
    assert all("target-epsilon 8.0 -> 3.0" in changes for changes in tightened.values())
    assert all(eps <= 3.0 + 1e-6 for eps in report["final"]["epsilon"].values())
    assert "refused (policy)" in done.stdout
    assert report["rounds"][0]["train_loss"] is None  # the release: no training loss
    for site in ("site-1", "site-2"):
        assert ledger_runs(world, site)[report["run_id"]]["target_epsilon"] == 3.0
        events = PrivacyLedger(world.root / "state" / site).runs()[report["run_id"]].events
        assert [e.kind for e in events] == ["count", "sums", "dp-sgd", "personal"]
        assert audit_trail(world, site)[-1]["decision"] == "tightened"
        personal = world.root / "state" / site / "personal" / report["run_id"]
        assert (personal / "own_release.npz").is_file()
        assert (personal / "model.keras").stat().st_size > 0
        # Each site weighed its own release by its own estimate (the default) and says so.
        kept = json.loads((personal / "held_out_accuracy.json").read_text())
        assert 0.0 <= kept["own_release_weight"] <= 16.0 and kept["own_release_excess"] >= 0
        assert 0.0 < kept["own_release_noise_share"]
    assert set(report["final"]["per_site_personal_accuracy"]) == {"site-1", "site-2"}
    refused = [d for d in audit_trail(world, "site-3") if d["run_id"] == report["run_id"]]
    assert refused and refused[-1]["decision"] == "refused"
    assert "target-epsilon 8.0 -> 3.0" in refused[-1]["reason"]


WORKER = re.compile(r"fedtl worker \(pid (\d+)\): (\S+) message answered")


def worker_answers(log: str) -> list[tuple[int, str]]:
    return [(int(pid), kind) for pid, kind in WORKER.findall(log)]


def test_each_site_answers_every_message_in_one_warm_worker(world) -> None:
    # Every message of the module so far reached each good site's one worker process: no
    # per-message process, no second TensorFlow import (and no code from the server's FAB).
    for site in GOOD:
        log = world.procs[site].text()
        answers = worker_answers(log)
        assert len(answers) >= 10, log[-3000:]
        # If not, say why the worker was started again (its exit code, a dropped task).
        assert len({pid for pid, _ in answers}) == 1, [
            line for line in log.splitlines() if "starting it again" in line
            or "message dropped" in line or "Traceback" in line]
        assert log.count("TensorFlow loaded") == 1
        assert "flwr-clientapp" not in log


def test_a_killed_site_and_a_killed_worker_do_not_stop_the_run_and_both_come_back(
        world) -> None:
    victim, site = world.procs["site-3"], world.procs["site-1"]
    marks = {name: len(proc.text()) - proc.offset for name, proc in
             (("site-3", victim), ("site-1", site))}
    # A round waits for a silent site until the SuperLink counts it gone (two missed 30 s
    # heartbeats, Flower's default: at `--heartbeat 10` this was 20 s, but a site still
    # reconnecting 20 s after the server's restart below was counted gone and missed the
    # resumed run's first round) or until the round's timeout. The timeout is the larger,
    # so that a live site slowed by a busy machine is waited for, not dropped.
    launched = world.run("run-b", "--rounds", "6", "--min-sites", "2", "--round-timeout", "150",
                         "--target-epsilon", "3", detach=True)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    victim.wait_for("Receiving: train message", timeout=300, after=marks["site-3"], every=0.05)
    victim.kill()  # mid-round: it received the round's work (its warm worker answers in a
    # fraction of a second, so it may or may not have sent round 1's update)
    first = site.wait_for(r"fedtl worker \(pid (\d+)\): train message answered", timeout=300,
                          after=marks["site-1"])
    os.kill(int(first.group(1)), signal.SIGKILL)  # site-1's worker alone, between rounds
    wait_until(lambda: (load_checkpoint(world.root / "run-b") or _NoRound).round >= 1,
               timeout=600, what="round 1 to complete", interval=0.2)
    back = world.start_site("site-3")
    wait_online(world, back)
    wait_until(lambda: (world.root / "run-b" / "report.json").exists(), timeout=900,
               what="the run to finish")
    report = report_of(world, "run-b")
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5, 6]
    assert all("site-2" in r["sites_trained"] for r in rounds), round_summary(rounds)
    missed = [r["round"] for r in rounds if "site-3" not in r["sites_trained"]]
    # The round it died in (or the next) went on without it.
    assert missed and missed[0] <= 2, round_summary(rounds)
    assert "site-3" in rounds[-1]["sites_trained"], round_summary(rounds)  # it came back
    # site-1's fedtl client started its worker again; the run went on with it.
    log = site.text()[site.offset + marks["site-1"]:]
    assert "exited with code -9; starting it again" in log
    assert len({pid for pid, _ in worker_answers(log)}) == 2  # the killed one, its successor
    trained = sum("site-1" in r["sites_trained"] for r in rounds)
    assert trained >= 5
    entry = ledger_runs(world, "site-1")[report["run_id"]]
    # One charge per round trained (and at most one for a round a dead worker never sent).
    assert trained <= entry["events"] - 1 <= trained + 1  # minus the count's release
    assert entry["epsilon"] <= 3.0 + 1e-6


def round_summary(rounds: list[dict]) -> list[dict]:
    """What a failed assertion on a run's rounds shows: who trained, who did not, and why."""
    keys = ("round", "sites_trained", "declined", "rejected", "unconfirmed", "refused", "failure",
            "seconds")
    return [{k: r.get(k) for k in keys} for r in rounds]


class _NoRound:
    round = 0


def test_a_killed_server_restarts_and_resumes_without_repeating_or_losing_rounds(world) -> None:
    # After the restart a site is back within Flower's 20 s reconnection backoff, and its
    # worker may first wait up to 20 s for the arrays of the killed run's task, which never
    # come; on a busy machine both take longer. No site of this run is gone for good, so a
    # long timeout costs nothing when all answer and keeps a slow site in the round.
    launched = world.run("run-c", "--rounds", "3", "--min-sites", "3", "--target-epsilon", "3",
                         "--round-timeout", "240", detach=True)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    wait_until(lambda: (load_checkpoint(world.root / "run-c") or _NoRound).round >= 1,
               timeout=600, what="the first checkpoint")
    before = load_checkpoint(world.root / "run-c")
    world.procs["server"].kill(signal.SIGKILL)
    server = world.start_server()
    wait_ready(server)
    assert "relaunched unfinished run" in server.text()[server.offset:]
    wait_until(lambda: (world.root / "run-c" / "report.json").exists(), timeout=900,
               what="the resumed run to finish")
    report = report_of(world, "run-c")
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    assert report["run_id"] == before.run_id
    assert report["rounds"][: before.round] == before.book["history"]  # kept, not redone
    for r in report["rounds"][before.round:]:  # the sites came back to the resumed run
        assert set(r["sites_trained"]) == set(GOOD), round_summary(report["rounds"])
    for name in GOOD:
        runs = PrivacyLedger(world.root / "state" / name).runs()
        # One ledger entry for the run across the restart, one charge per round: a round
        # the restart cut off is asked again with the same head and answered free.
        assert before.run_id in runs and runs[before.run_id].epsilon <= 3.0 + 1e-6
        assert [e.kind for e in runs[before.run_id].events].count("dp-sgd") == 3, name
