"""The site's warm worker survives a task the SuperNode lets go of (no network, no TensorFlow).

Flower's Runtime API client SIGINTs its own process when a task token is refused or a task
heartbeat finds its task gone: right for a one-task `flwr-clientapp`, fatal for the site's
long-lived worker. These pin that only the task ends.
"""

from __future__ import annotations

import signal
import threading
from types import SimpleNamespace

import httpx
import pytest

from client import worker as worker_module
from client.pacing import Pacing
from client.worker import SiteWorker, deliver, task_heartbeat, task_retry_invoker


def refused(status: int = 401) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/runtime/push-task-output")
    return httpx.HTTPStatusError("refused", request=request,
                                 response=httpx.Response(status, request=request))


@pytest.fixture
def interrupts():
    """SIGINTs this process receives while the test runs (instead of KeyboardInterrupt)."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: seen.append(number))
    yield seen
    signal.signal(signal.SIGINT, previous)


def test_a_refused_task_token_fails_the_call_and_does_not_interrupt_the_worker(
        interrupts) -> None:
    calls = []

    def push() -> None:
        calls.append(1)
        raise refused(401)

    with pytest.raises(httpx.HTTPStatusError):
        task_retry_invoker().invoke(push)
    assert calls == [1]  # not retried
    assert interrupts == []


def test_other_runtime_errors_keep_flowers_retry_policy() -> None:
    outcomes = iter([refused(503), SimpleNamespace(ok=True)])

    def flaky():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    invoker = task_retry_invoker()
    invoker.wait_function = lambda seconds: None
    assert invoker.invoke(flaky).ok  # the 503 was retried, as Flower does


class FakeRuntime:
    """A task's Runtime API client: heartbeats answer as told, pushes as told."""

    def __init__(self, heartbeat=True) -> None:
        self.heartbeat = heartbeat
        self.closed = False

    def SendTaskHeartbeat(self, request):  # noqa: N802 (Flower's name)
        if isinstance(self.heartbeat, Exception):
            raise self.heartbeat
        return SimpleNamespace(success=self.heartbeat)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("answer", [False, refused(401)], ids=["unknown task", "refused token"])
def test_a_heartbeat_for_a_task_the_supernode_let_go_marks_it_lost(answer, interrupts) -> None:
    lost = threading.Event()
    assert task_heartbeat(FakeRuntime(answer), lost)() is True  # nothing to retry
    assert lost.is_set()
    assert interrupts == []


def test_a_heartbeat_the_supernode_cannot_take_now_is_retried_and_the_task_kept() -> None:
    lost = threading.Event()
    beat = task_heartbeat(FakeRuntime(httpx.ConnectError("restarting")), lost)
    assert beat() is False
    assert not lost.is_set()
    assert task_heartbeat(FakeRuntime(True), lost)() is True and not lost.is_set()


def test_a_lost_task_is_not_pushed(monkeypatch) -> None:
    import flwr.supernode.runtime.run_clientapp as flower

    pushed = []
    monkeypatch.setattr(flower, "push_message", lambda *args: pushed.append("reply"))
    monkeypatch.setattr(flower, "push_task_output", lambda *args: pushed.append("end"))
    lost = threading.Event()
    assert deliver(FakeRuntime(), "reply", "context", "completed", "", lost) is True
    assert pushed == ["reply", "end"]
    lost.set()
    assert deliver(FakeRuntime(), "reply", "context", "completed", "", lost) is False
    assert pushed == ["reply", "end"]


def test_a_task_whose_reply_is_refused_is_dropped_and_the_worker_serves_on(
        monkeypatch, capsys, interrupts) -> None:
    import flwr.supernode.runtime.run_clientapp as flower

    def refuse(*args) -> None:
        raise refused(401)

    answered = []
    message = SimpleNamespace(metadata=SimpleNamespace(message_type="train"))
    runtime = FakeRuntime()
    site = SiteWorker("127.0.0.1:9", b"secret", app=lambda message, context: "reply")
    monkeypatch.setattr(site, "_task_client", lambda token: runtime)
    monkeypatch.setattr(worker_module, "pull_task_input", lambda client: (message, "context"))
    monkeypatch.setattr(flower, "push_message", refuse)
    monkeypatch.setattr(flower, "push_task_output", lambda *args: answered.append(args))
    site._run_task("token")
    out = capsys.readouterr().out
    assert "train message dropped: the SuperNode let go of its task" in out
    assert "answered" not in out and answered == [] and runtime.closed
    assert interrupts == []
    # The same worker answers the next task.
    monkeypatch.setattr(flower, "push_message", lambda *args: None)
    site._run_task("token-2")
    assert "train message answered" in capsys.readouterr().out
    assert len(answered) == 1


def test_the_worker_asks_at_the_pace_it_is_given_and_runs_what_comes(monkeypatch) -> None:
    site = SiteWorker("127.0.0.1:9", b"secret", app=lambda message, context: "reply")
    stop, waits, answers = threading.Event(), [], iter([False, True, False, False])

    def run_once() -> bool:
        try:
            return next(answers)
        except StopIteration:
            stop.set()
            return False

    class Stop:
        def is_set(self) -> bool:
            return stop.is_set()

        def wait(self, seconds: float) -> None:
            waits.append(seconds)

    pacing = Pacing(fast=0.05, idle=0.5, active=30.0, clock=lambda: 100.0)
    pacing.last_work = 0.0  # idle for 100 s
    monkeypatch.setattr(site, "run_once", run_once)
    site.serve(Stop(), pacing)  # type: ignore[arg-type]
    # idle pace (0.1 after one doubling), then a task, then quick asks again
    assert waits == [0.1, 0.05, 0.05, 0.05]
