"""The ServerApp's Grid, asking the SuperLink for replies every half second.

Flower 1.39's deployment Grid waits 3 s between pulls for replies (a literal in
`HttpGrid.send_and_receive`); a site's warm reply then waits up to 3 s for the server to look,
twice a round. This wrapper keeps Flower's Grid for everything and only re-implements that
loop with Flower's own public `push_messages` / `pull_messages`, at a shorter interval.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

POLL_SECONDS = 0.5  # each pull is one line in the SuperLink's access log


class PromptGrid(Grid):
    """``grid`` with a shorter pause between pulls for replies; all else is ``grid``'s."""

    def __init__(self, grid: Grid, poll: float = POLL_SECONDS) -> None:
        self.grid = grid
        self.poll = poll

    def set_run(self, run):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
        return self.grid.set_run(run)

    @property
    def run(self):  # type: ignore[no-untyped-def]  # noqa: ANN201
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:  # type: ignore[no-untyped-def]
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):  # type: ignore[no-untyped-def]  # noqa: ANN201
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.grid.push_messages(messages))
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while timeout is None or time.time() < end:
            got = list(self.grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting:
                break
            time.sleep(self.poll)
        return replies
