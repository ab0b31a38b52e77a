"""The server's side of a run: FedAvg over the heads, then the Keras model and the report."""

from __future__ import annotations

import sys
import time
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import httpx
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_utils import (ObjectPullError, ObjectPushError,
                                                        ObjectUnavailableError)

from common import protocol
from common.config import RunConfig
from common.errors import ConfigError, RunFailedError, UpdateRejectedError
from common.features.model import (PREPROCESSING, build_base, full_model, initial_head_weights,
                                   save_model)
from common.features.extraction import LazyBase
from common.features.public_basis import run_basis
from common.model_card import write_model_card
from common.privacy.hull import HullPrior
from common.privacy.oneshot import sums_std
from common.privacy.release import as_played, one_shot_split, releases, sums_noise
from common.report import (BaseInfo, DataFigures, FinalFigures, Guarantees, RecordLevel, Report,
                           RoundRecord, Timing, versions, write_report)
from common.progress import LiveProgress
from common.site import base_spec
from server.checkpoint import Checkpoint, check_resumable, load_checkpoint, save_checkpoint
from server.oneshot import one_shot_round
from server.client_dp import (ClientLevelState, client_level_epsilon, client_level_guarantee,
                              with_client_dp)
from server.replies import PersonalRejectedAfterFigures, ReplyRules, check_personal_reply
from server.run_registry import RunRegistry
from server.runbook import RunBook, site_summary
from server.secure import run_secure, run_secure_sums
from server.strategy import (flower_strategy, optimizer_state, restore_optimizer_state,
                             validated)
from server.mlflow_tracking import MlflowLog
from server.tensorboard import TensorBoardLog

log = logging.getLogger("fedtl.server")


@dataclass(frozen=True)
class PreRun:
    """What happened before Flower started (a simulation extracts features up front)."""

    feature_extraction_seconds: float = 0.0
    started: float = 0.0
    # A simulation's scenario: what each site holds and sees (for the report), and the
    # accuracy of a head on a held-out site whose domain no site trains on.
    sites: dict[str, Any] = field(default_factory=dict)
    unseen_accuracy: Callable[[list[np.ndarray]], float] | None = None


@dataclass
class PersonalResult:
    """Per site: accuracy of its own fine-tuned head and of the global head, its epsilon."""

    personal: dict[str, float] = field(default_factory=dict)
    global_: dict[str, float] = field(default_factory=dict)
    fine_tuned: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


class RoundTable:
    """Prints one table row per round as the run goes; on a terminal, a live line below the
    rows shows the rounds done with the last accuracy and epsilon. Accuracy is the global
    head's on the sites' held-out splits, each site counting once (as `fedtl compare`)."""

    HEADER = (f"{'round':>5} | {'train loss':>10} | {'mean site':>9} | {'worst':>6} | "
              f"{'unseen':>6} | {'max eps':>8} | sites")

    def __init__(self, rounds: int, stream: TextIO = sys.stdout,
                 live: bool | None = None) -> None:
        self.stream = stream
        print(self.HEADER, file=stream)
        print("-" * len(self.HEADER), file=stream, flush=True)
        live = stream.isatty() if live is None else live
        self._line = LiveProgress("training", rounds, "rounds", stream=stream, live=True) \
            if live else None

    def __call__(self, r: RoundRecord) -> None:
        def fmt(value: float | None, spec: str) -> str:
            return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)

        note = f"{len(r.sites_trained)} trained"
        if r.declined:
            note += f", {len(r.declined)} declined (budget)"
        if r.refused:
            note += f", {len(r.refused)} refused (policy)"
        if r.rejected:
            note += f", {len(r.rejected)} rejected"
        if r.unconfirmed:
            note += f", {len(r.unconfirmed)} in the secure sum with rejected figures"
        if r.failure:
            note += "; aggregation failed, head kept"
        row = (f"{r.round:>5} | {fmt(r.train_loss, '10.4f')} | "
               f"{fmt(r.mean_site_accuracy, '9.4f')} | "
               f"{fmt(r.worst_site_accuracy, '6.3f')} | {fmt(r.unseen_accuracy, '6.3f')} | "
               f"{fmt(r.epsilon_max, '8.3f')} | {note}")
        if self._line is None:
            print(row, file=self.stream, flush=True)
            return
        self._line.say(row)
        self._line.update(r.round, f"mean site {fmt(r.mean_site_accuracy, '.3f')}, max epsilon "
                                   f"{fmt(r.epsilon_max, '.2f')}")

    def close(self) -> None:
        if self._line is not None:
            self._line.close()


def run_server(grid: Grid, cfg: RunConfig, prerun: PreRun | None = None,
               registry: RunRegistry | None = None) -> Path:
    """Run ``cfg.rounds`` rounds on ``grid``; write model.keras and report.json to ``cfg.out``.

    After every round the run's state is checkpointed in ``cfg.out``; if a checkpoint of the
    same run is there, the run resumes after its last completed round. ``registry`` (the
    daemon's) learns of the run so that a restarted daemon can relaunch it; a run that stops
    on an error is marked failed there (a relaunch would repeat it), with the reason; one
    that lost its SuperLink is marked interrupted, and a restarted daemon resumes it.
    """
    prerun = prerun or PreRun(started=time.time())
    if not cfg.classes:
        raise ConfigError("the run config names no classes; set 'classes' (comma-separated)")
    out = Path(cfg.out)
    if (out / "report.json").exists():
        raise ConfigError(f"{out} already holds a finished run; choose another output folder")
    settings = cfg.to_flower()
    checkpoint = load_checkpoint(out)
    if checkpoint is not None:
        check_resumable(checkpoint, settings)
    run_id = checkpoint.run_id if checkpoint else (cfg.run_id or uuid.uuid4().hex)
    if registry is not None:
        registry.started(run_id, str(out.resolve()), settings)
    try:
        return _federate(grid, cfg, prerun, run_id, checkpoint, registry)
    except Exception as exc:
        if registry is not None:
            mark = registry.interrupted if lost_superlink(exc) else registry.failed
            mark(run_id, f"{type(exc).__name__}: {exc}")
        raise


# What the grid raises when the SuperLink is gone or restarted under the run (its HTTP and
# object transport, or gRPC); not a fault of the run, which resumes once the daemon is back.
_LINK_ERRORS = (httpx.TransportError, httpx.HTTPStatusError, grpc.RpcError, ConnectionError,
                ObjectPushError, ObjectPullError, ObjectUnavailableError)


def lost_superlink(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is the run's link to its SuperLink
    failing."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, _LINK_ERRORS):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _federate(grid: Grid, cfg: RunConfig, prerun: PreRun, run_id: str,
              checkpoint: Checkpoint | None, registry: RunRegistry | None) -> Path:
    out, settings = Path(cfg.out), cfg.to_flower()
    lazy = LazyBase.shared(base_spec(cfg), cfg.stats_cache)
    spec, fingerprint = lazy.spec.for_saving, lazy.fingerprint  # no TensorFlow yet
    public_basis, points = (run_basis(cfg, lazy) if cfg.one_shot and checkpoint is None
                            else (None, None))
    # The run's planned noise, not the sites' stated figures: a site cannot talk the server
    # into projecting a class (a site that adds more noise only makes the check stricter).
    prior = None if points is None else HullPrior(
        points, sums_std(sums_noise(cfg), cfg.private_moment),
        distributed=cfg.sums_noise == "distributed")
    initial = checkpoint.arrays if checkpoint else initial_head_weights(
        spec.feature_dim, len(cfg.classes), cfg.head_width, cfg.seed)
    # Only the saved model needs the Keras base (and TensorBoard's writer, opened after the
    # first round, TensorFlow): loading them (4-20 s) runs beside the first round.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtl-base")
    saving_base = pool.submit(build_base, spec, cfg.stats_cache)
    pool.shutdown(wait=False)
    book = RunBook(initial)
    client_level = ClientLevelState(
        **(checkpoint.client_dp if checkpoint and checkpoint.client_dp else {}))
    strategy = validated(with_client_dp(flower_strategy(cfg), cfg, client_level), book, cfg,
                         fingerprint)
    elapsed_before = 0.0
    if checkpoint is not None:
        book.restore(checkpoint.book, checkpoint.arrays, checkpoint.one_shot)
        restore_optimizer_state(strategy, checkpoint.optimizer)
        elapsed_before = checkpoint.elapsed_seconds
        print(f"resuming run {run_id} after round {checkpoint.round} of {cfg.run_rounds} "
              f"(checkpoint in {out})", flush=True)
    table = RoundTable(cfg.run_rounds)
    for record in book.history:
        table(record)
    tensorboard = TensorBoardLog(out, settings)  # rounds before a restart are there already
    mlflow = (MlflowLog(cfg.mlflow, cfg.mlflow_experiment, out, run_id, settings,
                        resume=checkpoint is not None) if cfg.mlflow else None)
    try:
        def after_round(record: RoundRecord) -> None:
            if prerun.unseen_accuracy is not None:
                record.unseen_accuracy = prerun.unseen_accuracy(book.head)
            if cfg.client_dp != "off":
                record.client_epsilon = client_level_epsilon(
                    client_level.noise_multipliers, delta=cfg.client_delta,
                    accountant=cfg.accountant)
            table(record)
            tensorboard.round(record, book.epsilon_by_site)
            if mlflow is not None:
                mlflow.round(record, book.epsilon_by_site)
            state, head = book.snapshot()
            save_checkpoint(out, Checkpoint(
                run_id=run_id, settings=settings, round=record.round, arrays=head, book=state,
                optimizer=optimizer_state(strategy), client_dp=asdict(client_level),
                one_shot=book.one_shot[0] if book.one_shot else [],
                elapsed_seconds=elapsed_before + time.time() - prerun.started))

        book.on_round = after_round
        remaining = cfg.run_rounds - (checkpoint.round if checkpoint else 0)
        # The server is the authority on the class list; sites check theirs against it.
        federation = ConfigRecord({protocol.FINGERPRINT: fingerprint,
                                   protocol.CLASSES: list(cfg.classes),
                                   protocol.RUN_ID: run_id})
        if cfg.one_shot and checkpoint is None:
            if cfg.secure_aggregation:
                run_secure_sums(grid, book, cfg, public_basis, dict(federation), strategy.rules,
                                prior)
            else:
                one_shot_round(grid, cfg, federation, public_basis, strategy, prior)
            book.round_offset, remaining = 1, remaining - 1
        if remaining > 0 and cfg.secure_aggregation:
            run_secure(grid, book, cfg, book.head, dict(federation), remaining, strategy.rules)
        elif remaining > 0:
            strategy.start(grid, ArrayRecord(book.head), num_rounds=remaining,
                           train_config=federation,
                           evaluate_config=ConfigRecord(dict(federation)),
                           timeout=cfg.round_timeout)
        if not any(r.sites_trained for r in book.history):
            refused = sum(len(r.refused) for r in book.history)
            raise RunFailedError(
                "no site contributed an accepted update in any round; nothing to save"
                + (f" ({refused} refusal(s) by sites' own policies)" if refused else "")
                + " (see the warnings above for why sites declined, refused or were rejected)")
        personal = (personalize(grid, book.head, federation, cfg.round_timeout, book,
                                strategy.rules, cfg.personal_from_release)
                    if cfg.personalize else None)
        out.mkdir(parents=True, exist_ok=True)
        save_model(full_model(saving_base.result(), book.head, len(cfg.classes),
                              cfg.head_width), out / "model.keras")
        report = build_report(cfg, fingerprint, book, prerun, run_id, elapsed_before,
                              personal, client_level)
        write_model_card(out, report)  # before the report, which is written last
        path = write_report(out, report)
        table.close()
        tensorboard.close()
        if mlflow is not None:
            mlflow.finish()
        if registry is not None:
            registry.finished(run_id)
        return path
    except BaseException:
        table.close()
        if mlflow is not None:
            mlflow.failed()
        raise


def personalize(grid: Grid, weights: list[np.ndarray], federation: ConfigRecord,
                timeout: float, book: RunBook, rules: ReplyRules,
                with_one_shot: bool = False) -> PersonalResult:
    """Ask every site to build its own head from ``weights`` (fine-tuned with DP on its own
    budget or, ``with_one_shot``, from its one-shot release and the run's summed one, sent
    along) and to report that head's and the global head's accuracy on its held-out split."""
    config = dict(federation)
    records: dict[str, Any] = {protocol.ARRAYS: ArrayRecord(weights)}
    if with_one_shot:
        if book.one_shot is None:  # the head is saved all the same
            log.warning("personalization skipped: --personal-tuning ridge needs the run's "
                        "summed one-shot release, which round 1 of this run did not produce")
            return PersonalResult()
        totals, count = book.one_shot
        records[protocol.ONE_SHOT_TOTALS] = ArrayRecord([t.astype(np.float64) for t in totals])
        config[protocol.ONE_SHOT_COUNT] = count
        penalty = next((r.ridge_lambda for r in book.history if r.ridge_lambda is not None),
                       None)
        if penalty is not None:  # the sites solve their personal heads with the same one
            config[protocol.ONE_SHOT_PENALTY] = penalty
    content = RecordDict({**records, protocol.CONFIG: ConfigRecord(config)})
    messages = [Message(content=content, dst_node_id=node,
                        message_type=f"train.{protocol.PERSONALIZE}")
                for node in grid.get_node_ids()]
    result = PersonalResult()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            result.refused.append(book.known(node))
            log.warning("personalization: %s did not fine-tune: %s", book.known(node),
                        reply.error.reason)
            continue
        try:
            figures = check_personal_reply(reply, rules)
        except UpdateRejectedError as exc:
            result.refused.append(book.known(node))
            spent = ""
            if isinstance(exc, PersonalRejectedAfterFigures):
                book.note_personalization(book.label(node, exc.name), exc.epsilon, exc.steps)
                spent = f" (its stated spending stands: epsilon {exc.epsilon:.3f})"
            log.warning("personalization: dropped a reply: %s%s", exc, spent)
            continue
        name = book.label(node, figures.name)
        if figures.accuracy is not None and figures.global_accuracy is not None:
            result.personal[name] = figures.accuracy
            result.global_[name] = figures.global_accuracy
        result.fine_tuned.append(name)
        book.note_personalization(name, figures.epsilon, figures.steps)
    print(f"personalization: {len(result.fine_tuned)} site(s) built their own head"
          + (f", {len(result.refused)} did not" if result.refused else ""), flush=True)
    return result


def site_privacy(cfg: RunConfig, book: RunBook) -> dict[str, dict[str, Any]]:
    """Per site: its record-level guarantee and the DP-SGD mechanism behind it, as stated
    in the site's last reply with sound figures (`SitePrivacy`), and what its policy tightened."""
    if not cfg.dp:
        return {site: {"epsilon": None, "delta": None, "private": False,
                       "tightened": book.tightened.get(site, [])}
                for site in book.privacy}
    out = {}
    for site, p in sorted(book.privacy.items()):
        tightened = book.tightened.get(site, [])
        out[site] = {"epsilon": p.epsilon, "delta": cfg.delta,
                     "noise_multiplier": p.noise_multiplier, "sampling_rate": p.sampling_rate,
                     "steps": p.steps, "accountant": cfg.accountant,
                     "sampling": "poisson", "private": True, "tightened": tightened}
        split = one_shot_split(as_played(cfg, tightened))
        if split is not None:
            out[site]["one_shot_release"] = split
    return out


def guarantees(cfg: RunConfig, client_level: ClientLevelState,
               tightened: dict[str, list[str]] | None = None,
               sites: list[str] | None = None) -> Guarantees:
    """What the run's epsilons cover and what left the sites outside them, as each site
    played the run (its own policy may have tightened it: ``tightened`` per site)."""
    tightened = tightened or {}
    played = [releases(as_played(cfg, tightened.get(site, []))) for site in sites or []]
    played = played or [releases(cfg)]
    return Guarantees(
        record_level=RecordLevel(
            private=cfg.dp, unit="one image of one site (add/remove)",
            target_epsilon=cfg.target_epsilon if cfg.dp else None,
            delta=cfg.delta if cfg.dp else None, accountant=cfg.accountant,
            covers=list(dict.fromkeys(c for r in played for c in r.covered)),
            released_outside_guarantee=list(dict.fromkeys(o for r in played for o in r.outside)),
            tightened_by_sites=tightened),
        client_level=client_level_guarantee(cfg, client_level),
        secure_aggregation={
            "on": cfg.secure_aggregation,
            **({"protocol": "SecAgg+ (Flower)", "server_sees": "the weighted mean of the "
                "heads of the sites that completed the round"
                + (" (round 1: the sum of the sites' one-shot releases)" if cfg.one_shot
                   else ""),
                "coordinate_clip": cfg.secagg_clip,
                "one_shot_noise": cfg.sums_noise if cfg.one_shot else None}
               if cfg.secure_aggregation else {})})


def build_report(cfg: RunConfig, fingerprint: str, book: RunBook,
                 prerun: PreRun, run_id: str, elapsed_before: float = 0.0,
                 personal: PersonalResult | None = None,
                 client_level: ClientLevelState | None = None) -> Report:
    last = book.history[-1]
    global_acc = dict(last.site_accuracy)
    if personal is not None:
        global_acc.update(personal.global_)  # measured on the same final head
    # The model each site would use: its own head where it has one, else the global head.
    used = {**global_acc, **(personal.personal if personal else {})}
    sites: dict[str, dict[str, Any]] = {name: dict(info) for name, info in prerun.sites.items()}
    for name in set(global_acc) | set(book.epsilon_by_site):
        entry = sites.setdefault(name, {})
        entry["global_accuracy"] = global_acc.get(name)
        if personal is not None:
            entry["personal_accuracy"] = personal.personal.get(name)
        if cfg.dp:
            entry["epsilon"] = book.epsilon_by_site.get(name)
        if name in book.tightened:
            entry["tightened_by_its_policy"] = book.tightened[name]
    return Report(
        run_id=run_id, settings=cfg.to_flower(),
        base=BaseInfo(weights=cfg.weights, fingerprint=fingerprint, base_layer=cfg.base_layer,
                      image_size=cfg.image_size, preprocessing=PREPROCESSING),
        versions=versions(), rounds=list(book.history),
        final=FinalFigures(
            accuracy=last.accuracy, per_site_accuracy=used, **site_summary(used),
            per_site_global_accuracy=global_acc,
            per_site_personal_accuracy=personal.personal if personal else None,
            unseen_domain_accuracy=last.unseen_accuracy, strategy=cfg.strategy,
            personalized=personal is not None,
            epsilon=book.epsilon_by_site if cfg.dp else {}, delta=cfg.delta,
            target_epsilon=cfg.target_epsilon if cfg.dp else None, private=cfg.dp),
        sites=sites, privacy=site_privacy(cfg, book),
        guarantees=guarantees(cfg, client_level or ClientLevelState(), book.tightened,
                              sorted(book.privacy)),
        data=DataFigures(skipped_images=sum(book.skipped.values()),
                         skipped_images_by_site=dict(book.skipped)),
        timing=Timing(total_seconds=elapsed_before + time.time() - prerun.started,
                      feature_extraction_seconds=prerun.feature_extraction_seconds
                      + book.extract_seconds))
