"""Real processes for deployment tests: each in its own session, logged to a file, always killed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


class Proc:
    """A command in its own process group, its output in ``log``."""

    def __init__(self, name: str, args: list[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.args, self.log = name, args, log
        # A restarted process appends to the same log; waits look only at its own part.
        self.offset = len(log.read_text(errors="replace")) if log.exists() else 0
        self._handle = open(log, "a")  # noqa: SIM115 (kept open while the process runs)
        self.popen = subprocess.Popen(args, stdout=self._handle, stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float, after: int = 0,
                 every: float = 1.0) -> re.Match:
        """Wait until ``pattern`` shows in this process's log, ``after`` characters in
        (looking ``every`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.text()[self.offset + after:])
            if match:
                return match
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before "
                                     f"{pattern!r}:\n{self.text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {pattern!r} within {timeout} s:\n"
                                     f"{self.text()[-4000:]}")
            time.sleep(every)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (Flower's children included) and reap it."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=30)
        self._handle.close()


def fedtl_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "common.cli", *args]


def wait_until(condition, timeout: float, what: str, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
