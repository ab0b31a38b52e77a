"""A site's polling pace: quick while a run is under way, slow when idle."""

from __future__ import annotations

from client.pacing import Pacing


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_asks_stay_quick_during_a_run_and_slow_to_the_idle_pace_after_it() -> None:
    clock = Clock()
    pacing = Pacing(fast=0.05, idle=0.5, active=30.0, clock=clock)
    clock.now = 29.0  # a run's next message comes well within 30 s
    assert pacing.next_pause() == 0.05
    clock.now = 31.0  # a quiet spell: the pauses double up to the idle pace
    assert [pacing.next_pause() for _ in range(6)] == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    pacing.worked()  # a task: quick again at once, and for the next 30 s
    assert pacing.next_pause() == 0.05
    clock.now = 60.0
    assert pacing.next_pause() == 0.05



def test_an_idle_pace_below_the_run_pace_is_the_run_pace() -> None:
    clock = Clock()
    pacing = Pacing(fast=0.5, idle=0.1, active=1.0, clock=clock)
    clock.now = 5.0
    assert pacing.next_pause() == 0.5
