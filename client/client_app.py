"""fedtl's Flower ClientApp: unpack the Message, call the site's code, pack the reply.

Everything in a message is the server's word, which a site does not take on trust: the run
config, class list, run id and arrays are checked, and the run is held against the site's own
policy (`common.privacy.policy.admit`) before any of its data is read. Every decision goes to the
site's audit trail; a refusal tells the server only that, the reasons stay in the site's log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.secure_aggregation import legacy_messages_mod, secure_aggregation_mod
from common import protocol, resend
from common.progress import ProgressCallback
from common.privacy.audit_trail import AuditTrail, Decision
from common.config import NODE_NAME, RunConfig, SiteConfig, valid_run_id
from common.data.images import check_same_classes, list_dataset
from common.errors import (BudgetExhaustedError, DataError, FedtlError, PolicyRefusedError,
                           UpdateRejectedError)
from common.features.extraction import LazyBase
from common.privacy.ledger import PrivacyLedger
from common.features.model import full_model, head_shapes, save_model
from common.privacy.centring import folded_head
from common.personal import (ACCURACY_FILE, MODEL_FILE, OwnRelease, estimated_weight,
                             exact_release, load_head, load_own_release, logistic_toward,
                             note_own_release, own_penalty, own_release_share,
                             personal_dir, ridge_personal_head, save_head, save_joint_note,
                             save_own_release)
from common.privacy.penalty import HIGHEST, LOWEST
from common.privacy.policy import REFUSED, admit
from common.storage import write_json_atomically
from common.data.scenario import Scenario, build_scenario
from common.privacy.release import figure_mode
from common.privacy.oneshot import PublicBasis, release_shapes
from common.site import (RoundResult, SiteAccount, SiteData, base_spec, centred,
                         check_not_spent, evaluate, load_simulated_site, load_site, release_sums,
                         released_accuracies, train_round)

log = logging.getLogger("fedtl.site")
DECLINED = "declined"  # the audit trail's word for a round the budget does not allow
MALFORMED = "(malformed)"  # the audit trail's run id for a request whose id was refused
Figures = dict[str, int | float]  # a reply's metrics, as Flower's MetricRecord takes them


def _federation_config(cfg: RunConfig, msg: Message, context: Context) -> RunConfig:
    """The run config with the server's class list (and Flower's site count in simulation)."""
    sent = msg.content.config_records[protocol.CONFIG].get(protocol.CLASSES)
    if not isinstance(sent, list) or not sent:
        raise FedtlError(f"the server sent no class list (got {str(sent)[:80]!r})")
    cfg = cfg.replace(classes=tuple(str(c) for c in sent))
    partitions = context.node_config.get("num-partitions")
    return cfg if partitions is None else cfg.replace(clients=int(partitions))


def _site_config(cfg: RunConfig, context: Context) -> SiteConfig:
    node = context.node_config
    if "partition-id" in node:  # a virtual site of a simulation
        return SiteConfig.simulated(cfg, int(node["partition-id"]))
    return SiteConfig.from_node_config(node, context.node_id)


# A site reads its folder once per run and process: simulated sites share long-lived worker
# processes, where listing and hashing a folder for every message would dominate a round.
def _base(cfg: RunConfig, site: SiteConfig) -> LazyBase:
    """This process's base for the run, its public statistics kept in the site's state."""
    stats = site.state / "public-stats" if site.partition is None else cfg.stats_cache
    return LazyBase.shared(base_spec(cfg), stats)


@functools.lru_cache(maxsize=256)
def _site_data(cfg: RunConfig, site: SiteConfig, run_key: str) -> SiteData:
    base = _base(cfg, site)
    if site.partition is None:
        listing = list_dataset(site.data)
        check_same_classes(cfg.classes, listing.classes, f"site {site.name} ({site.data})")
        # A deployed site's first run extracts all its images: its operator sees how far.
        with ProgressCallback(f"fedtl site {site.name}: extracting features") as progress:
            return load_site(cfg, site.name, listing, base, site.cache_dir,
                             holdout_seed=(cfg.seed,), progress=progress)
    return load_simulated_site(cfg, _scenario(cfg, run_key).sites[site.partition], base)


@functools.lru_cache(maxsize=2)
def _scenario(cfg: RunConfig, run_key: str) -> Scenario:
    """Every simulated site's share and shift: built once per worker, not once per site."""
    return build_scenario(cfg)


def _refuse(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


@dataclass(frozen=True)
class _Request:
    """A message as the server put it: the run it asks for, this site, the run's key."""

    asked: RunConfig
    site: SiteConfig
    run_key: str

    def record(self, decision: str, reason: str = "", changes: tuple[str, ...] = ()) -> None:
        AuditTrail(self.site.state).record(Decision(
            run_id=self.run_key, decision=decision, reason=reason, changes=changes,
            settings=self.asked.to_flower()))


@dataclass(frozen=True)
class _Opened:
    """What every handler starts from: the admitted run, the site, its data, the server's head."""

    cfg: RunConfig
    site: SiteConfig
    run_key: str
    data: SiteData
    fingerprint: str
    weights: list[np.ndarray] | None
    tightened: tuple[str, ...]

    @property
    def account(self) -> SiteAccount:
        return _account(self.site, self.run_key)

    def site_record(self) -> ConfigRecord:
        return ConfigRecord({protocol.SITE_NAME: self.data.name,
                             protocol.FINGERPRINT: self.fingerprint,
                             protocol.TIGHTENED: "; ".join(self.tightened)})


def _account(site: SiteConfig, run_key: str) -> SiteAccount:
    return SiteAccount(PrivacyLedger(site.state), run_key, site.budget, site.policy)


def _request(config: RunConfig | None, msg: Message, context: Context) -> _Request:
    asked = config if config is not None else RunConfig.from_flower(context.run_config)
    asked = _federation_config(asked, msg, context)
    site = _site_config(asked, context)
    try:
        run_key = _run_key(msg, context)
    except FedtlError as exc:  # on record, under a placeholder: the id itself is no name
        _Request(asked, site, MALFORMED).record(REFUSED, reason=str(exc))
        raise
    return _Request(asked, site, run_key)


def _open(request: _Request, msg: Message) -> _Opened:
    """Admit the run under the site's policy, then check the server's base and head."""
    site = request.site
    trail = AuditTrail(site.state)
    approved = site.policy.require_approval and trail.approved(request.run_key)
    admission = admit(request.asked, site.policy, site.budget, run_id=request.run_key,
                      approved=approved)
    if admission.decision == REFUSED or admission.cfg is None:
        raise PolicyRefusedError(admission.reason)
    request.record(admission.decision, changes=admission.changes)
    cfg = admission.cfg
    check_not_spent(cfg, _account(site, request.run_key))
    if site.base_dtype:  # the site knows its hardware; the arithmetic changes no guarantee
        cfg = cfg.replace(base_dtype=site.base_dtype)
    if admission.changes:
        log.info("site %s: run %s tightened by the site's policy: %s", site.name,
                 request.run_key, "; ".join(admission.changes))
    base = _base(cfg, site)
    server = msg.content.config_records[protocol.CONFIG]
    if server.get(protocol.FINGERPRINT) != base.fingerprint:
        raise FedtlError(
            f"site {site.name}: its VGG16 base fingerprint {base.fingerprint[:12]} differs from "
            f"the federation's {str(server.get(protocol.FINGERPRINT))[:12]}; use the same "
            "--weights, --image-size and --base-layer as the server")
    data = _site_data(cfg, site, request.run_key)
    arrays = msg.content.array_records.get(protocol.ARRAYS)
    weights = None
    if arrays is not None:
        shapes = head_shapes(data.test_x.shape[1], len(cfg.classes), cfg.head_width)
        weights = protocol.check_global_head(arrays.to_numpy_ndarrays(), shapes)
    return _Opened(cfg, site, request.run_key, data, base.fingerprint, weights,
                   admission.changes)


def _refusal(msg: Message, exc: Exception, site: str, request: _Request | None) -> Message:
    """An error reply that says only that the site did not take part: budgets, policies,
    data errors (which name files, folders or classes) stay in the site's log and trail."""
    if isinstance(exc, _Withheld):
        return _refuse(msg, protocol.WITHHELD, str(exc))
    if isinstance(exc, (BudgetExhaustedError, PolicyRefusedError)):
        decision = DECLINED if isinstance(exc, BudgetExhaustedError) else REFUSED
        log.warning("site %s: %s the run's request: %s", site, decision, exc)
        if request is not None:
            request.record(decision, reason=str(exc))
        if decision == DECLINED:
            return _refuse(msg, protocol.BUDGET_EXHAUSTED,
                           f"site {site} declines: its privacy budget does not allow this round")
        return _refuse(msg, protocol.POLICY_REFUSED,
                       f"site {site} does not admit this run under its own policy (its log "
                       "and audit trail say why)")
    if isinstance(exc, DataError):
        log.error("site %s: %s", site, exc)
        return _refuse(msg, protocol.INCOMPATIBLE,
                       f"site {site}: its data cannot be used for this federation (the "
                       "site's log says why)")
    if isinstance(exc, FedtlError):
        return _refuse(msg, protocol.INCOMPATIBLE, str(exc))
    log.error("site %s: failed on a %s message", site, msg.metadata.message_type,
              exc_info=exc)
    simulated = request is not None and request.site.partition is not None
    detail = f": {type(exc).__name__}: {exc}" if simulated else " (its log says why)"
    return _refuse(msg, protocol.INCOMPATIBLE, f"site {site} could not process the message"
                   + detail)


def train_figures(cfg: RunConfig, result: RoundResult, data: SiteData) -> dict[str, float]:
    """The figures of a train reply (protocol.TRAIN_FIGURES, and with exact site metrics the
    protocol.EXACT_TRAIN_FIGURES)."""
    figures: dict[str, float] = {
        protocol.NUM_EXAMPLES: result.num_examples,
        protocol.EPSILON: result.epsilon,
        protocol.SAMPLING_RATE: result.settings.sampling_rate,
        protocol.NOISE_MULTIPLIER: result.settings.noise_multiplier,
        protocol.STEPS: result.steps,
    }
    if figure_mode(cfg) == "exact":
        figures.update({protocol.TRAIN_LOSS: result.train_loss,
                        protocol.EXTRACT_SECONDS: data.extraction_seconds,
                        protocol.SKIPPED_IMAGES: len(data.skipped)})
    return figures


def make_client_app(config: RunConfig | None = None) -> ClientApp:
    """A ClientApp using ``config``, or parsing Flower's run config when it is None."""
    # SecAgg+ outermost: it runs its own stages and calls the handlers for the masked round.
    app = ClientApp(mods=[secure_aggregation_mod, legacy_messages_mod])

    def handle(msg: Message, context: Context, work: Callable[[_Opened], RecordDict]) -> Message:
        name = str(context.node_config.get(NODE_NAME) or f"node-{context.node_id}")
        request = None
        try:
            request = _request(config, msg, context)
            name = request.site.name
            return Message(work(_open(request, msg)), reply_to=msg)
        except Exception as exc:  # every failure becomes a refusal that leaks nothing
            return _refusal(msg, exc, name, request)

    @app.train()
    def train_handler(msg: Message, context: Context) -> Message:
        if _config(msg).get(protocol.SECURE_SUMS) is True:  # the release, inside SecAgg+
            # Its parameters are the public statistics, not a head.
            sums = Message(RecordDict({
                protocol.PUBLIC: msg.content.array_records[protocol.ARRAYS],
                protocol.CONFIG: msg.content.config_records[protocol.CONFIG]}),
                metadata=msg.metadata)
            reply = handle(sums, context, lambda at: _class_sums(at, sums, secure=True))
            return Message(reply.content, reply_to=msg) if not reply.has_error() \
                else Message(reply.error, reply_to=msg)
        return handle(msg, context, lambda at: _train(at, msg))

    @app.train(protocol.PERSONALIZE)
    def personalize_handler(msg: Message, context: Context) -> Message:
        return handle(msg, context, lambda at: _personalize(at, msg))

    @app.train(protocol.CLASS_SUMS)
    def class_sums_handler(msg: Message, context: Context) -> Message:
        return handle(msg, context, lambda at: _class_sums(at, msg))

    @app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        return handle(msg, context, _evaluate)

    return app


def _train(at: _Opened, msg: Message) -> RecordDict:
    mu = _proximal_mu(msg)
    key = resend.request_key(_head(at), mu)
    update = resend.recall(at.site.state, at.run_key, key)
    if update is not None:
        log.info("site %s: the server asked again for an update it was already sent (a "
                 "lost reply); the same update goes again, charging nothing",
                 at.site.name)
    else:
        result = train_round(at.cfg, at.data, _head(at), at.account, _rng(at.cfg),
                             proximal_mu=mu)
        update = resend.KeptUpdate(result.weights, train_figures(at.cfg, result, at.data))
        resend.keep(at.site.state, at.run_key, key, update)
    return RecordDict({
        protocol.ARRAYS: ArrayRecord(update.weights),
        protocol.METRICS: MetricRecord(update.figures),
        protocol.SITE: at.site_record(),
    })


def _config(msg: Message) -> ConfigRecord:
    if not msg.has_content() or protocol.CONFIG not in msg.content.config_records:
        return ConfigRecord()
    return msg.content.config_records[protocol.CONFIG]


def _class_sums(at: _Opened, msg: Message, secure: bool = False) -> RecordDict:
    """The one-shot release: noised per-class feature sums in the server's public basis
    (checked first: any basis gives sensitivity 1, the bound is applied after projecting).

    ``secure``: the request came inside a SecAgg+ round; the reply is then the sums over
    the released count, weighted by that count in SecAgg+'s weighted mean, so that the
    server learns only their total.
    """
    config = _config(msg)
    record = msg.content.array_records.get(protocol.PUBLIC)
    recipe = config.get(protocol.PUBLIC_RECIPE, "")
    if record is None or not isinstance(recipe, str):
        raise FedtlError("the server's class-sums request carries no public statistics")
    try:
        basis = PublicBasis.from_arrays(record.to_numpy_ndarrays(), at.data.test_x.shape[1],
                                        recipe[:200])
    except ValueError as exc:
        raise FedtlError(f"site {at.site.name}: the server's public statistics are "
                         f"refused: {exc}") from exc
    cfg = at.cfg
    over = config.get(protocol.MASKED_OVER, 0)  # set by this site's own mod
    if cfg.sums_noise == "distributed" and not (
            secure and isinstance(over, int) and over >= at.site.policy.distributed_noise_sites):
        log.warning("site %s: the release carries all its noise here: the request %s",
                    at.site.name, "is not masked by secure aggregation" if not over else
                    f"is masked over {over} sites, fewer than this site's "
                    f"distributed-noise-sites {at.site.policy.distributed_noise_sites}")
        cfg = cfg.replace(sums_noise="local")
    # The masked and the plain release differ (sums over count, or sums): kept apart.
    key = resend.request_key(basis.arrays(), 1.0 if secure else 0.0)
    update = resend.recall(at.site.state, at.run_key, key)
    if update is None:
        result = release_sums(cfg, at.data, basis, at.account, _rng(cfg))
        arrays = result.arrays
        if secure:
            arrays = [a / np.float32(max(result.num_examples, 1)) for a in arrays]
        update = resend.KeptUpdate(arrays, {
            protocol.NUM_EXAMPLES: result.num_examples, protocol.EPSILON: result.epsilon,
            protocol.SAMPLING_RATE: 1.0, protocol.NOISE_MULTIPLIER: result.noise_multiplier,
            protocol.STEPS: 1})
        if result.own is not None:  # before anything leaves: the personal head needs it
            own = OwnRelease(result.own, float(result.num_examples), basis,
                             result.noise_multiplier if cfg.dp else 0.0)
            save_own_release(personal_dir(at.site.state, at.run_key), own)
        resend.keep(at.site.state, at.run_key, key, update)
        # Log-only, after the spent release is kept: nothing in it can cost the reply.
        if result.own is not None and cfg.dp and not cfg.personal_joint:  # joint: exact stats
            note_own_release(at.site.name, own, result.noise_multiplier,
                             own_penalty(cfg.ridge_penalty, cfg.ridge_lambda, own,
                                         result.noise_multiplier),
                             None if cfg.personal_weighting == "estimated"
                             else cfg.personal_ridge_weight)
    site = at.site_record()
    site[protocol.PUBLIC_FINGERPRINT] = basis.fingerprint
    return RecordDict({protocol.ARRAYS: ArrayRecord(update.weights),
                       protocol.METRICS: MetricRecord(update.figures), protocol.SITE: site})


def _personalize(at: _Opened, msg: Message) -> RecordDict:
    """Build this site's own head from the global one (DP fine-tuning on the same budget,
    or, with --personal-tuning ridge, the site's own one-shot release: no budget; joint:
    its own images without noise, if its policy allowed it); report both accuracies (not a
    joint head's under noised figures). The head stays here, with a Keras model of it."""
    cfg, data, account = at.cfg, at.data, at.account
    folder = personal_dir(at.site.state, at.run_key)
    shapes = head_shapes(data.test_x.shape[1], len(cfg.classes), cfg.head_width)
    weights = load_head(folder, shapes)  # a repeated request spends nothing again
    if weights is None:
        # Centred once here (as it is without --feature-centring site) for the joint fit,
        # the saved model (which takes raw images: the mean is folded in) and the figures.
        data = centred(cfg, data, account)
        weights, about_own = (_ridge_personal(at, msg, folder, data)
                              if cfg.personal_from_release else (_head(at), {}))
        if cfg.personal_joint:  # the site's own images, exact: this head never leaves it
            weights = logistic_toward(weights, data.train_x, data.train_y,
                                      cfg.personal_strength)
        if cfg.personal_sgd:
            weights = train_round(cfg, data, weights, account, _rng(cfg), personal=True).weights
        base = LazyBase.shared(base_spec(cfg).for_saving,
                               at.site.state / "public-stats").get()
        folder.mkdir(parents=True, exist_ok=True)
        head = weights if data.centre is None else folded_head(weights, data.centre)
        save_model(full_model(base, head, len(cfg.classes), cfg.head_width),
                   folder / MODEL_FILE)
        if cfg.personal_joint:
            save_joint_note(folder)
        # For the site's operator, exact and never sent (what leaves is decided below).
        write_json_atomically(folder / ACCURACY_FILE, {
            "held_out_images": len(data.test_y),
            "personal_head": evaluate(cfg, data, weights),
            "global_head": evaluate(cfg, data, _head(at)), **about_own})
        save_head(folder, weights)  # last: its presence means "done, both saved"

    def figures() -> Figures:
        # A joint head's accuracy is not a DP release: with noised figures neither leaves.
        heads = ([] if cfg.personal_joint and figure_mode(cfg) == "noised"
                 else [weights, _head(at)])
        accuracies, weight = released_accuracies(cfg, data, heads, account, _rng(cfg))
        spent = account.ledger.get(at.run_key)
        made = {protocol.NUM_EXAMPLES: weight,
                protocol.EPSILON: spent.epsilon if spent and cfg.dp else 0.0,
                protocol.STEPS: spent.steps if spent else 0}
        if accuracies:
            made[protocol.ACCURACY], made[protocol.GLOBAL_ACCURACY] = accuracies
        return made

    return RecordDict({protocol.METRICS: MetricRecord(_released_once(at, "personalize", figures)),
                       protocol.SITE: at.site_record()})


def _ridge_personal(at: _Opened, msg: Message, folder: Path,
                    data: SiteData) -> tuple[list[np.ndarray], dict[str, float]]:
    """The global head moved by this site's own kept release (`ridge_personal_head`; with
    joint tuning, by its exact statistics of ``data``, centred as the run is), and what the
    site's operator is told about that release; the server's totals are checked like any
    input from it."""
    cfg = at.cfg
    own = load_own_release(folder, at.data.test_x.shape[1])
    if own is None:
        raise FedtlError(f"site {at.site.name} kept no one-shot release of run {at.run_key} "
                         "(it did not release in round 1): no personal head to build from it")
    record = msg.content.array_records.get(protocol.ONE_SHOT_TOTALS)
    if record is None:
        raise FedtlError("the server's personalization request carries no one-shot totals; "
                         "--personal-tuning ridge needs them")
    shapes = release_shapes(own.basis.components.shape[1], len(cfg.classes),
                            cfg.private_moment)
    try:
        totals, count = protocol.check_one_shot_totals(
            record.to_numpy_ndarrays(), _config(msg).get(protocol.ONE_SHOT_COUNT), shapes,
            own.count)
        penalty = _personal_penalty(cfg, msg)
        if cfg.personal_joint:  # the site's own statistics in place of their noised copy
            own = exact_release(data.averaged_train_x, data.train_y, len(cfg.classes),
                                own.basis, cfg.private_moment)
            return ridge_personal_head(_head(at), totals, count, own, penalty,
                                       cfg.personal_ridge_weight), {}
        weight, about = _own_weight(at, totals, count, own)
        return ridge_personal_head(_head(at), totals, count, own, penalty, weight), about
    except UpdateRejectedError as exc:
        raise FedtlError(f"site {at.site.name}: {exc}") from exc


def _personal_penalty(cfg: RunConfig, msg: Message) -> float:
    """The penalty a site solves its personal head with: the run's ``--ridge-lambda``, or
    with ``--ridge-penalty noise`` the one the server solved the global head with (set from
    the summed release's noise, which the site cannot see alone), checked like any input
    from the server."""
    if cfg.ridge_penalty == "fixed":
        return float(cfg.ridge_lambda)
    value = _config(msg).get(protocol.ONE_SHOT_PENALTY)
    if value is None:
        raise UpdateRejectedError("the server's personalization request carries no one-shot "
                                  "penalty; --ridge-penalty noise needs the one it solved with")
    return protocol.check_one_shot_penalty(value, LOWEST, HIGHEST)


def _own_weight(at: _Opened, totals: list[np.ndarray], count: float,
                own: OwnRelease) -> tuple[float, dict[str, float]]:
    """How many times the site's own release counts in its personal head, and what its
    operator is told about that release (the log line at release time may never be seen)."""
    cfg = at.cfg
    about: dict[str, float] = {}
    if cfg.dp and own.noise_multiplier is not None:
        about["own_release_noise_share"] = round(
            own_release_share(own, own.noise_multiplier,
                              own_penalty(cfg.ridge_penalty, cfg.ridge_lambda, own,
                                          own.noise_multiplier)), 4)
    weight = cfg.personal_ridge_weight
    if cfg.personal_weighting == "estimated":
        if own.noise_multiplier is None:  # kept by an earlier fedtl, without its noise
            log.warning("site %s: its kept release does not say its noise; its personal head "
                        "counts it --personal-ridge-weight %g times", at.site.name, weight)
        elif not cfg.dp:
            # Without noise the estimate rests on the sampling bound alone, whose public
            # second moment can understate the site's own (IID demo sites set up to 7.9).
            log.info("site %s: no noise to weigh its release against (--no-dp); its personal "
                     "head counts it --personal-ridge-weight %g times", at.site.name, weight)
        else:
            weight, excess = estimated_weight(totals, count, own,
                                              cfg.personal_ridge_weight_cap)
            about["own_release_excess"] = round(excess, 4)
            log.info("site %s: its own release lies %.2f times its noise and sampling beyond "
                     "its share of the run's; its personal head counts it %.2f times",
                     at.site.name, excess, weight)
    about["own_release_weight"] = round(weight, 4)
    return weight, about


def _evaluate(at: _Opened) -> RecordDict:
    def figures() -> Figures:
        accuracies, weight = released_accuracies(at.cfg, at.data, [_head(at)], at.account,
                                                 _rng(at.cfg))
        if not accuracies:
            raise _Withheld(f"site {at.data.name} releases no held-out figures "
                            "(site-metrics none)")
        return {protocol.NUM_EXAMPLES: weight, protocol.ACCURACY: accuracies[0]}

    return RecordDict({protocol.METRICS: MetricRecord(_released_once(at, "evaluate", figures)),
                       protocol.SITE: at.site_record()})


def _released_once(at: _Opened, kind: str, figures: Callable[[], Figures]) -> Figures:
    """The figures of this ``kind`` about the server's head: those already sent if the
    server asks again about the same head (the same noised answer is free; a fresh draw would
    be a second release), else ``figures()``, kept before they leave."""
    key = resend.request_key(_head(at), 0.0)
    kept = resend.recall(at.site.state, at.run_key, key, kind=kind)
    if kept is not None:
        log.info("site %s: the server asked again for the %s figures of a head it was already "
                 "sent; the same figures go again, charging nothing", at.site.name, kind)
        return kept.figures
    made = figures()
    resend.keep(at.site.state, at.run_key, key, resend.KeptUpdate([], made), kind=kind)
    return made


class _Withheld(Exception):
    """The site releases no held-out figures: not a failure, a policy the server should see."""


def _head(at: _Opened) -> list[np.ndarray]:
    if at.weights is None:
        raise FedtlError("the server's message carries no head weights")
    return at.weights


def _proximal_mu(msg: Message) -> float:
    # Flower's FedProx strategy sends its mu under this key; FedAvg and FedAdam send none.
    mu = msg.content.config_records[protocol.CONFIG].get(protocol.PROXIMAL_MU, 0.0)
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0.0 <= mu < 1e6:
        raise FedtlError(f"the server sent proximal-mu {str(mu)[:40]!r}; it must be a number "
                         ">= 0")
    return float(mu)


def _run_key(msg: Message, context: Context) -> str:
    # The server's run id survives a server restart (Flower's run id does not), so a resumed
    # run continues its ledger entry instead of starting a second one. It names ledger
    # entries and folders here: anything but a plain name is refused before it is used.
    run_id = msg.content.config_records[protocol.CONFIG].get(protocol.RUN_ID)
    if run_id is None or run_id == "":
        return str(context.run_id)
    if not isinstance(run_id, str) or not valid_run_id(run_id):
        raise FedtlError(f"the server sent a malformed run id {str(run_id)[:40]!r}; a run id "
                         "is 1-128 letters, digits, '.', '_' or '-'")
    return run_id


def _rng(cfg: RunConfig) -> np.random.Generator:
    # Secret randomness for DP sampling: a seeded, guessable draw would void amplification.
    return np.random.default_rng() if cfg.dp else np.random.default_rng(cfg.seed)


app = make_client_app()
