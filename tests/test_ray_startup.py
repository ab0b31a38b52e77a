"""Ray's start-up in `fedtl simulate`: its attempts and its deadline (no Ray started here)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from common.errors import RunFailedError
from simulations.ray_startup import (child_pids, not_started_message, start_ray,
                                     watch_start)


@pytest.fixture(autouse=True)
def _own_pythonpath(monkeypatch) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)  # start_ray sets it, as Flower does


class FakeRay:
    """`ray.init` / `ray.shutdown` that fail the first ``failures`` starts, each leaving a
    process behind as a failed `ray.init` leaves its GCS and dashboard."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict] = []
        self.shutdowns = 0
        self.left: list[subprocess.Popen] = []

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)
        if len(self.calls) <= self.failures:
            self.left.append(subprocess.Popen([sys.executable, "-c",
                                               "import time; time.sleep(120)"]))
            raise Exception("The current node timed out during startup.")

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_local_ray_that_fails_to_start_is_started_again_after_its_leftovers_are_ended(
        ) -> None:
    ray, said = FakeRay(failures=2), []
    start_ray(ray.init, ray.shutdown, {"address": "local", "num_cpus": 2}, attempts=3,
              log=said.append)
    assert len(ray.calls) == 3 and ray.shutdowns == 2 and len(said) == 2
    assert "attempt 3 of 3" in said[-1]
    for proc in ray.left:  # the failed attempts' processes were killed, not left running
        assert proc.wait(timeout=10) == -9
    # Ray is started as flwr's RayBackend starts it: same arguments, workers see our path
    assert ray.calls[-1]["num_cpus"] == 2 and ray.calls[-1]["include_dashboard"] is False
    path = ray.calls[-1]["runtime_env"]["env_vars"]["PYTHONPATH"]
    assert path.split(os.pathsep) == [p for p in dict.fromkeys(sys.path) if p]
    assert os.environ["PYTHONPATH"] == path


def test_starting_ray_again_does_not_lengthen_the_workers_path() -> None:
    ray = FakeRay(failures=0)
    for _ in range(3):  # as `fedtl compare` does, one start per run
        start_ray(ray.init, ray.shutdown, {"address": "local"})
    paths = [call["runtime_env"]["env_vars"]["PYTHONPATH"] for call in ray.calls]
    assert paths[0] == paths[1] == paths[2]


def test_a_local_ray_that_never_starts_is_a_run_failure_naming_its_logs() -> None:
    ray = FakeRay(failures=5)
    with pytest.raises(RunFailedError, match="did not start in 2 attempts") as caught:
        start_ray(ray.init, ray.shutdown, {"address": "local"}, attempts=2, log=lambda m: None)
    assert len(ray.calls) == 2
    assert "raylet.out" in str(caught.value) and "nothing was trained" in str(caught.value)
    for proc in ray.left:
        proc.wait(timeout=10)


def test_joining_a_cluster_is_tried_once() -> None:
    ray = FakeRay(failures=1)
    with pytest.raises(RunFailedError, match="could not join the Ray cluster at 10.0.0.5:6379"):
        start_ray(ray.init, ray.shutdown, {"address": "10.0.0.5:6379"}, attempts=3)
    assert len(ray.calls) == 1
    ray.left[0].wait(timeout=10)


def test_child_pids_lists_this_process_children_only() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert proc.pid in child_pids() and proc.pid not in child_pids(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _watch(is_up, timeout: float, stop: threading.Event | None = None) -> list[float]:
    called: list[float] = []
    began = time.monotonic()
    thread = watch_start(is_up, timeout, lambda: called.append(time.monotonic() - began),
                         stop or threading.Event(), poll=0.01)
    thread.join(timeout=5)
    assert not thread.is_alive()
    return called


def test_a_ray_that_never_comes_up_is_reported_once_after_the_deadline() -> None:
    called = _watch(lambda: False, timeout=0.2)
    assert len(called) == 1 and called[0] >= 0.2


def test_a_ray_that_comes_up_is_never_reported() -> None:
    ups = iter([False, False, True])
    assert _watch(lambda: next(ups), timeout=0.2) == []


def test_a_simulation_that_ends_before_ray_starts_stops_the_watch() -> None:
    stop = threading.Event()
    stop.set()
    assert _watch(lambda: False, timeout=0.0, stop=stop) == []


def test_the_message_says_where_to_look_and_that_nothing_was_spent() -> None:
    local = not_started_message("", 300)
    assert "300 s" in local and "session_latest/logs" in local and "ray stop --force" in local
    remote = not_started_message("10.0.0.5:6379", 300)
    assert "10.0.0.5:6379" in remote and "ray status" in remote
    assert all("nothing was trained or charged" in m for m in (local, remote))


def test_ending_the_process_prints_fedtls_error_line_and_exits_with_run_failed() -> None:
    done = subprocess.run([sys.executable, "-c", "from simulations.ray_startup import "
                           "end_process; end_process('Ray did not start'); print('not here')"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 7
    assert done.stderr.strip() == "fedtl: error: Ray did not start"
    assert "not here" not in done.stdout
