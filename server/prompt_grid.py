"""The ServerApp's Grid, asking the SuperLink for replies every half second.

Flower 1.39's deployment Grid waits 3 s between pulls for replies (a literal in
`HttpGrid.send_and_receive`); a site's warm reply then waits up to 3 s for the server to look,
twice a round. This wrapper keeps Flower's Grid for everything and only re-implements that
loop with Flower's own public `push_messages` / `pull_messages`, at a shorter interval.

It also stops waiting when told to: Flower 1.39's simulation leaves the ServerApp's thread
waiting for replies, with no deadline, when its engine dies (e.g. Ray's raylet aborting at
start-up), and that thread then keeps the process from ever exiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from common.errors import RunFailedError

POLL_SECONDS = 0.5  # each pull is one line in the SuperLink's access log


class PromptGrid(Grid):
    """``grid`` with a shorter pause between pulls for replies; all else is ``grid``'s.

    Once ``stopped`` is set, every call raises `RunFailedError`: the sites are gone.
    """

    def __init__(self, grid: Grid, poll: float = POLL_SECONDS,
                 stopped: threading.Event | None = None) -> None:
        self.grid = grid
        self.poll = poll
        self.stopped = stopped

    def _check(self) -> None:
        if self.stopped is not None and self.stopped.is_set():
            raise RunFailedError("the federation's sites stopped (Flower's simulation engine "
                                 "ended) while the server was waiting for them")

    def set_run(self, run):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
        return self.grid.set_run(run)

    @property
    def run(self):  # type: ignore[no-untyped-def]  # noqa: ANN201
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:  # type: ignore[no-untyped-def]
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        self._check()  # Flower's `sample_nodes` polls this until enough sites are there
        return self.grid.get_node_ids()

    def get_nodes(self):  # type: ignore[no-untyped-def]  # noqa: ANN201
        self._check()
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._check()
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while timeout is None or time.time() < end:
            got = list(self.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting:
                break
            time.sleep(self.poll)
        return replies
