"""The run report (``report.json``) as typed records, and its plots, written only when a run
completes. The CLI, `fedtl compare` and the tests read a `Report`, not string keys."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from common.storage import write_atomically, write_json_atomically


@dataclass
class RoundRecord:
    """What the server learnt in one round."""

    round: int
    train_loss: float | None = None
    # Flower's aggregate: sites weighted by their held-out counts (capped, as the heads are).
    accuracy: float | None = None
    mean_site_accuracy: float | None = None  # every site counts once
    epsilon_max: float | None = None
    sites_trained: list[str] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)  # their budget did not allow it
    rejected: list[str] = field(default_factory=list)  # a reply failed the server's checks
    # Under SecAgg+: the update is inside the secure sum but its figures failed the checks
    # (no server can take one site's update out of the sum; its spending is its ledger's).
    unconfirmed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # their own policy refused the run
    site_accuracy: dict[str, float] = field(default_factory=dict)  # global head, per site
    worst_site_accuracy: float | None = None
    site_accuracy_std: float | None = None  # spread over sites (population std)
    unseen_accuracy: float | None = None  # a simulated site no one trains on
    client_epsilon: float | None = None  # client-level DP's epsilon after this round
    seconds: float | None = None  # wall time from sending train messages to evaluating
    failure: str | None = None  # why the round's aggregation failed (the head stayed)
    # --sums-prior public-hull: each class's distance from the public hull in noise norms
    # (classes beyond common.privacy.hull.MAX_DISTANCE were kept as released).
    hull_distance: dict[str, float] = field(default_factory=dict)
    # A one-shot round: the release's noise's share of its head's score spread
    # (common.privacy.oneshot.noise_share; 1 is all noise).
    noise_share: float | None = None
    # A one-shot round: the ridge penalty its head was solved with (--ridge-lambda, or set
    # from the release's noise with --ridge-penalty noise); personal heads reuse it.
    ridge_lambda: float | None = None
    # Each site's weight in `accuracy`: its held-out count, exact or from its released count.
    site_held_out: dict[str, int] = field(default_factory=dict)


def round_metrics(record: RoundRecord, epsilon_by_site: Mapping[str, float]
                  ) -> dict[str, float]:
    """A round's figures as the curves trackers draw (TensorBoard, MLflow), unknown ones
    left out: accuracy (mean site, weighted, worst, unseen, spread, per site), epsilon
    (max over sites, per site, client-level), train loss, sites trained, seconds."""
    scalars: dict[str, float | None] = {
        "accuracy/mean_site": record.mean_site_accuracy,
        "accuracy/weighted": record.accuracy,
        "accuracy/worst_site": record.worst_site_accuracy,
        "accuracy/unseen_site": record.unseen_accuracy,
        "accuracy/site_spread": record.site_accuracy_std,
        "epsilon/max_site": record.epsilon_max,
        "epsilon/client_level": record.client_epsilon,
        "train/loss": record.train_loss,
        "train/sites_trained": float(len(record.sites_trained)),
        "train/round_seconds": record.seconds,
    }
    scalars.update({f"site_accuracy/{k}": v for k, v in record.site_accuracy.items()})
    scalars.update({f"site_epsilon/{k}": v for k, v in epsilon_by_site.items()})
    return {tag: float(v) for tag, v in scalars.items() if v is not None}


@dataclass(frozen=True)
class BaseInfo:
    """The frozen base every site used."""

    weights: str
    fingerprint: str
    base_layer: str
    image_size: int
    preprocessing: str


@dataclass(frozen=True)
class FinalFigures:
    """How the run ended: accuracies (per site, of the model each site would use), epsilons."""

    accuracy: float | None
    per_site_accuracy: dict[str, float]
    mean_site_accuracy: float | None
    worst_site_accuracy: float | None
    site_accuracy_std: float | None
    per_site_global_accuracy: dict[str, float]
    per_site_personal_accuracy: dict[str, float] | None
    unseen_domain_accuracy: float | None
    strategy: str
    personalized: bool
    epsilon: dict[str, float]
    delta: float
    target_epsilon: float | None
    private: bool

    def personal_gain(self) -> PersonalGain | None:
        """Each site's own head against the global head on the same held-out images (None
        without own heads' figures)."""
        own, shared = self.per_site_personal_accuracy or {}, self.per_site_global_accuracy
        both = [s for s in sorted(own) if s in shared]
        if not both:
            return None
        return PersonalGain({s: own[s] - shared[s] for s in both},
                            min(own[s] for s in both), min(shared[s] for s in both))


@dataclass(frozen=True)
class PersonalGain:
    """What own heads gain over the global head, per site (own minus global, on the same
    held-out images) and for the worst site, which may be another site for each head: the
    lift personalization is judged by where sites differ."""

    per_site: dict[str, float]
    worst_own: float
    worst_global: float

    @property
    def mean(self) -> float:
        return sum(self.per_site.values()) / len(self.per_site)

    @property
    def worst(self) -> float:
        return self.worst_own - self.worst_global


@dataclass(frozen=True)
class RecordLevel:
    """What each site's record-level epsilon covers and what left sites outside it."""

    private: bool
    unit: str
    target_epsilon: float | None
    delta: float | None
    accountant: str
    covers: list[str]
    released_outside_guarantee: list[str]
    tightened_by_sites: dict[str, list[str]]


@dataclass(frozen=True)
class Guarantees:
    record_level: RecordLevel
    client_level: dict[str, Any]  # server/client_dp.py's statement ({"private": False} if off)
    secure_aggregation: dict[str, Any]


@dataclass(frozen=True)
class DataFigures:
    skipped_images: int
    skipped_images_by_site: dict[str, int]


@dataclass(frozen=True)
class Timing:
    total_seconds: float
    feature_extraction_seconds: float


@dataclass(frozen=True)
class Report:
    """Everything ``report.json`` holds (README, "What a run writes")."""

    run_id: str
    settings: dict[str, Any]
    base: BaseInfo
    versions: dict[str, str]
    rounds: list[RoundRecord]
    final: FinalFigures
    sites: dict[str, dict[str, Any]]
    privacy: dict[str, dict[str, Any]]
    guarantees: Guarantees
    data: DataFigures
    timing: Timing

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Report:
        """A report read back (unknown keys are an error: the format is this class)."""
        guarantees = raw["guarantees"]
        return cls(
            run_id=raw["run_id"], settings=dict(raw["settings"]),
            base=BaseInfo(**raw["base"]), versions=dict(raw["versions"]),
            rounds=[RoundRecord(**r) for r in raw["rounds"]],
            final=FinalFigures(**raw["final"]), sites=dict(raw["sites"]),
            privacy=dict(raw["privacy"]),
            guarantees=Guarantees(record_level=RecordLevel(**guarantees["record_level"]),
                                  client_level=dict(guarantees["client_level"]),
                                  secure_aggregation=dict(guarantees["secure_aggregation"])),
            data=DataFigures(**raw["data"]), timing=Timing(**raw["timing"]))

    @classmethod
    def read(cls, path: Path) -> Report:
        return cls.from_json(json.loads(Path(path).read_text()))

    @property
    def max_epsilon(self) -> float | None:
        return max(self.final.epsilon.values(), default=None) if self.final.private else None


REPORT_KEYS = tuple(f.name for f in fields(Report))

_PACKAGES = ("fedtl", "flwr", "tensorflow", "tf-keras", "tensorflow-privacy", "dp-accounting",
             "numpy", "ray")


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages a result depends on."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_report(out: Path, report: Report) -> Path:
    """Plots first, then ``report.json`` last, so a report always has its plots beside it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rounds = report.rounds
    numbers = [r.round for r in rounds]
    series = {"global head, mean over sites (held-out)": [r.mean_site_accuracy for r in rounds],
              "global head, worst site": [r.worst_site_accuracy for r in rounds]}
    if any(r.unseen_accuracy is not None for r in rounds):
        series["global head, unseen-domain site"] = [r.unseen_accuracy for r in rounds]
    plot_series(out / "accuracy.png", numbers, series, "accuracy", "Accuracy per round")
    final = report.final
    bars = {"global head": final.per_site_global_accuracy or {}}
    if final.per_site_personal_accuracy:
        bars["own (personalized) head"] = final.per_site_personal_accuracy
    if bars["global head"]:
        plot_site_bars(out / "sites.png", bars, "Final accuracy per site (held-out)")
    plot_series(out / "epsilon.png", numbers, {"max epsilon over sites":
                [r.epsilon_max for r in rounds]}, "epsilon",
                f"Privacy spent per round (delta={final.delta})",
                hline=final.target_epsilon if final.private else None)
    path = out / "report.json"
    write_json_atomically(path, report.to_json(), mode=0o644)
    return path


def plot_series(path: Path, x: Sequence[float], series: dict[str, Sequence[float | None]],
                ylabel: str, title: str, hline: float | None = None,
                dashed: Sequence[str] = (), xlabel: str = "round", hline_label: str = "budget",
                logx: bool = False) -> None:
    """A line plot of one or more series over ``x`` (rounds unless ``xlabel`` says otherwise;
    ``dashed`` ones dashed), saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, ys in series.items():
        points = [(a, b) for a, b in zip(x, ys, strict=True) if b is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label,
                    linestyle="--" if label in dashed else "-")
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", label=hline_label)
    if logx:  # the measured points as ticks: a log axis alone labels only powers of ten
        ax.set_xscale("log")
        ax.set_xticks(list(x), [f"{v:g}" for v in x])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to label when sites released no figures
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda handle: fig.savefig(handle, format="png"), mode=0o644)
    plt.close(fig)


def plot_site_bars(path: Path, groups: dict[str, dict[str, float]], title: str,
                   errors: dict[str, dict[str, float]] | None = None) -> None:
    """Grouped bars: one group per site, one bar per model (e.g. global vs own head), with
    ``errors[model][site]`` as error bars where given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sites = sorted({s for values in groups.values() for s in values})
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(sites) * max(1, len(groups)) / 2 + 3),
                                    4), dpi=100)
    for k, (label, values) in enumerate(groups.items()):
        xs = np.arange(len(sites)) + (k - (len(groups) - 1) / 2) * width
        spread = (errors or {}).get(label) or {}
        ax.bar(xs, [values.get(s, np.nan) for s in sites], width, label=label,
               yerr=[spread.get(s, 0.0) for s in sites] if spread else None, capsize=2)
    ax.set_xticks(np.arange(len(sites)), sites, rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda handle: fig.savefig(handle, format="png"), mode=0o644)
    plt.close(fig)
