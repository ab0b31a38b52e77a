"""The deadline on Ray's start-up in `fedtl simulate` (no Ray started here)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from simulations.ray_startup import not_started_message, watch_start


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
