"""The ServerApp's Grid wrapper: prompt pulls, and no endless wait once the sites are gone."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from common.errors import RunFailedError
from server.prompt_grid import PromptGrid


class SilentGrid:
    """A grid whose sites never answer; ``on_pull`` runs at every pull."""

    def __init__(self, on_pull=lambda n: None) -> None:
        self.pulls = 0
        self.on_pull = on_pull

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        self.on_pull(self.pulls)
        return []

    def get_node_ids(self):
        return [1, 2]


class AnsweringGrid(SilentGrid):
    """Each site answers at the third pull."""

    def pull_messages(self, message_ids):
        self.pulls += 1
        if self.pulls < 3:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m))
                for m in message_ids]


def test_replies_are_gathered_until_every_message_has_one() -> None:
    grid = AnsweringGrid()
    replies = PromptGrid(grid, poll=0.0).send_and_receive(["a", "b"])
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert grid.pulls == 3


def test_a_timeout_returns_what_came_without_waiting_for_the_rest() -> None:
    grid = SilentGrid()
    assert list(PromptGrid(grid, poll=0.01).send_and_receive(["a"], timeout=0.05)) == []
    assert grid.pulls >= 1


def test_a_wait_without_timeout_ends_with_a_run_failure_once_the_engine_has_stopped() -> None:
    # Flower's simulation leaves its ServerApp thread waiting when the engine dies: the
    # wrapper is what lets that thread, and so the process, end.
    stopped = threading.Event()
    grid = SilentGrid(on_pull=lambda n: stopped.set() if n == 3 else None)
    with pytest.raises(RunFailedError, match="simulation engine ended"):
        PromptGrid(grid, poll=0.0, stopped=stopped).send_and_receive(["a"], timeout=None)
    assert grid.pulls == 3


def test_waiting_for_sites_to_connect_also_ends_once_the_engine_has_stopped() -> None:
    stopped = threading.Event()
    grid = PromptGrid(SilentGrid(), stopped=stopped)
    assert list(grid.get_node_ids()) == [1, 2]
    stopped.set()
    with pytest.raises(RunFailedError):
        grid.get_node_ids()
