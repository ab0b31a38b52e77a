"""A site's privacy ledger: an append-only record of every mechanism that ran on its data.

One JSON file in the site's state folder holds the site's budget and, per run, a header (the
run's target, delta, released count and planned noise, fixed when the site first joined it)
and the list of mechanisms that actually ran: each round's DP-SGD steps with the sampling rate
and noise they used, the noised count, each batch of noised figures. A setting the server
changes mid-run is one more event, composed by the accountant like the others; nothing already
written is ever rewritten, so what a site has spent can only grow. Every check-and-charge runs
under an exclusive lock, and a field that is not a sane finite number stops the site.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from common.privacy.accounting import ACCOUNTANTS, Mechanism, composed_epsilon
from common.errors import ConfigError, DataError
from common.storage import exclusive_lock, write_json_atomically

LEDGER_FILE = "privacy-ledger.json"
LOCK_FILE = ".state.lock"  # one lock per state folder: the ledger and the audit trail
FORMAT = 2

# What an event records. ``dp-sgd`` and ``personal``: Poisson-subsampled Gaussian steps;
# ``count``: the noised example count; ``figures``: noised (correct, total) releases;
# ``sums``: the one-shot per-class feature sums (one Gaussian query, sampling rate 1);
# ``centring``: the noised feature sum a site centres its features on (--feature-centring
# site; one Gaussian query per run, kept at the site);
# ``non-private``: training without noise, allowed by the site's policy (epsilon infinite).
KINDS = ("dp-sgd", "personal", "count", "figures", "sums", "centring", "non-private")
TRAINING = ("dp-sgd", "personal", "non-private")


@dataclass(frozen=True)
class SiteBudget:
    """The most a site will ever spend, over all runs, as (epsilon, delta) under an accountant."""

    epsilon: float
    delta: float = 1e-5
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"the site's budget must be a positive epsilon. Found {self.epsilon}.")
        if not 0 < self.delta < 1:
            raise ConfigError(f"the site's delta must be in (0, 1). Found {self.delta}.")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be one of {ACCOUNTANTS}. Found {self.accountant!r}.")


@dataclass(frozen=True)
class LedgerEvent:
    """One mechanism that ran: ``steps`` Gaussian queries at this sampling rate and noise."""

    kind: str
    sampling_rate: float
    noise_multiplier: float
    steps: int
    at: float = 0.0  # wall-clock time it was charged (before it ran)
    # Distributed noise: the part of the noise this site added itself, trusting secure
    # aggregation and the other sites for the rest (None: it added all of it).
    local_noise_multiplier: float | None = None

    @property
    def mechanism(self) -> Mechanism:
        return Mechanism(self.sampling_rate, self.noise_multiplier, self.steps)

    @property
    def alone(self) -> Mechanism:
        """The mechanism as this site alone ran it: what it keeps if the others' noise or
        secure aggregation fail it."""
        noise = self.noise_multiplier if self.local_noise_multiplier is None \
            else self.local_noise_multiplier
        return Mechanism(self.sampling_rate, noise, self.steps)


@dataclass(frozen=True)
class RunHeader:
    """What a run was when the site first joined it; later requests cannot change it."""

    target_epsilon: float
    delta: float
    accountant: str
    public_count: int  # the training-example count the site released (exact/rounded/noised)
    noise_multiplier: float  # the DP-SGD noise planned for the whole run


@dataclass(frozen=True)
class RunEntry:
    """One run at one site: its header and every mechanism it ran, oldest first."""

    header: RunHeader
    events: tuple[LedgerEvent, ...] = ()

    @property
    def mechanisms(self) -> list[Mechanism]:
        return [e.mechanism for e in self.events]

    @functools.cached_property
    def epsilon(self) -> float:
        """Everything this run released, composed, at the run's delta."""
        return composed_epsilon(self.mechanisms, delta=self.header.delta,
                                accountant=self.header.accountant)

    @functools.cached_property
    def epsilon_on_its_own(self) -> float | None:
        """With distributed noise, the run's epsilon counting only the noise this site added
        (its guarantee if the other sites or secure aggregation fail it); None otherwise."""
        if all(e.local_noise_multiplier is None for e in self.events):
            return None
        return composed_epsilon([e.alone for e in self.events], delta=self.header.delta,
                                accountant=self.header.accountant)

    @property
    def public_count(self) -> int:
        return self.header.public_count

    @property
    def steps(self) -> int:
        """Training steps taken in this run (rounds and personal fine-tuning)."""
        return sum(e.steps for e in self.events if e.kind in TRAINING)

    @property
    def metric_releases(self) -> int:
        return sum(e.steps for e in self.events if e.kind == "figures")

    @property
    def last_training(self) -> LedgerEvent | None:
        return next((e for e in reversed(self.events) if e.kind in TRAINING), None)

    @property
    def private(self) -> bool:
        return all(e.kind != "non-private" for e in self.events)

    def extended(self, events: list[LedgerEvent]) -> RunEntry:
        return RunEntry(self.header, (*self.events, *events))


@dataclass(frozen=True)
class LedgerSummary:
    """What `fedtl budget` prints."""

    state: str
    budget: float | None
    delta: float | None
    accountant: str | None
    spent: float
    remaining: float | None
    runs: dict[str, dict[str, Any]]


@dataclass
class LedgerBook:
    """The ledger as read under the lock; `append` is the only way to change it."""

    budget: SiteBudget | None
    runs: dict[str, RunEntry] = field(default_factory=dict)
    changed: bool = False

    def prior(self, run_key: str) -> list[Mechanism]:
        """The mechanisms of every run except ``run_key``."""
        return [m for key, entry in self.runs.items() if key != run_key for m in entry.mechanisms]

    def append(self, run_key: str, events: list[LedgerEvent],
               header: RunHeader | None = None) -> RunEntry:
        """Add ``events`` to ``run_key`` (a new run needs its ``header``)."""
        stamped = [replace(e, at=e.at or time.time()) for e in events]
        for event in stamped:
            _check_event(event, where=f"run {run_key}")
        entry = self.runs.get(run_key)
        if entry is None:
            if header is None:
                raise ValueError(f"run {run_key} is new: its header is needed")
            _check_header(header, where=f"run {run_key}")
            entry = RunEntry(header)
        self.runs[run_key] = entry = entry.extended(stamped)
        self.changed = True
        return entry


class PrivacyLedger:
    """The ledger file of one state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = Path(state_dir)
        self.path = self.folder / LEDGER_FILE
        self.lock_path = self.folder / LOCK_FILE

    @contextlib.contextmanager
    def transaction(self) -> Iterator[LedgerBook]:
        """Read, check and charge under the folder's exclusive lock; written once on success.

        Nothing is written if the block raises, so a declined charge records nothing.
        """
        with exclusive_lock(self.lock_path):
            book = self._read()
            before = dict(book.runs)
            yield book
            if book.changed:
                _check_only_grew(before, book.runs)
                self._write(book)

    def _read(self) -> LedgerBook:
        if not self.path.exists():
            return LedgerBook(budget=None)
        try:
            raw = json.loads(self.path.read_text())
            budget = SiteBudget(**raw["budget"]) if raw.get("budget") else None
            if raw.get("format", 1) == 1:
                runs = {key: _from_v1(value) for key, value in raw["runs"].items()}
            else:
                runs = {key: _entry(value, key) for key, value in raw["runs"].items()}
            return LedgerBook(budget=budget, runs=runs)
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
            # Never guess at spending: a damaged ledger stops the site until someone looks.
            raise DataError(f"privacy ledger {self.path} is damaged ({exc}); restore it from "
                            "a backup before this site trains again") from exc

    def _write(self, book: LedgerBook) -> None:
        write_json_atomically(self.path, {
            "format": FORMAT,
            "budget": asdict(book.budget) if book.budget else None,
            # epsilon is informational (recomputed from the events); null when infinite.
            "runs": {key: {**asdict(entry.header),
                           "epsilon": entry.epsilon if math.isfinite(entry.epsilon) else None,
                           "events": [asdict(e) for e in entry.events]}
                     for key, entry in book.runs.items()},
        })

    def runs(self) -> dict[str, RunEntry]:
        return self._read().runs

    def budget(self) -> SiteBudget | None:
        return self._read().budget

    def get(self, run_key: str) -> RunEntry | None:
        return self.runs().get(run_key)

    def set_budget(self, budget: SiteBudget) -> None:
        """The site operator's budget (it caps every later charge; spending is kept)."""
        with self.transaction() as book:
            if book.budget != budget:
                book.budget, book.changed = budget, True

    def spent(self, budget: SiteBudget) -> float:
        """Epsilon at the budget's delta of all runs composed."""
        return composed_epsilon([m for e in self.runs().values() for m in e.mechanisms],
                                delta=budget.delta, accountant=budget.accountant)

    def summary(self) -> LedgerSummary:
        book = self._read()
        per_run = {key: {**asdict(e.header), "epsilon": e.epsilon, "steps": e.steps,
                         "metric_releases": e.metric_releases, "private": e.private,
                         "events": len(e.events), "epsilon_on_its_own": e.epsilon_on_its_own,
                         "sampling_rate": e.last_training.sampling_rate if e.last_training
                         else None}
                   for key, e in book.runs.items()}
        mechanisms = [m for e in book.runs.values() for m in e.mechanisms]
        if book.budget is None:
            # No budget recorded: compose at the smallest delta any run used (the larger epsilon).
            delta = min((e.header.delta for e in book.runs.values()), default=1e-5)
            return LedgerSummary(state=str(self.folder), budget=None, delta=None,
                                 accountant=None, spent=composed_epsilon(mechanisms, delta=delta),
                                 remaining=None, runs=per_run)
        budget = book.budget
        spent = composed_epsilon(mechanisms, delta=budget.delta, accountant=budget.accountant)
        return LedgerSummary(state=str(self.folder), budget=budget.epsilon,
                             delta=budget.delta, accountant=budget.accountant, spent=spent,
                             remaining=max(0.0, budget.epsilon - spent), runs=per_run)


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return float(value)


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} is {value!r}, not a whole number >= 0")
    return value


def _check_event(e: LedgerEvent, where: str) -> None:
    if e.kind not in KINDS:
        raise ValueError(f"{where}: event kind {e.kind!r} is not one of {KINDS}")
    rate = _finite(e.sampling_rate, f"{where}: sampling rate")
    sigma = _finite(e.noise_multiplier, f"{where}: noise multiplier")
    _count(e.steps, f"{where}: steps")
    _finite(e.at, f"{where}: time")
    if not 0 < rate <= 1:
        raise ValueError(f"{where}: sampling rate {rate} is not in (0, 1]")
    if sigma < 0 or (sigma == 0) != (e.kind == "non-private"):
        raise ValueError(f"{where}: noise multiplier {sigma} does not fit a {e.kind} event")
    if e.local_noise_multiplier is not None:
        local = _finite(e.local_noise_multiplier, f"{where}: local noise multiplier")
        if e.kind != "sums" or not 0 < local <= sigma:
            raise ValueError(f"{where}: a local noise multiplier of {local} does not fit a "
                             f"{e.kind} event of noise {sigma}")


def _check_header(h: RunHeader, where: str) -> None:
    if not _finite(h.target_epsilon, f"{where}: target epsilon") > 0:
        raise ValueError(f"{where}: target epsilon {h.target_epsilon} is not positive")
    if not 0 < _finite(h.delta, f"{where}: delta") < 1:
        raise ValueError(f"{where}: delta {h.delta} is not in (0, 1)")
    if h.accountant not in ACCOUNTANTS:
        raise ValueError(f"{where}: accountant {h.accountant!r} is not one of {ACCOUNTANTS}")
    _count(h.public_count, f"{where}: released count")
    if _finite(h.noise_multiplier, f"{where}: planned noise") < 0:
        raise ValueError(f"{where}: planned noise {h.noise_multiplier} is negative")


def _entry(raw: dict[str, Any], key: str) -> RunEntry:
    header = RunHeader(**{f: raw[f] for f in RunHeader.__dataclass_fields__})
    _check_header(header, where=f"run {key}")
    events = tuple(LedgerEvent(**e) for e in raw["events"])
    for event in events:
        _check_event(event, where=f"run {key}")
    if raw.get("epsilon") is not None:
        _finite(raw["epsilon"], f"run {key}: epsilon")
    return RunEntry(header, events)


def _from_v1(raw: dict[str, Any]) -> RunEntry:
    """A ledger written before events existed: one DP-SGD mechanism, a count, figures."""
    header = RunHeader(target_epsilon=raw["target_epsilon"], delta=raw["delta"],
                       accountant=raw["accountant"], public_count=raw.get("public_count", 0),
                       noise_multiplier=raw["noise_multiplier"])
    _check_header(header, where="a run")
    events = [LedgerEvent("dp-sgd", raw["sampling_rate"], raw["noise_multiplier"],
                          raw["steps"], at=0.0)]
    if raw.get("count_noise"):
        events.append(LedgerEvent("count", 1.0, raw["count_noise"], 1))
    if raw.get("metric_releases"):
        events.append(LedgerEvent("figures", 1.0, raw["metric_noise"] / math.sqrt(2.0),
                                  raw["metric_releases"]))
    for event in events:
        _check_event(event, where="a run")
    return RunEntry(header, tuple(events))


def _check_only_grew(before: dict[str, RunEntry], after: dict[str, RunEntry]) -> None:
    """The ledger only grows: every run kept with its header, every event kept, in order."""
    for key, old in before.items():
        new = after.get(key)
        if new is None or new.header != old.header \
                or new.events[: len(old.events)] != old.events:
            raise AssertionError(f"privacy ledger: run {key}'s record would shrink or change")
