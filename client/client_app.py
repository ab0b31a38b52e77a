"""fedtl's Flower ClientApp: unpack the Message, call the site's code, pack the reply."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.secure_aggregation import legacy_messages_mod, secure_aggregation_mod
from common import protocol
from common.config import NODE_NAME, RunConfig, SiteConfig
from common.data import check_same_classes, list_dataset
from common.errors import BudgetExhaustedError, DataError, FedtlError
from common.features import LazyBase
from common.ledger import PrivacyLedger
from common.model import full_model, head_shapes, save_model
from common.personal import MODEL_FILE, load_head, personal_dir, save_head
from common.scenario import Scenario, build_scenario
from common.site import (RoundResult, SiteData, base_spec, load_site, released_accuracies,
                         train_round)

log = logging.getLogger("fedtl.site")


def _federation_config(cfg: RunConfig, msg: Message, context: Context) -> RunConfig:
    """The run config with the server's class list (and Flower's site count in simulation)."""
    sent = msg.content.config_records[protocol.CONFIG].get(protocol.CLASSES)
    if not isinstance(sent, list) or not sent:
        raise FedtlError(f"the server sent no class list (got {sent!r})")
    cfg = cfg.replace(classes=tuple(str(c) for c in sent))
    partitions = context.node_config.get("num-partitions")
    return cfg if partitions is None else cfg.replace(clients=int(partitions))


def _site_config(cfg: RunConfig, context: Context) -> SiteConfig:
    node = context.node_config
    if "partition-id" in node:  # a virtual site of a simulation
        return SiteConfig.simulated(cfg, int(node["partition-id"]))
    return SiteConfig.from_node_config(node, context.node_id)


def _open_site(cfg: RunConfig, site: SiteConfig, msg: Message,
               run_key: str) -> tuple[SiteData, str]:
    """The site's held-out and training features.

    The base fingerprint is checked against the server's before any image is read.
    """
    base = LazyBase.shared(base_spec(cfg))
    _check_federation(msg, cfg, base.fingerprint, site.name)
    return _site_data(cfg, site, run_key), base.fingerprint


# A site reads its folder once per run and process: simulated sites share long-lived worker
# processes, where listing and hashing a folder for every message would dominate a round.
@functools.lru_cache(maxsize=256)
def _site_data(cfg: RunConfig, site: SiteConfig, run_key: str) -> SiteData:
    base = LazyBase.shared(base_spec(cfg))
    if site.partition is None:
        listing = list_dataset(site.data)
        check_same_classes(cfg.classes, listing.classes, f"site {site.name} ({site.data})")
        return load_site(cfg, site.name, listing, base, site.cache_dir, holdout_seed=(cfg.seed,))
    virtual = _scenario(cfg, run_key).sites[site.partition]
    return load_site(cfg, virtual.name, virtual.listing, base, site.cache_dir,
                     holdout_seed=virtual.holdout_seed, shift=virtual.shift)


@functools.lru_cache(maxsize=2)
def _scenario(cfg: RunConfig, run_key: str) -> Scenario:
    """Every simulated site's share and shift: built once per worker, not once per site."""
    return build_scenario(cfg)


def _refuse(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def _check_federation(msg: Message, cfg: RunConfig, fingerprint: str, site: str) -> None:
    server = msg.content.config_records[protocol.CONFIG]
    if server.get(protocol.FINGERPRINT) != fingerprint:
        raise FedtlError(
            f"site {site}: its VGG16 base fingerprint {fingerprint[:12]} differs from the "
            f"federation's {str(server.get(protocol.FINGERPRINT))[:12]}; use the same "
            "--weights, --image-size and --base-layer as the server")


def _site_record(data: SiteData, fingerprint: str) -> ConfigRecord:
    return ConfigRecord({protocol.SITE_NAME: data.name, protocol.FINGERPRINT: fingerprint})


def _refusal(msg: Message, exc: FedtlError, site: str) -> Message:
    """An error reply that says why without leaking the site's data: a data error names
    files, folders or class names, so those details stay in the site's own log."""
    if isinstance(exc, BudgetExhaustedError):
        return _refuse(msg, protocol.BUDGET_EXHAUSTED, str(exc))
    if isinstance(exc, DataError):
        log.error("site %s: %s", site, exc)
        return _refuse(msg, protocol.INCOMPATIBLE,
                       f"site {site}: its data cannot be used for this federation (the "
                       "site's log says why)")
    return _refuse(msg, protocol.INCOMPATIBLE, str(exc))


@dataclass(frozen=True)
class _Opened:
    """What every handler starts from: settings, the site, its data and the server's head."""

    cfg: RunConfig
    site: SiteConfig
    run_key: str
    data: SiteData
    fingerprint: str
    weights: list[np.ndarray] | None


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
    if cfg.site_metrics == "exact" or not cfg.dp:
        figures.update({protocol.TRAIN_LOSS: result.train_loss,
                        protocol.EXTRACT_SECONDS: data.extraction_seconds,
                        protocol.SKIPPED_IMAGES: len(data.skipped)})
    return figures


def make_client_app(config: RunConfig | None = None) -> ClientApp:
    """A ClientApp using ``config``, or parsing Flower's run config when it is None."""
    # SecAgg+ outermost: it runs its own stages and calls the handlers for the masked round.
    app = ClientApp(mods=[secure_aggregation_mod, legacy_messages_mod])

    def open_site(msg: Message, context: Context) -> _Opened:
        cfg = config if config is not None else RunConfig.from_flower(context.run_config)
        cfg = _federation_config(cfg, msg, context)
        site = _site_config(cfg, context)
        cfg = site.policy(cfg)
        run_key = _run_key(msg, context)
        data, fingerprint = _open_site(cfg, site, msg, run_key)
        arrays = msg.content.array_records.get(protocol.ARRAYS)
        return _Opened(cfg, site, run_key, data, fingerprint,
                       arrays.to_numpy_ndarrays() if arrays is not None else None)

    def site_name(context: Context) -> str:
        return str(context.node_config.get(NODE_NAME) or f"node-{context.node_id}")

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            at = open_site(msg, context)
            result = train_round(at.cfg, at.data, at.weights, PrivacyLedger(at.site.state),
                                 at.run_key, _rng(at.cfg), at.site.budget,
                                 proximal_mu=_proximal_mu(msg))
        except FedtlError as exc:
            return _refusal(msg, exc, site_name(context))
        content = RecordDict({
            protocol.ARRAYS: ArrayRecord(result.weights),
            protocol.METRICS: MetricRecord(train_figures(at.cfg, result, at.data)),
            protocol.SITE: _site_record(at.data, at.fingerprint),
        })
        return Message(content, reply_to=msg)

    @app.train(protocol.PERSONALIZE)
    def personalize(msg: Message, context: Context) -> Message:
        """Fine-tune this site's own head from the global one (DP, same budget); report both
        accuracies. The personal head stays here, with a Keras model of it."""
        try:
            at = open_site(msg, context)
            cfg, data = at.cfg, at.data
            ledger = PrivacyLedger(at.site.state)
            folder = personal_dir(at.site.state, at.run_key)
            shapes = head_shapes(data.test_x.shape[1], len(cfg.classes), cfg.head_width)
            weights = load_head(folder, shapes)  # a repeated request spends nothing again
            if weights is None:
                weights = train_round(cfg, data, at.weights, ledger, at.run_key, _rng(cfg),
                                      at.site.budget, personal=True).weights
                base = LazyBase.shared(base_spec(cfg)).get()
                folder.mkdir(parents=True, exist_ok=True)
                save_model(full_model(base, weights, len(cfg.classes), cfg.head_width),
                           folder / MODEL_FILE)
                save_head(folder, weights)  # last: its presence means "done, both saved"
            accuracies, weight = released_accuracies(cfg, data, [weights, at.weights], ledger,
                                                     at.run_key, _rng(cfg), at.site.budget)
        except FedtlError as exc:
            return _refusal(msg, exc, site_name(context))
        spent = ledger.get(at.run_key)
        figures = {protocol.NUM_EXAMPLES: weight,
                   protocol.EPSILON: spent.epsilon if spent else 0.0,
                   protocol.STEPS: spent.steps if spent else 0}
        if accuracies:
            figures[protocol.ACCURACY], figures[protocol.GLOBAL_ACCURACY] = accuracies
        content = RecordDict({protocol.METRICS: MetricRecord(figures),
                              protocol.SITE: _site_record(data, at.fingerprint)})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate_global(msg: Message, context: Context) -> Message:
        try:
            at = open_site(msg, context)
            accuracies, weight = released_accuracies(
                at.cfg, at.data, [at.weights], PrivacyLedger(at.site.state), at.run_key,
                _rng(at.cfg), at.site.budget)
        except FedtlError as exc:
            return _refusal(msg, exc, site_name(context))
        if not accuracies:
            return _refuse(msg, protocol.WITHHELD,
                           f"site {at.data.name} releases no held-out figures (site-metrics none)")
        metrics = MetricRecord({protocol.NUM_EXAMPLES: weight,
                                protocol.ACCURACY: accuracies[0]})
        content = RecordDict({protocol.METRICS: metrics,
                              protocol.SITE: _site_record(at.data, at.fingerprint)})
        return Message(content, reply_to=msg)

    return app


def _proximal_mu(msg: Message) -> float:
    # Flower's FedProx strategy sends its mu under this key; FedAvg and FedAdam send none.
    mu = msg.content.config_records[protocol.CONFIG].get(protocol.PROXIMAL_MU, 0.0)
    if not isinstance(mu, (int, float)) or not 0.0 <= mu < 1e6:
        raise FedtlError(f"the server sent proximal-mu {mu!r}; it must be a number >= 0")
    return float(mu)


def _run_key(msg: Message, context: Context) -> str:
    # The server's run id survives a server restart (Flower's run id does not), so a resumed
    # run continues its ledger entry instead of starting a second one.
    run_id = msg.content.config_records[protocol.CONFIG].get(protocol.RUN_ID)
    return str(run_id) if run_id else str(context.run_id)


def _rng(cfg: RunConfig) -> np.random.Generator:
    # Secret randomness for DP sampling: a seeded, guessable draw would void amplification.
    return np.random.default_rng() if cfg.dp else np.random.default_rng(cfg.seed)


app = make_client_app()
