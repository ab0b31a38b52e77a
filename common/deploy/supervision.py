"""Child processes of fedtl's daemons: started, their output relayed line by line, stopped on
a signal, and (for a site's worker) started again if they die.

Both daemons run Flower's own processes (a SuperLink, a SuperNode) and fedtl's site worker;
this is the one place that starts, relays, watches and stops them.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from common.deploy.daemon_log import relayed

LineHandler = Callable[[str], str | None]  # a line in, fedtl's own message about it (or None)

# TensorFlow's start-up chatter, printed by its C++ core before any Python logging is set up
# (so no logging level reaches it): hidden from operators unless they ask with --verbose.
_NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called|"
    r"[IWE]\d{4} [\d:. ]+\s+\d+ \S+\.(cc|h):\d+\]|"
    r"WARNING:tensorflow:AutoGraph could not transform|Cause: Unable to locate the source|"
    r"To silence this warning, decorate the function)")


def is_native_noise(line: str) -> bool:
    """A line of TensorFlow's native start-up log (oneDNN, cuInit, cudart, absl)."""
    return bool(_NATIVE_NOISE.match(line))


class Supervised:
    """One child process whose output goes to ``out``, optionally kept alive.

    Parameters
    ----------
    name : str
        How fedtl's messages call it ("the site's worker").
    command : Sequence[str]
        What to run.
    log : logging.Logger
        Where its lines (and fedtl's messages about them) go.
    env : dict or None
        Its environment.
    explain : LineHandler or None
        Called on every line; a message it returns is printed after the line.
    keep_alive : bool
        Start it again (after a short, growing pause) whenever it exits unasked.
    verbose : bool
        Relay TensorFlow's native start-up chatter too.
    """

    def __init__(self, name: str, command: Sequence[str], log: logging.Logger, *,
                 env: dict[str, str] | None = None, explain: LineHandler | None = None,
                 keep_alive: bool = False, verbose: bool = False) -> None:
        self.name, self.command, self.log, self.env = name, list(command), log, env
        self.explain, self.keep_alive, self.verbose = explain, keep_alive, verbose
        self.starts = 0
        self.process: subprocess.Popen[str] | None = None
        self._stopping = threading.Event()
        self._exited = threading.Event()
        self.returncode: int | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Supervised:
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen[str]:
        self.starts += 1
        return subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)

    def _run(self) -> None:
        pause = 1.0
        while True:
            started = time.monotonic()
            self.process = process = self._spawn()
            self._relay(process)
            self.returncode = process.wait()
            if self._stopping.is_set() or not self.keep_alive:
                break
            pause = 1.0 if time.monotonic() - started > 60 else min(pause * 2, 30.0)
            self._say(f"{self.name} (pid {process.pid}) exited with code {self.returncode}; "
                      f"starting it again in {pause:.0f} s")
            if self._stopping.wait(pause):
                break
        self._exited.set()

    def _relay(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if not self.verbose and is_native_noise(line):
                continue
            self.log.info(line.rstrip("\n"), **relayed(self.name))
            message = self.explain(line) if self.explain else None
            if message:
                self.log.info(message)

    def _say(self, message: str) -> None:
        self.log.warning(f"fedtl: {message}")

    def wait(self) -> int:
        """Until it exits for good; its last exit code."""
        self._exited.wait()
        self._thread.join(timeout=5)
        return self.returncode if self.returncode is not None else 1

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            _end(process, timeout)

    def reap(self, grace: float) -> bool:
        """End a process that has said it is done but is still running after ``grace`` s
        (without counting as asked to stop); True if it had to be ended."""
        process = self.process
        if process is None:
            return False
        try:
            process.wait(timeout=grace)
            return False
        except subprocess.TimeoutExpired:
            self._say(f"{self.name} (pid {process.pid}) said it ended but was still running "
                      f"{grace:.0f} s later; ending it")
            _end(process, 10.0)
            return True

    @property
    def asked_to_stop(self) -> bool:
        return self._stopping.is_set()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _end(process: subprocess.Popen[str], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited ``timeout`` s later."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def stop_on_signals(*children: Supervised) -> None:
    """SIGTERM and SIGINT stop ``children`` (the daemon then returns from its wait)."""
    def stop(signum: int, frame: object) -> None:
        for child in children:
            child.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
