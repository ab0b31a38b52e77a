"""What one site does, free of Flower: load its features, train the head with DP, evaluate."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.privacy.accounting import Mechanism, composed_epsilon, noise_for_budget
from common.config import RunConfig
from common.data.images import Listing
from common.data.scenario import SimulatedSite
from common.data.shift import Shift
from common.errors import BudgetExhaustedError, ConfigError, PolicyRefusedError
from common.features.extraction import LazyBase, Progress, site_features
from common.privacy.ledger import (LedgerBook, LedgerEvent, PrivacyLedger, RunEntry, RunHeader,
                           SiteBudget)
from common.personal import run_dir
from common.privacy.policy import SitePolicy
from common.privacy.sgd import SgdSettings
from common.features.model import BaseSpec, compute_dtype, predict_classes
from common.data.partition import holdout_split
from common.privacy.oneshot import (PublicBasis, class_sums, embed, noised, noised_moment,
                                    second_moment)
from common.privacy.centring import load_mean, noised_mean, save_mean
from common.privacy.release import (centring_mechanism, count_mechanism, figure_mode,
                                    held_out_weight, metric_mechanism, noisy_accuracy,
                                    public_count, releases, sums_noise)

log = logging.getLogger("fedtl.site")


@dataclass(frozen=True)
class SiteData:
    """A site's features split into training and held-out parts."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    skipped: tuple[str, ...]
    extraction_seconds: float
    cache_hit: bool
    train_views: np.ndarray | None = None  # K augmented views of train_x (K x n x d)
    # The mean the features were centred on (--feature-centring site); None: as extracted.
    centre: np.ndarray | None = None

    @property
    def averaged_train_x(self) -> np.ndarray:
        """The training features averaged over each image's augmented views (free in
        privacy): what the one-shot release sums."""
        if self.train_views is None:
            return self.train_x
        return np.mean([self.train_x, *self.train_views], axis=0)

    @property
    def extracted_train_x(self) -> np.ndarray:
        """The training features as extracted, before any centring."""
        return self.train_x if self.centre is None else self.train_x + self.centre


@dataclass(frozen=True)
class RoundResult:
    """What a site's training round produced; only ``weights`` and the figures leave it."""

    weights: list[np.ndarray]
    train_loss: float
    num_examples: int
    epsilon: float
    steps: int
    settings: SgdSettings


def base_spec(cfg: RunConfig) -> BaseSpec:
    return BaseSpec(weights=cfg.weights, image_size=cfg.image_size, base_layer=cfg.base_layer,
                    compute_dtype=compute_dtype(cfg.base_dtype))


def load_site(cfg: RunConfig, name: str, listing: Listing, base: LazyBase,
              cache_dir: Path | None, holdout_seed: tuple[int, ...],
              progress: Progress | None = None, shift: Shift | None = None) -> SiteData:
    """Features of the site's images (cached), split into train and held-out parts.

    Held-out images are evaluated as they are; augmented views exist for training only.
    ``shift`` is a simulated site's acquisition change (both parts are seen through it).
    """
    feats = site_features(base, listing, cache_dir, skip_bad=cfg.skip_bad_images,
                          augment_views=cfg.augment_views, shift=shift, progress=progress,
                          dicom_window=cfg.window)
    try:
        train, test = holdout_split(len(feats.labels), cfg.holdout, holdout_seed)
    except ConfigError as exc:  # e.g. a folder of one readable image
        raise ConfigError(f"site {name}: {exc}") from exc
    return SiteData(
        name=name, train_x=feats.features[train], train_y=feats.labels[train],
        test_x=feats.features[test], test_y=feats.labels[test], skipped=feats.skipped,
        extraction_seconds=feats.seconds, cache_hit=feats.cache_hit,
        train_views=feats.views[:, train] if cfg.augment_views else None,
    )


def load_simulated_site(cfg: RunConfig, site: SimulatedSite, base: LazyBase,
                        progress: Progress | None = None) -> SiteData:
    """`load_site` for a simulated site, cached under its name in the scenario (a site folder
    keeps its cache whatever its index: a leave-one-domain-out run reuses the features the
    four-site run cached for the same folders)."""
    return load_site(cfg, site.name, site.listing, base, cfg.site_cache_dir(site.name),
                     holdout_seed=site.holdout_seed, progress=progress, shift=site.shift)


def planned_steps(cfg: RunConfig, sampling_rate: float) -> int:
    """DP-SGD steps a site takes in the whole run: every round, then personalization."""
    per_epoch = math.ceil(1.0 / sampling_rate)
    personal = cfg.personal_epochs * per_epoch if cfg.personal_sgd else 0
    return cfg.local_epochs * per_epoch * cfg.sgd_rounds + personal


def release_plan(cfg: RunConfig) -> list[Mechanism]:
    """What the run releases under DP besides the DP-SGD head updates: the count, the
    planned figures and a one-shot head's class sums.

    The training noise is calibrated with these composed in, so the whole run spends the
    target, not the target plus the releases.
    """
    return list(releases(cfg).mechanisms)


def sgd_settings(cfg: RunConfig, num_train: int, noise_multiplier: float | None = None,
                 personal: bool = False) -> SgdSettings:
    """DP-SGD settings of one round (or, ``personal``, of the final personal fine-tuning).

    ``num_train`` is the count the site released (everything here is computed from it, so
    it reveals nothing more). The noise multiplier is ``noise_multiplier`` (a value already
    in the ledger), else ``cfg.noise_multiplier``, else calibrated so that all the run's
    planned steps (every round and personalization) and releases spend exactly the run's
    target epsilon.
    """
    rate = min(1.0, cfg.batch_size / num_train)
    epochs = cfg.personal_epochs if personal else cfg.local_epochs
    steps = epochs * math.ceil(1.0 / rate)
    learning_rate = cfg.personal_learning_rate if personal else cfg.rounds_learning_rate
    bias_only = personal and cfg.personal_method in ("bias", "ridge+bias")
    if not cfg.dp:
        return SgdSettings(sampling_rate=rate, steps=steps, learning_rate=learning_rate,
                           momentum=cfg.momentum, private=False, bias_only=bias_only)
    if cfg.delta >= 1.0 / num_train:
        raise ConfigError(f"delta {cfg.delta} is not below 1/n = 1/{num_train} for a site with "
                          f"{num_train} training examples; lower --delta")
    sigma = noise_multiplier or cfg.noise_multiplier or _run_noise(cfg, rate)
    # The gradient sum is divided by the expected batch of the *released* count: dividing by
    # the true size would make the update depend on a private number outside the mechanism.
    return SgdSettings(sampling_rate=rate, steps=steps, learning_rate=learning_rate,
                       momentum=cfg.momentum, private=True, clip_norm=cfg.clip_norm,
                       noise_multiplier=sigma, expected_batch=rate * num_train,
                       bias_only=bias_only)


def _run_noise(cfg: RunConfig, rate: float) -> float:
    """The DP-SGD noise that spends what the run's releases leave of its target."""
    prior = release_plan(cfg)
    try:
        return noise_for_budget(target_epsilon=cfg.target_epsilon, delta=cfg.delta,
                                sampling_rate=rate, steps=planned_steps(cfg, rate),
                                accountant=cfg.accountant, prior=prior)
    except ConfigError as exc:
        if not cfg.one_shot:
            raise
        # The one-shot release is the big spender here, and --ridge-share the lever: a
        # message naming rounds and batch sizes would send the operator the wrong way.
        spent = composed_epsilon(prior, delta=cfg.delta, accountant=cfg.accountant)
        raise ConfigError(
            f"target epsilon {cfg.target_epsilon:g} leaves nothing for the DP-SGD steps: the "
            f"one-shot release alone spends --ridge-share {cfg.ridge_share:g} of it, and with "
            f"the count and figure releases this run's releases compose to {spent:.3f} "
            f"({cfg.accountant}); lower --ridge-share or raise --target-epsilon"
            + (" (or --head-method ridge: the release alone spends the whole target)"
               if cfg.sgd_rounds else "")) from exc


@dataclass(frozen=True)
class SiteAccount:
    """What a site's rounds are charged against: its ledger under the run's key, its own
    budget over all runs, and the floor and ceiling its policy puts on DP-SGD."""

    ledger: PrivacyLedger
    run_key: str
    budget: SiteBudget
    policy: SitePolicy = dataclasses.field(default_factory=SitePolicy.unrestricted)

    @classmethod
    def for_run(cls, cfg: RunConfig, state: Path, run_key: str) -> SiteAccount:
        """A site whose budget is the run's own target and whose policy is the run's."""
        return cls(PrivacyLedger(state), run_key,
                   SiteBudget(cfg.target_epsilon, cfg.delta, cfg.accountant))


def check_not_spent(cfg: RunConfig, account: SiteAccount) -> None:
    """Decline a private run the site has not started once its budget over all runs is spent.

    Any further release would pass the budget (`plan_noise` would decline it at the first
    charge), so a spent site answers before it lists, hashes or extracts a single image.
    """
    if not cfg.dp or account.ledger.get(account.run_key) is not None:
        return
    budget = account.budget
    spent = account.ledger.spent(budget)
    if spent >= budget.epsilon:
        raise BudgetExhaustedError(
            f"this site's budget of epsilon {budget.epsilon} (delta {budget.delta}) is spent: "
            f"its runs so far compose to {spent:.3f}; it declines this run before reading its "
            "images (`fedtl client --budget` raises the budget)")


def plan_noise(cfg: RunConfig, num_train: int, account: SiteAccount, prior: list[Mechanism],
               personal: bool = False) -> SgdSettings:
    """Settings for a run the site has not trained in yet.

    The noise is the run's (from its target epsilon), raised if needed so that this run's
    planned rounds and releases, composed with the site's earlier runs, stay within the
    site's own budget, and never below the policy's floor.
    """
    settings = sgd_settings(cfg, num_train, personal=personal)
    budget = account.budget
    planned = planned_steps(cfg, settings.sampling_rate)
    before = [*prior, *release_plan(cfg)]  # a PLD plan calibrates: build it once
    try:
        site_sigma = noise_for_budget(
            target_epsilon=budget.epsilon, delta=budget.delta,
            sampling_rate=settings.sampling_rate, steps=planned, accountant=budget.accountant,
            prior=before)
    except ConfigError as exc:
        raise BudgetExhaustedError(
            f"this site's budget of epsilon {budget.epsilon} (delta {budget.delta}) leaves "
            f"no room for this run: {exc}{_accountant_hint(cfg.accountant, before, budget)}"
        ) from exc
    sigma = _at_least_floor(max(settings.noise_multiplier, site_sigma), account.policy,
                            "DP-SGD")
    return dataclasses.replace(settings, noise_multiplier=sigma)


def charge(cfg: RunConfig, name: str, num_train: int, account: SiteAccount,
           rng: np.random.Generator, personal: bool = False,
           features: np.ndarray | None = None) -> tuple[SgdSettings, RunEntry]:
    """Settings for the next round (or the personal fine-tuning), charged to the ledger.

    Under the ledger's lock: the first round of a run releases the site's count
    (``cfg.example_counts``) and fixes the run's header (target, delta, count, noise); every
    round appends the mechanism it is about to run, with the sampling rate and noise it
    really uses. Raises `BudgetExhaustedError` (and records nothing) if that would take the
    run past its target or the site past its budget over all runs; `PolicyRefusedError` if
    the sampling rate exceeds the site's policy. With ``--feature-centring site`` the first
    round also charges and keeps the site's mean of ``features`` (`join_centring`).
    """
    kind = "personal" if personal else "dp-sgd"
    with account.ledger.transaction() as book:
        _keep_budget(book, account.budget)
        entry = book.runs.get(account.run_key)
        if not cfg.dp:  # admitted only by a policy with allow-no-dp: recorded as spent in full
            settings = sgd_settings(cfg, num_train, personal=personal)
            header = entry.header if entry else RunHeader(
                cfg.target_epsilon, cfg.delta, cfg.accountant, num_train, 0.0)
            event = LedgerEvent("non-private", settings.sampling_rate, 0.0, settings.steps)
            if entry is None:
                join_centring(cfg, account, features, num_train, [], rng)
            return settings, book.append(account.run_key, [event], header)
        prior = book.prior(account.run_key)
        new: list[LedgerEvent] = []
        if entry is None:
            count, new = _released_count(cfg, num_train, rng)
            new += centring_events(cfg, account.policy)
            settings = plan_noise(cfg, count, account, prior, personal=personal)
            if settings.noise_swamps:
                log.warning("site %s: %s", name, settings.noise_swamps)
            header = RunHeader(cfg.target_epsilon, cfg.delta, cfg.accountant, count,
                               settings.noise_multiplier)
        else:
            header = entry.header
            count = header.public_count or num_train  # ledgers before counts were released
            settings = sgd_settings(cfg, count, header.noise_multiplier or None,
                                    personal=personal)
        if settings.sampling_rate > account.policy.max_sampling_rate:
            raise PolicyRefusedError(
                f"the run's sampling rate {settings.sampling_rate:.3g} (batch-size over the "
                f"site's count) exceeds this site's maximum of "
                f"{account.policy.max_sampling_rate} (max-sampling-rate)")
        new.append(LedgerEvent(kind, settings.sampling_rate, settings.noise_multiplier,
                               settings.steps))
        what = "personal fine-tuning" if personal else "another round"
        _check_fits(name, header, [*(entry.mechanisms if entry else []),
                                   *(e.mechanism for e in new)], prior, account.budget, what)
        if entry is None:
            join_centring(cfg, account, features, count, new, rng)
        return settings, book.append(account.run_key, new, header)


def charge_releases(cfg: RunConfig, name: str, account: SiteAccount,
                    releases: int) -> RunEntry:
    """Charge ``releases`` noised figure releases to the run before they go out.

    Raises `BudgetExhaustedError` (and records nothing) if they do not fit.
    """
    with account.ledger.transaction() as book:
        entry = book.runs.get(account.run_key)
        if entry is None:
            raise BudgetExhaustedError(
                f"site {name} has not trained in this run; it releases no figures about its data")
        released = metric_mechanism(cfg.metric_noise, releases)
        assert released is not None
        event = _event("figures", released)
        _check_fits(name, entry.header, [*entry.mechanisms, event.mechanism],
                    book.prior(account.run_key), account.budget,
                    "releasing its held-out accuracy")
        return book.append(account.run_key, [event])


@dataclass(frozen=True)
class SumsResult:
    """A site's one-shot release: its noised class sums and the figures that go with them."""

    sums: np.ndarray  # (components + 1, classes): sums, then counts, noised
    num_examples: int  # the released count
    epsilon: float
    noise_multiplier: float
    moment: np.ndarray | None = None  # upper triangle of Z^T Z, noised (--second-moment private)
    # What the site keeps for --personal-tuning ridge: the same release at its full noise
    # (with distributed noise its share is topped up, so its own head never rests on others').
    own: list[np.ndarray] | None = None

    @property
    def arrays(self) -> list[np.ndarray]:
        return [self.sums] + ([self.moment] if self.moment is not None else [])


def release_sums(cfg: RunConfig, data: SiteData, basis: PublicBasis, account: SiteAccount,
                 rng: np.random.Generator) -> SumsResult:
    """The site's per-class feature sums in the public basis and its per-class counts,
    noised (`common.privacy.oneshot`), charged to the ledger
    *before* they are computed. A run releases them once: a second request is refused.

    Each image's features are averaged over its augmented views first (free in privacy: it
    is still one bounded row per image).
    """
    n = len(data.train_y)
    with account.ledger.transaction() as book:
        _keep_budget(book, account.budget)
        if book.runs.get(account.run_key) is not None:
            raise PolicyRefusedError(
                f"site {data.name} has already released in this run; class sums are released "
                "once per run (a second, differently noised copy would average the noise down)")
        prior = book.prior(account.run_key)
        count, new = _released_count(cfg, n, rng)
        new += centring_events(cfg, account.policy)
        sgd_noise = 0.0
        if cfg.dp and (cfg.sgd_rounds or cfg.personal_sgd):  # fixed now for the later rounds
            sgd_noise = plan_noise(cfg, count, account, prior).noise_multiplier
        header = RunHeader(cfg.target_epsilon, cfg.delta, cfg.accountant, count, sgd_noise)
        sigma = local = 0.0
        if cfg.dp:
            sigma = local = _at_least_floor(sums_noise(cfg), account.policy, "class-sum release")
            event = _event("sums", Mechanism(1.0, sigma, 1))
            if cfg.sums_noise == "distributed":  # only if the site's policy admitted it
                local = sigma / math.sqrt(account.policy.distributed_noise_sites)
                event = dataclasses.replace(event, local_noise_multiplier=local)
            new.append(event)
            _check_fits(data.name, header, [e.mechanism for e in new], prior, account.budget,
                        "releasing its class sums")
        else:
            new = [LedgerEvent("non-private", 1.0, 0.0, 1)]
        join_centring(cfg, account, data.extracted_train_x, count if cfg.dp else n, new, rng)
        entry = book.append(account.run_key, new, header)
    data = centred(cfg, data, account)
    z = embed(data.averaged_train_x, basis)
    sums = class_sums(z, data.train_y, len(cfg.classes))
    moment = second_moment(z) if cfg.private_moment else None
    if cfg.dp:  # one Gaussian query: its sensitivity covers the moment when it is released
        sums = noised(sums, local, rng, moment=cfg.private_moment)
        moment = noised_moment(moment, local, rng) if moment is not None else None
    own = None
    if cfg.personal_from_release:
        top_up = math.sqrt(max(sigma**2 - local**2, 0.0))  # independent: variances add
        own = [noised(sums, top_up, rng, moment=cfg.private_moment).astype(np.float32)] + (
            [noised_moment(moment, top_up, rng).astype(np.float32)] if moment is not None
            else [])
    return SumsResult(sums.astype(np.float32), entry.public_count if cfg.dp else n,
                      entry.epsilon if cfg.dp else 0.0, sigma,
                      moment.astype(np.float32) if moment is not None else None, own)


def centring_dir(state: Path, run_key: str) -> Path:
    """Where a site keeps its feature mean of run ``run_key``."""
    return run_dir(state, run_key, "centring")


def centring_events(cfg: RunConfig, policy: SitePolicy) -> list[LedgerEvent]:
    """The ledger event of the site's feature-sum release when it joins a run (none without
    ``--feature-centring site``), at the run's noise or the policy's floor."""
    mechanism = centring_mechanism(cfg)
    if mechanism is None:
        return []
    sigma = _at_least_floor(mechanism.noise_multiplier, policy, "feature-sum release")
    return [_event("centring", Mechanism(1.0, sigma, 1))]


def join_centring(cfg: RunConfig, account: SiteAccount, features: np.ndarray | None,
                  count: int, events: list[LedgerEvent], rng: np.random.Generator) -> None:
    """When a site joins a run with ``--feature-centring site``: its mean of ``features``
    (noised as ``events`` charge it; exact in a non-private run) over its released
    ``count``, kept before the ledger is written and before anything computed from it
    leaves. Without centring, nothing."""
    if not cfg.site_centred:
        return
    if features is None:
        raise ValueError("the site's first round of a centred run needs its features")
    sigma = next((e.noise_multiplier for e in events if e.kind == "centring"), 0.0)
    save_mean(centring_dir(account.ledger.folder, account.run_key),
              noised_mean(features, count, sigma, rng))


def centred(cfg: RunConfig, data: SiteData, account: SiteAccount) -> SiteData:
    """``data`` centred on the site's kept mean of the run (`join_centring`); as it is
    without ``--feature-centring site``, when already centred, or before the site joined."""
    if not cfg.site_centred or data.centre is not None:
        return data
    entry = account.ledger.get(account.run_key)
    if entry is None:  # not joined: nothing charged, so no mean to centre with (a file left
        return data    # by a join whose ledger write failed was never charged: unused)
    charged = not cfg.dp or any(e.kind == "centring" for e in entry.events)
    mean = load_mean(centring_dir(account.ledger.folder, account.run_key),
                     data.test_x.shape[1]) if charged else None
    if mean is None:
        raise ConfigError(
            f"site {data.name} joined run {account.run_key} but keeps no charged feature "
            "mean for it (the run was not centred when the site joined, or the file was "
            "removed); this run cannot go on at this site")
    views = None if data.train_views is None else data.train_views - mean
    return dataclasses.replace(data, train_x=data.train_x - mean, test_x=data.test_x - mean,
                               train_views=views, centre=mean)


def _released_count(cfg: RunConfig, n: int, rng: np.random.Generator
                    ) -> tuple[int, list[LedgerEvent]]:
    """The count a site releases when it first joins a run, and its ledger event if noised."""
    count = public_count(n, mode=cfg.example_counts, noise=cfg.count_noise,
                         rounding=cfg.count_rounding, rng=rng)
    released = count_mechanism(cfg.example_counts, cfg.count_noise)
    return count, ([_event("count", released)] if released is not None else [])


def _at_least_floor(sigma: float, policy: SitePolicy, what: str) -> float:
    """``sigma`` raised to the policy's minimum noise multiplier, or refused if it says so."""
    floor = policy.min_noise_multiplier
    if sigma >= floor:
        return sigma
    if policy.on_violation == "refuse":
        raise PolicyRefusedError(
            f"the run's {what} would use noise multiplier {sigma:.3g}, below this site's "
            f"minimum of {floor} (min-noise-multiplier)")
    log.info("policy: %s noise multiplier raised from %.4g to the site's minimum %s", what,
             sigma, floor)
    return floor


def _keep_budget(book: LedgerBook, budget: SiteBudget) -> None:
    """The ledger states the budget its charges were checked against."""
    if book.budget != budget:
        book.budget, book.changed = budget, True


def _event(kind: str, mechanism: Mechanism) -> LedgerEvent:
    return LedgerEvent(kind, mechanism.sampling_rate, mechanism.noise_multiplier,
                       mechanism.steps)


def _check_fits(name: str, header: RunHeader, run: list[Mechanism], prior: list[Mechanism],
                budget: SiteBudget, what: str) -> None:
    """Raise unless ``run`` stays within its target and, with ``prior``, the site's budget."""
    eps = composed_epsilon(run, delta=header.delta, accountant=header.accountant)
    if eps > header.target_epsilon * (1 + 1e-6):
        raise BudgetExhaustedError(
            f"site {name}: {what} would raise this run's epsilon to {eps:.3f}, past the "
            f"run's target of {header.target_epsilon} (delta {header.delta}); it declines")
    total = composed_epsilon([*prior, *run], delta=budget.delta, accountant=budget.accountant)
    if total > budget.epsilon * (1 + 1e-6):
        raise BudgetExhaustedError(
            f"site {name}: {what} would raise the site's total epsilon over all runs to "
            f"{total:.3f}, past its budget of {budget.epsilon} (delta {budget.delta})"
            f"{_accountant_hint(header.accountant, [*prior, *run], budget)}; it declines")


def _accountant_hint(run_accountant: str, mechanisms: list[Mechanism],
                     budget: SiteBudget) -> str:
    """Why a budget refuses what the run's own accountant fits: the same mechanisms cost
    more under a looser one. Without it an operator sees a run of epsilon 3 refused by a
    budget of 3 and no reason."""
    if run_accountant == budget.accountant:
        return ""
    theirs = composed_epsilon(mechanisms, delta=budget.delta, accountant=run_accountant)
    if theirs > budget.epsilon * (1 + 1e-6):
        return ""
    return (f" under this site's accountant, {budget.accountant}; under the run's, "
            f"{run_accountant}, the same releases spend {theirs:.3f} (`fedtl client "
            f"--accountant {run_accountant}` lets the site compose its budget with it)")


def train_round(cfg: RunConfig, data: SiteData, weights: list[np.ndarray],
                account: SiteAccount, rng: np.random.Generator, *, proximal_mu: float = 0.0,
                personal: bool = False) -> RoundResult:
    """One round of local training (or, ``personal``, the site's own fine-tuning from the
    global head), charged to the ledger *before* it runs.

    ``proximal_mu`` adds FedProx's proximal term towards ``weights``. Raises
    `BudgetExhaustedError` (and trains nothing) if the budget does not allow it.
    """
    n = len(data.train_y)
    data = centred(cfg, data, account)  # a site that lost its kept mean refuses uncharged
    settings, entry = charge(cfg, data.name, n, account, rng, personal,
                             features=data.extracted_train_x)
    data = centred(cfg, data, account)  # a site that has just joined
    settings = dataclasses.replace(settings, proximal_mu=proximal_mu)
    from common.privacy.dp import train_head  # TensorFlow only once the site trains

    new_weights, loss = train_head(
        data.train_x, data.train_y, weights, num_classes=len(cfg.classes),
        head_width=cfg.head_width, settings=settings, rng=rng, views=data.train_views,
    )
    return RoundResult(weights=new_weights, train_loss=loss,
                       num_examples=entry.public_count if cfg.dp else n,
                       epsilon=entry.epsilon if cfg.dp else 0.0,
                       steps=entry.steps, settings=settings)


def released_accuracies(cfg: RunConfig, data: SiteData, heads: list[list[np.ndarray]],
                        account: SiteAccount, rng: np.random.Generator
                        ) -> tuple[list[float], int]:
    """Held-out accuracy of each head in ``heads`` as the site releases it, and the weight
    of its figures in the server's average.

    `figure_mode`: exact (outside the guarantee), noised (each accuracy a Gaussian
    (correct, total) release charged to the ledger first) or none (no accuracy leaves).
    Raises `BudgetExhaustedError` if noised releases no longer fit.
    """
    if not cfg.dp or cfg.example_counts == "exact":
        weight = len(data.test_y)
    else:  # derived from the released count (a site that never trained counts once)
        entry = account.ledger.get(account.run_key)
        weight = held_out_weight(entry.public_count, cfg.holdout) if entry else 1
    mode = figure_mode(cfg)
    if mode == "none" or not heads:
        return [], weight
    data = centred(cfg, data, account)
    if mode == "exact":
        return [evaluate(cfg, data, w) for w in heads], weight
    charge_releases(cfg, data.name, account, len(heads))
    correct = [int(round(evaluate(cfg, data, w) * len(data.test_y))) for w in heads]
    return [noisy_accuracy(c, len(data.test_y), noise=cfg.metric_noise, rng=rng)
            for c in correct], weight


def evaluate(cfg: RunConfig, data: SiteData, weights: list[np.ndarray]) -> float:
    """Accuracy of the head ``weights`` on the site's held-out features."""
    predicted = predict_classes(data.test_x, weights, num_classes=len(cfg.classes),
                                head_width=cfg.head_width)
    return float(np.mean(predicted == data.test_y))
