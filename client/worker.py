"""A site's worker: one long-lived process that answers every message its SuperNode receives,
with fedtl's own ClientApp as installed at the site.

Flower 1.39 starts a fresh `flwr-clientapp` process for every message: it imports TensorFlow,
rebuilds the frozen base and retraces the DP step each time (tens of seconds a round), and it
runs the app code the *server* shipped in its FAB, so a hostile coordinator could ship code
that ignores the site's policy. `fedtl client` instead starts its SuperNode with
`--isolation process` and this worker beside it. The worker takes each task from the
SuperNode's Runtime API on loopback (authenticated by a secret file only the site's user can
read), runs fedtl's installed ClientApp on it in this process and pushes the reply. The
site's policy, budget and ledger checks run here, in code the server never supplied; the
server's FAB is never installed or run. TensorFlow, the base, the compiled DP step and the
site's features stay warm across rounds, and one task runs at a time.

The Runtime API calls are Flower's own (`flwr.supernode.runtime.run_clientapp` pulls and
pushes a task's messages the same way); Flower has no public API for a long-lived executor.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.pacing import Pacing

log = logging.getLogger("fedtl.worker")

# What the SuperNode protects with the SuperExec secret (flwr.supercore.superexec).
_PROTECTED = frozenset({"/flwr.proto.Runtime/AcquireTask", "/flwr.proto.Runtime/PullPendingTasks",
                        "/flwr.proto.Runtime/ClaimTask"})
POLL_SECONDS = 0.2  # between asks for a task while a run is under way (see `serve`)
IDLE_POLL_SECONDS = 0.5  # at most, after a quiet spell: the SuperNode's own pace
PULL_SECONDS = 20.0  # the most a message's arrays may take to reach the SuperNode
TOKEN_REFUSED = 401  # the Runtime API's answer to a task token it no longer holds


def task_retry_invoker() -> Any:
    """Flower's retry policy for a task's Runtime API calls, except that a refused task token
    fails the call. Flower's own policy then SIGINTs its process, the right end for a
    one-task `flwr-clientapp`; here it would end the site's warm worker (a CI run once saw a
    healthy site's worker started again mid-module, this being the one way found for that)."""
    import httpx
    from flwr.supercore.retry import make_simple_http_retry_invoker

    invoker = make_simple_http_retry_invoker()
    flowers = invoker.should_giveup

    def should_giveup(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError) \
                and exc.response.status_code == TOKEN_REFUSED:
            return True
        return bool(flowers(exc)) if flowers is not None else False

    invoker.should_giveup = should_giveup
    return invoker


def task_heartbeat(client: Any, lost: threading.Event) -> Callable[[], bool]:
    """Flower's task heartbeat (`make_task_heartbeat_fn_http`), except that a task the
    SuperNode no longer holds sets ``lost`` instead of SIGINTing the process (see
    `task_retry_invoker`). True: this beat needs no retry."""
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=E0611

    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            answer = client.SendTaskHeartbeat(request)
        except httpx.TransportError:
            return False  # the SuperNode is busy or restarting: Flower retries
        except httpx.HTTPStatusError as err:
            if err.response.status_code in (httpx.codes.SERVICE_UNAVAILABLE,
                                            httpx.codes.GATEWAY_TIMEOUT):
                return False
            lost.set()
            return True
        if not answer.success:
            lost.set()
        return True

    return beat


class SiteWorker:
    """Takes ClientApp tasks from one SuperNode and runs them with ``app``."""

    def __init__(self, runtime_address: str, secret: bytes, app: object | None = None) -> None:
        from flwr.supercore.interceptors import (RuntimeVersionHttpInterceptor,
                                                 SuperExecAuthHttpInterceptor)
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        from client.client_app import make_client_app

        self.runtime_address = runtime_address
        self.app = app if app is not None else make_client_app()
        self.tasks = 0
        self._acquirer = RuntimeHttpClient.from_server_address(
            server_address=runtime_address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                          SuperExecAuthHttpInterceptor(master_secret=secret,
                                                       protected_methods=_PROTECTED)],
            retry_invoker=make_simple_http_retry_invoker())

    def run_once(self) -> bool:
        """Run one waiting task, if there is one; True if one ran."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.constant import TaskType

        res = self._acquirer.AcquireTask(AcquireTaskRequest(
            supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[]))
        if not (res.HasField("task") and res.token):
            return False
        self._run_task(res.token)
        self.tasks += 1
        return True

    def _run_task(self, token: str) -> None:
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender

        client = self._task_client(token)
        lost = threading.Event()
        heartbeat = HeartbeatSender(task_heartbeat(client, lost))
        heartbeat.start()
        message = context = reply = None
        status, details = SubStatus.FAILED, "the site's worker failed (its log says why)"
        started = pulled = handled = time.perf_counter()
        try:
            # The run's FAB (the server's code) is never fetched, installed or run here.
            message, context = pull_task_input(client)
            pulled = time.perf_counter()
            reply = self.app(message=message, context=context)  # type: ignore[operator]
            handled = time.perf_counter()
            status, details = SubStatus.COMPLETED, ""
        except Exception as exc:  # the site's own app failed: say so, keep serving
            log.error("a task failed", exc_info=exc)
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      reason="the site's worker failed on this message (its "
                                             "log says why)"), reply_to=message)
        finally:
            try:
                delivered = deliver(client, reply, context, status, details, lost)
            finally:
                if heartbeat.is_running:
                    heartbeat.stop()
                client.close()
        kind = message.metadata.message_type if message is not None else "?"
        if not delivered:
            print(f"fedtl worker (pid {os.getpid()}): {kind} message dropped: the SuperNode let "
                  "go of its task before the reply was sent (its run ended or the task timed "
                  "out); waiting for the next message", flush=True)
            return
        done = time.perf_counter()
        handled = max(handled, pulled)
        print(f"fedtl worker (pid {os.getpid()}): {kind} message answered in "
              f"{done - started:.2f} s (pull {pulled - started:.2f}, work "
              f"{handled - pulled:.2f}, push {done - handled:.2f})", flush=True)

    def _task_client(self, token: str) -> Any:
        """A Runtime API client for one task, authenticated by its token."""
        from flwr.supercore.interceptors import (RuntimeTokenHttpInterceptor,
                                                 RuntimeVersionHttpInterceptor)
        from flwr.supercore.runtime import RuntimeHttpClient

        return RuntimeHttpClient.from_server_address(
            server_address=self.runtime_address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=task_retry_invoker())

    def serve(self, stop: threading.Event, pacing: Pacing | None = None) -> None:
        """Run tasks until ``stop`` is set; a Runtime API that is not up yet is waited for."""
        # Each ask is a request the SuperNode serves: 20 a second cost a site's worker and
        # SuperNode 9 s of CPU a minute between them, during runs too; 5 a second adds at
        # most 0.2 s to a message that the SuperNode itself polls for every 0.5 s.
        pacing = pacing or Pacing(POLL_SECONDS, IDLE_POLL_SECONDS)
        while not stop.is_set():
            try:
                if self.run_once():
                    pacing.worked()
                else:
                    stop.wait(pacing.next_pause())
            except Exception as exc:  # the SuperNode restarting: wait, then ask again
                log.debug("no task: %s", exc)
                stop.wait(1.0)


def deliver(client: Any, reply: Any, context: Any, status: str, details: str,
            lost: threading.Event) -> bool:
    """Push a task's reply (if any) and its end, as Flower's `run_clientapp` does; False if
    the SuperNode no longer holds the task, so there is nowhere to deliver them."""
    import httpx
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    if lost.is_set():
        return False
    try:
        if reply is not None and context is not None:
            push_message(client, reply, context)
        push_task_output(client, context, status, details)
    except httpx.HTTPStatusError as err:
        if err.response.status_code != TOKEN_REFUSED:
            raise
        return False
    return True


def pull_task_input(client: Any) -> tuple[Any, Any]:
    """The task's message and context, as Flower's `run_clientapp.pull_task_input` gets them,
    but retrying a message object the SuperNode is still fetching after 50 ms, not 1 s
    (Flower's default backoff; the SuperNode hands out the task before it has the
    message's arrays, so the first try nearly always misses), and for at most
    `PULL_SECONDS`, not Flower's two hours: a SuperNode that reconnects after the server
    restarted leaves a task behind for a message of a finished run, whose arrays never come,
    and one worker waiting on it would hold up every later message of the site."""
    from flwr.common.serde import context_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import (PullAppMessagesRequest,  # pylint: disable=E0611
                                        PullTaskInputRequest)
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf, make_pull_object_fn_protobuf)
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.app import Message

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)  # the run's FAB in `res` is never touched
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode handed out a task without a message")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node,
                                                  context.run_id),
        return_type=Message, initial_backoff=0.05, backoff_cap=1.0, max_time=PULL_SECONDS)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower sets it
    return message, context


def warm_up(verbose: bool) -> None:
    """Import TensorFlow and the DP trainer before the first message needs them."""
    from common.deploy.quiet import load_tensorflow

    load_tensorflow(verbose)


def _watch_parent(parent: int, stop: threading.Event) -> None:
    # `fedtl client` owns this worker: if it dies (even SIGKILL), the worker goes too.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.worker", description=__doc__)
    parser.add_argument("--runtime", required=True, help="the SuperNode's Runtime API host:port")
    parser.add_argument("--secret-file", required=True, type=Path)
    parser.add_argument("--parent", type=int, default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where it is
    stop = threading.Event()
    if args.parent:
        threading.Thread(target=_watch_parent, args=(args.parent, stop), daemon=True).start()
    secret = args.secret_file.read_bytes()
    worker = SiteWorker(args.runtime, secret)
    warm_up(args.verbose)
    print(f"fedtl worker (pid {os.getpid()}): ready; TensorFlow loaded, waiting for messages",
          flush=True)
    try:
        worker.serve(stop)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
