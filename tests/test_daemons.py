"""The daemons' settings, the Flower commands they build, and the messages they translate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from pathlib import Path

import pytest

from client.daemon import ClientOptions, explain_line as site_says, supernode_command
from common.config import SiteConfig
from common.deploy.control import ControlAddress, stage_app
from common.deploy.credentials import key_fingerprint, make_site_keys, make_test_certs
from common.errors import ConfigError, FedtlError
from common.privacy.ledger import SiteBudget
from server.daemon import ServerOptions, explain_line as server_says, superlink_command


@pytest.fixture()
def creds(tmp_path: Path) -> Path:
    make_test_certs(tmp_path / "certs", ["localhost"])
    make_site_keys(tmp_path / "keys", "clinic")
    (tmp_path / "sites").mkdir()
    return tmp_path


def test_the_server_needs_certificates_and_a_sites_folder_unless_insecure(creds: Path) -> None:
    with pytest.raises(ConfigError, match="--certs DIR"):
        ServerOptions(state=creds / "s")
    with pytest.raises(ConfigError, match="--sites DIR"):
        ServerOptions(state=creds / "s", certs=creds / "certs")
    with pytest.raises(ConfigError, match="do not combine"):
        ServerOptions(state=creds / "s", certs=creds / "certs", insecure=True)
    ServerOptions(state=creds / "s", insecure=True)


def test_the_secure_superlink_has_tls_site_auth_and_no_runtime_installs(creds: Path) -> None:
    opts = ServerOptions(state=creds / "s", certs=creds / "certs", sites=creds / "sites")
    cmd = superlink_command(opts)
    assert "--enable-supernode-auth" in cmd and "--insecure" not in cmd
    assert cmd[cmd.index("--ssl-certfile") + 1] == str(creds / "certs" / "server.pem")
    assert "--disable-runtime-dependency-installation" in cmd
    assert cmd[cmd.index("--database") + 1] == str(creds / "s" / "superlink.db")
    insecure = superlink_command(ServerOptions(state=creds / "s", insecure=True))
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure


def test_a_refused_key_in_the_superlink_log_is_named_by_its_fingerprint(creds: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    keys_pub = (creds / "keys" / "clinic.pub").read_bytes()
    pem = serialization.load_ssh_public_key(keys_pub).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    line = ("ERROR : [/flwr.proto.Fleet/ActivateNode][ApiError:2004] Attempted to register "
            f"SuperNode with public key: {pem!r}, exception: No SuperNode found with the given "
            "public key.")
    said = server_says(line)
    assert said is not None and key_fingerprint(keys_pub) in said and "REFUSED" in said
    assert server_says("INFO : [Fleet.PullMessages] node_id=1") is None


def test_the_server_log_names_the_sites_that_connect_and_leave() -> None:
    names = {7: "clinic-a"}.get
    said = server_says("\x1b[92mINFO \x1b[0m: [Fleet.ActivateNode] Activated node_id=7", names)
    assert said == "fedtl server: site clinic-a (node 7) connected"
    said = server_says("INFO : [Fleet.DeactivateNode] Deactivated node_id=7", names)
    assert said == "fedtl server: site clinic-a (node 7) left"
    unnamed = server_says("INFO : [Fleet.ActivateNode] Activated node_id=9", names)
    assert unnamed == "fedtl server: a site with no registered name (node 9) connected"


def test_json_daemon_logs_are_one_object_per_line_with_flowers_level_and_no_colours() -> None:
    import io
    import json

    from common.deploy.daemon_log import daemon_logger, relayed

    stream = io.StringIO()
    log = daemon_logger("fedtl.server", "json", stream)
    log.info("fedtl server: ready")
    log.info("\x1b[93mWARNING \x1b[0m:   EXPERIMENTAL: x", **relayed("the SuperLink"))
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["message"] == "fedtl server: ready" and first["source"] == "fedtl"
    assert first["level"] == "info" and first["logger"] == "fedtl.server"
    assert first["time"].endswith("+00:00")
    assert second == {**second, "level": "warning", "source": "the SuperLink",
                      "message": "EXPERIMENTAL: x"}
    plain = io.StringIO()
    daemon_logger("fedtl.server", "plain", plain).info("\x1b[92mINFO\x1b[0m : kept as is")
    assert plain.getvalue() == "\x1b[92mINFO\x1b[0m : kept as is\n"
    with pytest.raises(ValueError, match="xml"):
        daemon_logger("x", "xml")


def test_the_site_registry_records_names_and_refuses_unknown_or_damaged_entries(
        tmp_path: Path) -> None:
    from server.site_registry import RegisteredSite, SiteRegistry

    registry = SiteRegistry(tmp_path)
    assert registry.sites() == {} and registry.name_of(5) is None
    registry.record(RegisteredSite("clinic-a", 5, "SHA256:x", "2026-01-01T00:00:00+00:00"))
    registry.record(RegisteredSite("clinic-b", 6, "SHA256:y", "2026-01-01T00:00:00+00:00"))
    assert SiteRegistry(tmp_path).name_of(6) == "clinic-b"
    assert registry.forget("clinic-a").node_id == 5
    assert set(registry.sites()) == {"clinic-b"}
    with pytest.raises(ConfigError, match="registered: clinic-b"):
        registry.forget("clinic-a")
    registry.path.write_text("{not json")
    with pytest.raises(ConfigError, match="sites.json"):
        registry.sites()
    assert registry.name_of(6) is None  # a log line never fails over it


def test_adding_a_site_checks_the_daemon_the_key_and_the_name_before_asking_the_server(
        creds: Path) -> None:
    from server.site_admin import add_site, remove_site
    from server.site_registry import (DaemonAddress, RegisteredSite, SiteRegistry,
                                      write_daemon_address)

    state = creds / "server-state"
    with pytest.raises(ConfigError, match="no `fedtl server` has started"):
        add_site(state, creds / "keys" / "clinic.pub")
    write_daemon_address(state, DaemonAddress("127.0.0.1:1", None, True, None))
    with pytest.raises(ConfigError, match="--insecure"):
        add_site(state, creds / "keys" / "clinic.pub")
    with pytest.raises(ConfigError, match="--insecure"):
        remove_site(state, "clinic")
    write_daemon_address(state, DaemonAddress("127.0.0.1:1", str(creds / "certs" / "ca.crt"),
                                              False, str(creds / "sites")))
    with pytest.raises(ConfigError, match="does not exist"):
        add_site(state, creds / "keys" / "nobody.pub")
    with pytest.raises(ConfigError, match="not a public key"):
        add_site(state, creds / "certs" / "ca.crt")
    with pytest.raises(ConfigError, match="plain file name"):
        add_site(state, creds / "keys" / "clinic.pub", name="../x")
    SiteRegistry(state).record(RegisteredSite("clinic", 1, "SHA256:x", "t"))
    with pytest.raises(ConfigError, match="registered already"):
        add_site(state, creds / "keys" / "clinic.pub")
    assert list((creds / "sites").iterdir()) == []  # nothing written on refusal


def site(creds: Path, **changes) -> ClientOptions:
    values = dict(server="127.0.0.1:9092", data=creds / "data", state=creds / "state",
                  budget=SiteBudget(2.0), name="clinic", key=creds / "keys" / "clinic.key",
                  ca=creds / "certs" / "ca.crt")
    return ClientOptions(**{**values, **changes})


def test_a_site_needs_its_key_and_the_ca_unless_insecure(creds: Path) -> None:
    with pytest.raises(ConfigError, match="--key FILE"):
        site(creds, key=None)
    with pytest.raises(ConfigError, match="does not exist"):
        site(creds, ca=creds / "nope.crt")
    with pytest.raises(ConfigError, match="do not combine"):
        site(creds, insecure=True)
    site(creds, key=None, ca=None, insecure=True)


def test_site_settings_travel_in_the_node_config_and_parse_back(creds: Path) -> None:
    from client.daemon import write_policy
    from common.privacy.policy import SitePolicy

    opts = site(creds, policy=SitePolicy(max_run_epsilon=1.5, site_metrics="none"),
                budget=SiteBudget(2.0, 1e-5, "pld"))
    write_policy(opts.policy, opts.policy_file)  # as `fedtl client` does before starting
    cmd = supernode_command(opts, runtime_port=9200, secret=creds / "secret")
    import sys

    # Flower's SuperNode, asking for work every half second (Flower's own: every 3 s).
    assert cmd[:5] == [sys.executable, "-m", "client.supernode", "--poll", "0.5"]
    slower = supernode_command(site(creds, poll=2), runtime_port=9200, secret=creds / "s")
    assert slower[3:5] == ["--poll", "2.0"]
    assert cmd[5:7] == ["--heartbeat", "30.0"]  # Flower's own, unless the site says
    livelier = supernode_command(site(creds, heartbeat=10), runtime_port=9200, secret=creds)
    assert livelier[5:7] == ["--heartbeat", "10.0"]
    assert cmd[cmd.index("--isolation") + 1] == "process"  # the site's worker runs its tasks
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(opts.key)
    node_config = cmd[cmd.index("--node-config") + 1]
    from flwr.common.config import parse_config_args

    parsed = parse_config_args([node_config])
    back = SiteConfig.from_node_config(parsed, node_id=5)
    assert back.name == "clinic" and back.budget == SiteBudget(2.0, 1e-5, "pld")
    assert back.data == str((creds / "data").resolve())
    assert back.cache_dir == (creds / "state").resolve() / "features"
    assert back.policy == opts.policy  # the site's own, never the run's


def test_flowers_supernode_loop_uses_its_clock_only_for_the_polling_sleeps_we_cap() -> None:
    # `client.supernode` caps every sleep of this module; if a Flower release uses its clock
    # for anything else (a deadline, a timestamp), this fails instead of that going wrong.
    import re

    from flwr.supernode import start_client_internal

    source = Path(start_client_internal.__file__).read_text()
    assert sorted(re.findall(r"\btime\.\w+\([^)]*\)", source)) == [
        "time.sleep(0.5)", "time.sleep(0.5)", "time.sleep(3)"]


def test_the_capped_clock_shortens_sleeps_and_is_time_otherwise(monkeypatch) -> None:
    import time
    from types import SimpleNamespace

    from client.pacing import Pacing
    from client.supernode import CappedClock, cap_polling

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    clock = CappedClock(Pacing(0.01, 3.0))
    clock.sleep(3)
    clock.sleep(0.005)
    assert slept == [0.01, 0.005]  # capped, and shorter sleeps left as they are
    assert clock.monotonic() > 0 and clock.time() > 0  # everything else is `time`
    module = SimpleNamespace(time=time)
    pacing = cap_polling(module, 0.2)  # type: ignore[arg-type]
    assert isinstance(module.time, CappedClock) and module.time.pacing is pacing
    assert (pacing.fast, pacing.idle) == (0.2, 3.0)  # run pace, then Flower's own when idle


def test_a_poll_outside_a_tenth_of_a_second_to_flowers_3_s_is_refused(creds: Path) -> None:
    for poll in (0.01, 10.0):
        with pytest.raises(ConfigError, match="--poll must be between 0.1 and 3.0"):
            site(creds, poll=poll)
    from client.supernode import split_options

    assert split_options(["--poll", "1.5", "--superlink", "h:1"]) == (
        1.5, 30.0, ["--superlink", "h:1"])
    assert split_options(["--poll", "1.5", "--heartbeat", "12", "--superlink", "h:1"]) == (
        1.5, 12.0, ["--superlink", "h:1"])
    assert split_options(["--superlink", "h:1"]) == (0.5, 30.0, ["--superlink", "h:1"])


def test_a_heartbeat_outside_what_flowers_superlink_accepts_is_refused(creds: Path) -> None:
    for heartbeat in (5.0, 3600.0):
        with pytest.raises(ConfigError, match="--heartbeat must be between 10 and 1800"):
            site(creds, heartbeat=heartbeat)


def test_the_heartbeat_setting_is_what_flowers_node_announces_and_beats_by(monkeypatch) -> None:
    import inspect
    import threading

    from flwr.client.grpc_rere_client import connection
    from flwr.supercore import heartbeat

    from client.supernode import set_heartbeat

    # Flower 1.39 builds both requests (activation, heartbeat) from its module's constant; if
    # a release stops, this fails rather than the setting silently doing nothing.
    assert inspect.getsource(connection).count(
        "heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL") == 2
    monkeypatch.setattr(connection, "HEARTBEAT_DEFAULT_INTERVAL", 30)
    monkeypatch.setattr(heartbeat, "HEARTBEAT_DEFAULT_INTERVAL", 30)
    # Flower waits (interval - its 5 s call timeout) x 0.7-0.9 between beats: 0.1-0.2 s here.
    set_heartbeat(heartbeat.HEARTBEAT_CALL_TIMEOUT + 0.2)
    assert connection.HEARTBEAT_DEFAULT_INTERVAL == heartbeat.HEARTBEAT_CALL_TIMEOUT + 0.2
    beats = threading.Semaphore(0)
    sender = heartbeat.HeartbeatSender(lambda: beats.release() or True)
    sender.start()
    try:
        assert all(beats.acquire(timeout=5) for _ in range(4))  # 30 s apart at Flower's own
    finally:
        sender.stop()


def test_the_site_supernode_entry_point_is_flowers_supernode() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "client.supernode", "--poll", "1.0", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--superlink" in done.stdout and "--isolation" in done.stdout


def test_a_site_started_without_a_policy_file_gets_the_safe_defaults() -> None:
    from common.privacy.policy import SitePolicy

    back = SiteConfig.from_node_config({"data": "/d", "state": "/s", "budget": 1.0}, node_id=1)
    assert back.policy == SitePolicy() and not back.policy.allow_no_dp


def test_a_site_composes_its_budget_with_rdp_unless_its_node_config_says_otherwise() -> None:
    node = {"data": "/d", "state": "/s", "budget": 3.0}
    assert SiteConfig.from_node_config(node, node_id=1).budget.accountant == "rdp"
    with pytest.raises(ConfigError, match="accountant must be one of"):
        SiteConfig.from_node_config({**node, "accountant": "moments"}, node_id=1)


def test_a_node_config_without_budget_is_refused_naming_the_command() -> None:
    with pytest.raises(ConfigError, match="fedtl client"):
        SiteConfig.from_node_config({"data": "/d", "state": "/s"}, node_id=1)


def test_a_refused_site_is_told_which_key_to_send(creds: Path) -> None:
    said = site_says("[code: 2004] Failed to activate SuperNode.", site(creds))
    assert said is not None and "clinic.pub" in said and "REFUSED" in said
    assert site_says("INFO : Sent successfully", site(creds)) is None


def test_launching_needs_exactly_one_of_ca_and_insecure(creds: Path) -> None:
    with pytest.raises(ConfigError):
        ControlAddress("127.0.0.1:9093")
    with pytest.raises(ConfigError):
        ControlAddress("127.0.0.1:9093", ca=creds / "certs" / "ca.crt", insecure=True)
    ControlAddress("127.0.0.1:9093", ca=creds / "certs" / "ca.crt")


def test_a_run_ships_the_apps_packages_and_pyproject_and_nothing_else(tmp_path: Path) -> None:
    from flwr.cli.utils import collect_files, filter_paths_for_publish

    from .conftest import PROJECT

    staged = stage_app(PROJECT, tmp_path / "app")
    shipped = set(filter_paths_for_publish(collect_files(staged)))
    tracked = {str(p.relative_to(PROJECT)) for package in ("common", "client", "server",
                                                           "simulations")
               for p in (PROJECT / package).rglob("*.py") if "__pycache__" not in p.parts}
    assert shipped == tracked | {"pyproject.toml"}
    assert {"server/server_app.py", "client/client_app.py"} <= shipped  # the components
    assert (staged / "pyproject.toml").read_text() == (PROJECT / "pyproject.toml").read_text()


def test_an_app_whose_pyproject_names_no_packages_is_refused_naming_the_file(
        tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(FedtlError, match=r"pyproject\.toml.*packages"):
        stage_app(tmp_path, tmp_path / "app")


def test_a_restarted_daemon_relaunches_running_and_interrupted_runs_not_failed_ones(
        tmp_path: Path) -> None:
    import io

    from common.config import RunConfig
    from server.daemon import relaunch_unfinished
    from server.run_registry import RunRegistry

    registry = RunRegistry(tmp_path)
    registry.started("r1", "/out/r1", RunConfig(classes=("a", "b")).to_flower())
    registry.started("r2", "/out/r2", RunConfig(classes=("a", "b")).to_flower())
    registry.finished("r2")
    for run in ("r3", "r4"):
        registry.started(run, f"/out/{run}", RunConfig(classes=("a", "b")).to_flower())
    registry.interrupted("r3", "ObjectPushError: the push session expired")
    registry.failed("r4", "ValueError: bad reply")
    (registry.folder / "broken.json").write_text("{")

    class FakeControl:
        started: list[Path] = []

        def start(self, app: Path, run_config: Path) -> int:
            self.started.append(run_config)
            return 42

    out = io.StringIO()
    control = FakeControl()
    from common.deploy.daemon_log import daemon_logger

    relaunch_unfinished(control, registry, daemon_logger("t", stream=out))  # type: ignore[arg-type]
    said = out.getvalue()
    assert sorted(p.name for p in control.started) == ["r1.toml", "r3.toml"]
    assert "relaunched unfinished run r1" in said and "Flower run 42" in said
    assert "relaunched unfinished run r3" in said and "r4" not in said
    assert "broken.json" in said and "damaged" in said


def test_a_restarted_daemon_registers_only_keys_the_superlink_does_not_hold(
        tmp_path: Path) -> None:
    import io
    from dataclasses import replace

    from common.deploy.daemon_log import daemon_logger
    from server.daemon import register_sites
    from server.site_registry import RegisteredSite, SiteRegistry

    sites, registry = tmp_path / "sites", SiteRegistry(tmp_path)
    sites.mkdir()
    for name in ("kept", "dropped", "new", "rekeyed"):
        keys = make_site_keys(tmp_path / "keys", name)
        (sites / f"{name}.pub").write_bytes(keys.public.read_bytes())
    for node, name in ((1, "kept"), (2, "dropped"), (3, "rekeyed")):
        registry.record(RegisteredSite(name=name, node_id=node, added="t", fingerprint=(
            key_fingerprint((sites / f"{name}.pub").read_bytes()))))
    registry.record(replace(registry.get("rekeyed"), fingerprint="SHA256:an-older-key"))

    class FakeControl:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def register(self, public_key: Path, name: str) -> int:
            self.sent.append(name)
            return 10 + len(self.sent)

    control, out = FakeControl(), io.StringIO()
    nodes = [{"node-id": "1", "status": "offline"}, {"node-id": "2", "status": "unregistered"},
             {"node-id": "3", "status": "online"}]
    registered = register_sites(control, sites, registry,  # type: ignore[arg-type]
                                daemon_logger("t", stream=out), nodes)
    # The SuperLink still holds "kept" (offline is still registered); "dropped" was
    # unregistered there, "new" never sent, and "rekeyed" holds another key than recorded.
    assert sorted(control.sent) == ["dropped", "new", "rekeyed"]
    assert set(registered) == {"dropped", "new", "rekeyed"}
    assert "site kept" in out.getvalue() and "registered before" in out.getvalue()
    assert registry.get("new").node_id in (11, 12, 13)
    # Without the node list (or with an empty one) every key is sent, as before.
    control = FakeControl()
    register_sites(control, sites, registry, daemon_logger("t", stream=io.StringIO()))  # type: ignore[arg-type]
    assert sorted(control.sent) == ["dropped", "kept", "new", "rekeyed"]


def test_the_flower_log_words_the_daemons_look_for_are_still_flowers_words() -> None:
    # Where Flower states an event only in its log, the daemons match its words; if a Flower
    # release rewords them, this fails instead of the daemons going quietly blind.
    import flwr

    from client.daemon import ENDED_WORDS, REFUSED_WORDS
    from server.daemon import UNREGISTERED_WORDS

    source = "\n".join(p.read_text(errors="replace")
                       for p in Path(flwr.__file__).parent.rglob("*.py"))
    assert REFUSED_WORDS[0] in source
    assert ENDED_WORDS in source
    assert UNREGISTERED_WORDS in source
    assert "Attempted to register SuperNode with public key: " in source  # _UNREGISTERED
    assert "[Fleet.ActivateNode] Activated node_id=" in source  # _CONNECTED
    assert "[Fleet.DeactivateNode] Deactivated node_id=" in source


def test_a_child_that_says_it_ended_but_hangs_is_ended_without_counting_as_asked_to_stop(
        ) -> None:
    import logging
    import sys
    import time

    from common.deploy.supervision import Supervised

    # What Flower 1.39's SuperNode was seen to do once: log its end, then hang in a thread.
    hung = Supervised("the SuperNode", [sys.executable, "-c",
                                        "import time; print('ended', flush=True); "
                                        "time.sleep(600)"],
                      logging.getLogger("test")).start()
    while hung.process is None:
        time.sleep(0.05)
    started = time.monotonic()
    assert hung.reap(1.0) is True
    assert hung.wait() != 0 and time.monotonic() - started < 15
    assert not hung.asked_to_stop
    quick = Supervised("a child", [sys.executable, "-c", "print('bye')"],
                       logging.getLogger("test")).start()
    while quick.process is None:
        time.sleep(0.05)
    assert quick.reap(30.0) is False and quick.wait() == 0


def test_a_stale_reply_left_by_a_server_restart_does_not_put_a_sites_replies_one_behind() -> None:
    # Flower's own loop, its own push and node state; only the SuperLink (`send`) is faked.
    import threading
    import time
    from types import SimpleNamespace

    from flwr.app import Message, RecordDict
    from flwr.common import Metadata
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supernode import start_client_internal as flower
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    from client.pacing import Pacing
    from client.supernode import answer_in_step

    def message(run: int) -> Message:
        return Message(RecordDict(), metadata=Metadata(
            run_id=run, message_id="", src_node_id=0, dst_node_id=1, reply_to_message_id="",
            group_id="", created_at=time.time(), ttl=60.0, message_type="train"))

    def world() -> tuple[Any, Any, list[str], Callable[..., int], Message]:
        store = ObjectStoreFactory().store()
        state = InMemoryNodeState(store)
        stale = message(run=1)
        flower._insert_message(stale, state, store)  # the old run's message, answered
        state.get_messages(is_reply=False)  # by the worker
        flower._insert_message(Message(RecordDict(), reply_to=stale), state, store)
        fresh = message(run=2)
        sent: list[str] = []

        def pull(**_: Any) -> int:
            flower._insert_message(fresh, state, store)
            return 2

        return state, store, sent, pull, fresh

    def push_in_background(module: Any, state: Any, store: Any, sent: list[str]) -> Any:
        def send(message: Message, *_: Any) -> tuple[set[str], str]:
            sent.append(message.metadata.reply_to_message_id)
            return set(), "session"

        module._pull_and_store_message(state=state)
        pusher = threading.Thread(target=module._push_messages, kwargs=dict(
            state=state, object_store=store, send=send, push_object=lambda *_: None))
        pusher.start()
        pusher.join(1.5)
        return pusher

    # Flower alone: the push sends the stale reply and returns before the fresh message's.
    state, store, sent, pull, fresh = world()
    module = SimpleNamespace(_pull_and_store_message=pull, _push_messages=flower._push_messages)
    assert not push_in_background(module, state, store, sent).is_alive() and len(sent) == 1

    state, store, sent, pull, fresh = world()
    module = SimpleNamespace(_pull_and_store_message=pull, _push_messages=flower._push_messages)
    now = [100.0]
    pacing = Pacing(0.5, 3.0, clock=lambda: now[0])
    pacing.last_work = 0.0
    answer_in_step(module, pacing)  # type: ignore[arg-type]
    pusher = push_in_background(module, state, store, sent)
    assert pusher.is_alive() and len(sent) == 1  # still waiting for the fresh reply
    assert pacing.last_work == 100.0  # a message came: the SuperNode polls at the run's pace
    now[0] = 200.0  # a long task: its reply restarts the run's pace for the next message
    state.get_messages(is_reply=False)
    flower._insert_message(Message(RecordDict(), reply_to=fresh), state, store)
    pusher.join(5)
    assert not pusher.is_alive() and sent[1] == fresh.metadata.message_id
    assert pacing.last_work == 200.0


def test_an_empty_pull_leaves_the_supernode_at_its_idle_pace() -> None:
    import threading as threads
    from types import SimpleNamespace

    from client.pacing import Pacing
    from client.supernode import answer_in_step

    state = SimpleNamespace(lock_msg_store=threads.Lock(), msg_store={})
    module = SimpleNamespace(_pull_and_store_message=lambda **_: None,
                             _push_messages=lambda **_: None)
    pacing = Pacing(0.5, 3.0, clock=lambda: 100.0)
    pacing.last_work = 0.0
    answer_in_step(module, pacing)  # type: ignore[arg-type]
    module._pull_and_store_message(state=state)
    assert pacing.last_work == 0.0 and pacing.next_pause() == 1.0  # slowing towards 3 s
