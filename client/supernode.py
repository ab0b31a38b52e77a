"""Flower's SuperNode, asking the SuperLink for messages every half second instead of every 3.

Flower 1.39's SuperNode sleeps 3 s (a literal in `start_client_internal`) whenever a pull
for messages comes back empty, so every message of a run waits up to 3 s before the site
sees it: a round has at least two (train, evaluate), and SecAgg+ adds three. The server side
is shortened the same way (`server.prompt_grid`). Flower has no setting for either, so this
entry point runs Flower's own `flower-supernode` with that module's clock capped: the module
uses `time` for its polling sleeps only (3 s idle, 0.5 s waiting for a reply or its
arrays; `tests/test_daemons.py` pins that). Each pull is one small gRPC request; a site
polling twice a second is a light load on the SuperLink for the tens of sites fedtl targets.

    python -m client.supernode [--poll SECONDS] <flower-supernode arguments>
"""

from __future__ import annotations

import sys
import time
from types import ModuleType

POLL_SECONDS = 0.5  # `fedtl client --poll`
MIN_POLL_SECONDS, MAX_POLL_SECONDS = 0.1, 3.0  # 3 s: Flower's own


class CappedClock:
    """``time`` with every sleep capped at ``poll`` seconds (the rest is ``time`` itself)."""

    def __init__(self, poll: float) -> None:
        self.poll = poll

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.poll))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def cap_polling(module: ModuleType, poll: float = POLL_SECONDS) -> None:
    """Cap the polling sleeps of Flower's SuperNode loop (``module``) at ``poll`` seconds."""
    module.time = CappedClock(poll)  # type: ignore[attr-defined]


def split_poll(args: list[str]) -> tuple[float, list[str]]:
    """(the poll interval, Flower's own arguments) from ``[--poll SECONDS] <flower args>``."""
    if args[:1] == ["--poll"] and len(args) >= 2:
        return float(args[1]), args[2:]
    return POLL_SECONDS, args


def main() -> int:
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    poll, flower_args = split_poll(sys.argv[1:])
    cap_polling(start_client_internal, poll)
    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
