"""A deadline on Ray's start-up in `fedtl simulate`.

Flower's simulation calls `ray.init` with no timeout. When Ray's local instance cannot come
up (a raylet that never registers, e.g. beside stale sessions of killed runs), it waits
forever with nothing on the screen. Nothing has trained or been charged by then (sites are
Ray actors), so ending the process with a clear reason loses nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from common.errors import RunFailedError

RAY_START_SECONDS = 300.0  # Ray starts in 5-15 s here; a busy laptop may take a minute


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
