"""How often a site asks for work: quickly while a run is under way, slowly when idle.

A site's SuperNode asks the SuperLink for messages, and its worker asks the SuperNode for
tasks, by polling (Flower has no push to a site). Polling at a run's pace all the time made
three idle sites, their SuperNodes and the SuperLink burn half a core between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

ACTIVE_SECONDS = 30.0  # a run's next message comes well within this of the last one


class Pacing:
    """The pause before the next ask: ``fast`` until ``active`` seconds have passed without
    work, then doubling at each ask up to ``idle``. After a quiet spell the first message is
    seen up to ``idle`` later than at the run's pace."""

    def __init__(self, fast: float, idle: float, active: float = ACTIVE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fast, self.idle, self.active, self.clock = fast, max(idle, fast), active, clock
        self.last_work = clock()  # a site that just started is about to be asked for work
        self.pause = fast

    def worked(self) -> None:
        """Work came: back to the run's pace, for the next ``active`` seconds."""
        self.last_work, self.pause = self.clock(), self.fast

    def next_pause(self) -> float:
        if self.clock() - self.last_work >= self.active:
            self.pause = min(self.pause * 2, self.idle)
        return self.pause
