"""Flower's SuperNode, asking the SuperLink for messages every half second instead of every 3.

Flower 1.39's SuperNode sleeps 3 s (a literal in `start_client_internal`) whenever a pull
for messages comes back empty, so every message of a run waits up to 3 s before the site
sees it: a round has at least two (train, evaluate), and SecAgg+ adds three. The server side
is shortened the same way (`server.prompt_grid`). Flower has no setting for either, so this
entry point runs Flower's own `flower-supernode` with that module's clock capped: the module
uses `time` for its polling sleeps only (3 s idle, 0.5 s waiting for a reply or its
arrays; `tests/test_daemons.py` pins that). The cap holds while a run is under way (a message
came in the last 30 s); after that it doubles at each sleep back to Flower's 3 s, so an idle
site sends the SuperLink one signed request every 3 s, not two a second (`client.pacing`).

It also keeps the SuperNode's replies in step with its messages (`answer_in_step`).

It can also tell the SuperLink it is alive more often than Flower's every 30 s
(`set_heartbeat`), so that a killed site stops holding up a round sooner.

    python -m client.supernode [--poll SECONDS] [--heartbeat SECONDS] <flower-supernode args>
"""

from __future__ import annotations

import sys
import time
from types import ModuleType
from typing import Any

from client.pacing import Pacing

POLL_SECONDS = 0.5  # `fedtl client --poll`: while a run is under way
MIN_POLL_SECONDS, MAX_POLL_SECONDS = 0.1, 3.0  # 3 s: Flower's own
IDLE_POLL_SECONDS = MAX_POLL_SECONDS  # when idle: Flower's own
HEARTBEAT_SECONDS = 30.0  # `fedtl client --heartbeat`: Flower's own
MIN_HEARTBEAT_SECONDS, MAX_HEARTBEAT_SECONDS = 10.0, 1800.0  # what Flower's SuperLink accepts


class CappedClock:
    """``time`` with every sleep capped at ``pacing``'s pause (the rest is ``time`` itself)."""

    def __init__(self, pacing: Pacing) -> None:
        self.pacing = pacing

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.pacing.next_pause()))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def cap_polling(module: ModuleType, poll: float = POLL_SECONDS) -> Pacing:
    """Cap the polling sleeps of Flower's SuperNode loop (``module``) at ``poll`` seconds while
    a run is under way and at up to Flower's 3 s when idle; returns the pacing to tell of
    work (`answer_in_step` does)."""
    pacing = Pacing(poll, IDLE_POLL_SECONDS)
    module.time = CappedClock(pacing)  # type: ignore[attr-defined]
    return pacing


def answer_in_step(module: ModuleType, pacing: Pacing | None = None) -> None:
    """Make the push stage of Flower's SuperNode loop (``module``) return only once the
    message its pull stage just stored is answered (and tell ``pacing`` of each message and
    each reply).

    Flower 1.39's loop pulls one message, then pushes every reply it holds, waiting only until
    there is at least one. When the SuperLink restarts while a site confirms a message of the
    run it was serving, Flower drops that run (`RunNotRunningException`) after the site's
    worker has answered: the stale reply stays behind. The next message's push then sends
    that stale reply at once and returns, and from then on every reply waits for the next
    message, long after the server gave up on it (a CI run lost a site for the rest of a
    resumed run). Waiting for the pulled message's own reply ends the lag after one message.
    """
    pull, push = module._pull_and_store_message, module._push_messages
    pulled: set[str] = set()

    def pull_and_store(*, state: Any, **kwargs: Any) -> int | None:
        before = _message_ids(state)
        run_id = pull(state=state, **kwargs)
        pulled.clear()
        pulled.update(_message_ids(state) - before)
        if pulled and pacing is not None:
            pacing.worked()
        return run_id

    def push_until_answered(*, state: Any, **kwargs: Any) -> None:
        push(state=state, **kwargs)  # a reply is pushed with the message it answers deleted
        while pulled & _message_ids(state):
            push(state=state, **kwargs)
        if pacing is not None:  # a reply after a long task: the next message comes soon
            pacing.worked()

    module._pull_and_store_message = pull_and_store  # type: ignore[attr-defined]
    module._push_messages = push_until_answered  # type: ignore[attr-defined]


def set_heartbeat(seconds: float) -> None:
    """Announce and send this SuperNode's heartbeat every ``seconds`` instead of Flower's 30.

    The SuperLink counts a site gone after two missed heartbeats, and until then a round
    waits for a site that was killed (Flower 1.39 has no setting: its client connection and
    heartbeat sender read the constant from their own module namespaces, patched here).
    """
    from flwr.client.grpc_rere_client import connection
    from flwr.supercore import heartbeat

    connection.HEARTBEAT_DEFAULT_INTERVAL = seconds  # type: ignore[attr-defined]
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = seconds  # type: ignore[attr-defined]


def _message_ids(state: Any) -> set[str]:
    """The ids of the messages and replies ``state`` (Flower's in-memory NodeState) holds."""
    with state.lock_msg_store:
        return set(state.msg_store)


def split_options(args: list[str]) -> tuple[float, float, list[str]]:
    """(the poll interval, the heartbeat interval, Flower's own arguments) from
    ``[--poll SECONDS] [--heartbeat SECONDS] <flower args>``."""
    ours = {"--poll": POLL_SECONDS, "--heartbeat": HEARTBEAT_SECONDS}
    while args[:1] and args[0] in ours and len(args) >= 2:
        ours[args[0]], args = float(args[1]), args[2:]
    return ours["--poll"], ours["--heartbeat"], args


def main() -> int:
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    poll, heartbeat, flower_args = split_options(sys.argv[1:])
    pacing = cap_polling(start_client_internal, poll)
    set_heartbeat(heartbeat)
    answer_in_step(start_client_internal, pacing)
    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
