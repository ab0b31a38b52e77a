"""Ray's start-up in `fedtl simulate`: a few attempts, and a deadline.

Flower's simulation calls `ray.init` with no timeout. When Ray's local instance cannot come
up (a raylet that never registers, e.g. beside stale sessions of killed runs), it waits
forever with nothing on the screen. Nothing has trained or been charged by then (sites are
Ray actors), so ending the process with a clear reason loses nothing.

Ray 2.55's raylet also gives its dashboard agent a fixed 15 s to write its port file and
aborts otherwise (ray-project/ray#65983; the timeout is not configurable through `ray.init`).
On a busy 2-core machine the agent's imports alone took 18 s once, and `ray.init` raised 30 s
later; the next start usually comes up, so `start_ray` tries again.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from common.errors import RunFailedError
from common.process_tree import children_by_parent

RAY_START_SECONDS = 300.0  # Ray starts in 5-15 s here; a busy laptop may take a minute
RAY_START_ATTEMPTS = 3  # a failed attempt takes about 45 s: three fit in RAY_START_SECONDS


def child_pids(pid: int | None = None) -> set[int]:
    """The processes whose parent is ``pid`` (this one by default)."""
    return set(children_by_parent().get(os.getpid() if pid is None else pid, []))


def start_ray(init: Callable[..., Any], shutdown: Callable[[], Any], init_args: dict[str, Any],
              attempts: int = RAY_START_ATTEMPTS, log: Callable[[str], Any] | None = None
              ) -> None:
    """Start (or join) Ray as Flower's Ray backend would, before Flower's simulation does.

    ``init`` and ``shutdown`` are `ray.init` and `ray.shutdown`. A local start that raises is
    tried again, up to ``attempts`` times, after ending the processes the failed attempt
    left (its GCS, dashboard and monitor outlive the error); joining a cluster
    (``address`` other than "local") is tried once.
    """
    # As flwr's RayBackend.init_ray (1.39): Ray's workers must import what this process can.
    # Unlike it, each entry once: `fedtl compare` starts Ray again for every run.
    entries = [*sys.path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    pythonpath = os.pathsep.join(dict.fromkeys(e for e in entries if e))
    os.environ["PYTHONPATH"] = pythonpath
    args = {"include_dashboard": False, **init_args,
            "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}}
    local = args.get("address") in (None, "local")
    for attempt in range(1, (attempts if local else 1) + 1):
        before = child_pids()
        try:
            init(**args)
            return
        except Exception as exc:  # Ray raises a bare Exception when its node times out
            shutdown()
            for pid in child_pids() - before:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not local:
                raise RunFailedError(f"could not join the Ray cluster at {args['address']}: "
                                     f"{exc}; nothing was trained or charged") from exc
            if attempt == attempts:
                raise RunFailedError(
                    f"Ray's local instance did not start in {attempts} attempts (last: {exc}; "
                    "its logs: /tmp/ray/session_latest/logs, raylet.out first). A busy "
                    "machine can make Ray's raylet give up on its dashboard agent: run again "
                    "when it is quieter; nothing was trained or charged") from exc
            (log or warn)(f"Ray's local instance did not start ({exc}); trying again "
                          f"(attempt {attempt + 1} of {attempts})")


def warn(message: str) -> None:
    print(f"fedtl: {message}", file=sys.stderr, flush=True)


def watch_start(is_up: Callable[[], bool], timeout: float, on_timeout: Callable[[], None],
                stop: threading.Event, poll: float = 0.5) -> threading.Thread:
    """Call ``on_timeout`` if ``is_up()`` is still false ``timeout`` seconds from now, unless
    ``stop`` is set first; returns the (daemon) thread that watches."""

    def run() -> None:
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            if is_up():
                return
            if time.monotonic() >= deadline:
                on_timeout()
                return
            stop.wait(poll)

    thread = threading.Thread(target=run, name="ray-start-deadline", daemon=True)
    thread.start()
    return thread


def not_started_message(ray_address: str, timeout: float, temp_dir: str = "/tmp/ray") -> str:
    """What an operator reads when Ray did not start: where to look and what to try."""
    if ray_address:
        return (f"could not join the Ray cluster at {ray_address} within {timeout:.0f} s: "
                "check that `ray status --address " + ray_address + "` answers from this "
                "machine (same Ray and Python versions), then run again; nothing was trained "
                "or charged")
    return (f"Ray's local instance did not start within {timeout:.0f} s (its logs: "
            f"{temp_dir}/session_latest/logs). Stale sessions of killed runs can stop it: end "
            "them with `uv run ray stop --force`, then run again; nothing was trained or "
            "charged")


def end_process(message: str) -> None:
    """Print ``message`` as fedtl's CLI prints errors and end the process at once: the main
    thread is inside `ray.init`, which cannot be interrupted from here."""
    sys.stdout.flush()
    print(f"fedtl: error: {message}", file=sys.stderr, flush=True)
    os._exit(RunFailedError.exit_code)
