"""`fedtl compare`: several strategies on one simulated scenario, one comparison report.

Every variant is a full `fedtl simulate` run (same data, shifts, seed and per-site budget)
in its own subfolder; the comparison's ``report.json`` and plots are written last, so a
folder with a ``report.json`` always holds a finished comparison. An interrupted comparison
is resumed: variants that already finished are read back, not run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import HEAD_METHODS, STRATEGIES, RunConfig
from common.errors import ConfigError
from common.noised_figures import noised_figures
from common.report import Report, plot_series, plot_site_bars
from common.storage import write_json_atomically
from simulations.pooled import pooled_reference
from simulations.simulate import simulate

PERSONALIZE_SUFFIX = "+personalize"
NON_PRIVATE = "nodp"  # a variant's tag: the same federation trained without DP
POOLED = "pooled"  # the non-private model of all sites' training images in one place
LOCAL = "local"  # each site's own non-private model of its own training images alone
REFERENCES = (POOLED, LOCAL)


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: a server strategy and head method (the run's own when
    empty), private or not, with or without personal heads; or a non-private reference."""

    strategy: str
    personalize: bool = False
    head: str = ""  # a head method, or "" for the run's --head-method
    private: bool = True

    @property
    def name(self) -> str:
        if self.strategy in REFERENCES:
            return self.strategy
        return (self.strategy + (f":{self.head}" if self.head else "")
                + ("" if self.private else f":{NON_PRIVATE}")
                + (PERSONALIZE_SUFFIX if self.personalize else ""))

    def settings(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` as this variant runs it."""
        changes: dict[str, Any] = dict(strategy=self.strategy, personalize=self.personalize)
        if not self.private:
            changes["dp"] = False
        if self.head:
            changes["head_method"] = self.head
        return cfg.replace(**changes)


def parse_variants(text: str) -> list[Variant]:
    """``"fedavg,fedavg:ridge,fedavg:ridge:nodp,pooled,local,fedavg+personalize"`` ->
    variants, checked."""
    variants = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item in REFERENCES:
            variants.append(Variant(item))
            continue
        strategy, *tags = item.removesuffix(PERSONALIZE_SUFFIX).split(":")
        heads = [t for t in tags if t in HEAD_METHODS]
        others = [t for t in tags if t not in HEAD_METHODS]
        if strategy not in STRATEGIES or len(heads) > 1 or others not in ([], [NON_PRIVATE]):
            raise ConfigError(
                f"unknown variant {item!r}: use a strategy {STRATEGIES}, optionally with "
                f"':<head>' ({', '.join(HEAD_METHODS)}), ':{NON_PRIVATE}' (without DP) and "
                f"{PERSONALIZE_SUFFIX!r}, or {POOLED!r} or {LOCAL!r} (non-private "
                "references)")
        variants.append(Variant(strategy, item.endswith(PERSONALIZE_SUFFIX),
                                heads[0] if heads else "", NON_PRIVATE not in tags))
    if not variants or len({v.name for v in variants}) != len(variants):
        raise ConfigError(f"--variants needs one or more distinct variants. Found {text!r}.")
    return variants


def summarize(report: Report) -> dict[str, Any]:
    """What the comparison keeps of one run's report."""
    final = report.final
    noised = noised_figures(report)
    gain = final.personal_gain()
    return {
        "mean_site_accuracy": final.mean_site_accuracy,
        "worst_site_accuracy": final.worst_site_accuracy,
        "site_accuracy_std": final.site_accuracy_std,
        "weighted_accuracy": final.accuracy,
        "unseen_domain_accuracy": final.unseen_domain_accuracy,
        "per_site_accuracy": final.per_site_accuracy,
        "per_site_global_accuracy": final.per_site_global_accuracy,
        "max_epsilon": report.max_epsilon,
        # Own heads against the run's own global head: a personalized variant's global head
        # is not its strategy's when the same budget also pays for a DP personal step.
        "personal_gain_mean": None if gain is None else gain.mean,
        "personal_gain_worst": None if gain is None else gain.worst,
        "rounds": [{"round": r.round, "mean_site_accuracy": r.mean_site_accuracy,
                    "weighted_accuracy": r.accuracy,
                    "worst_site_accuracy": r.worst_site_accuracy,
                    "site_accuracy_std": r.site_accuracy_std,
                    "unseen_accuracy": r.unseen_accuracy, "epsilon_max": r.epsilon_max}
                   for r in report.rounds],
        "total_seconds": report.timing.total_seconds,
        # Noised held-out figures: how far the mean site figure may be off by that noise alone.
        "noised_mean_site_std": None if noised is None else noised.mean_site_std,
    }


FIGURES = ("mean_site_accuracy", "worst_site_accuracy", "site_accuracy_std",
           "weighted_accuracy", "unseen_domain_accuracy", "max_epsilon", "personal_gain_mean",
           "personal_gain_worst")


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs of one variant: the mean of every figure, its standard deviation over
    the repeats (``<figure>_sd``; DP training noise makes single runs vary), and the runs."""
    out: dict[str, Any] = {"repeats": len(runs)}
    for key in FIGURES:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_sd"] = float(np.std(values)) if len(values) > 1 else None
    sites = runs[0]["per_site_accuracy"]
    out["per_site_accuracy"] = {s: float(np.mean([r["per_site_accuracy"][s] for r in runs]))
                                for s in sites}
    # A per-site target (e.g. every PACS domain within 10 points) needs each site's spread too.
    out["per_site_accuracy_sd"] = ({s: float(np.std([r["per_site_accuracy"][s] for r in runs]))
                                    for s in sites} if len(runs) > 1 else None)
    out["rounds"] = [
        {key: _mean([r["rounds"][i][key] for r in runs]) if key != "round" else rnd["round"]
         for key in rnd} for i, rnd in enumerate(runs[0]["rounds"])]
    out["noised_mean_site_std"] = _mean([r.get("noised_mean_site_std") for r in runs])
    out["runs"] = runs
    return out


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def compare(cfg: RunConfig, variants: list[Variant], *, repeats: int = 1,
            verbose: bool = False) -> dict[str, Any]:
    """Run every variant ``repeats`` times on ``cfg``'s scenario (same sites, shifts and
    budget; fresh DP noise each time); write and return the comparison report."""
    out = Path(cfg.out)
    if repeats < 1:
        raise ConfigError(f"--repeats must be at least 1. Found {repeats}.")
    if (out / "report.json").exists():
        raise ConfigError(f"{out} already holds a finished comparison; choose another --out")
    results: dict[str, dict[str, Any]] = {}
    scenario: dict[str, Any] = {}
    for variant in variants:
        runs = []
        if variant.strategy in REFERENCES:
            print(f"[compare] {variant.strategy}: fitting the non-private reference",
                  flush=True)
            results[variant.strategy] = combine(  # deterministic: one fit
                [pooled_reference(cfg, local=variant.strategy == LOCAL)])
            continue
        for k in range(repeats):
            folder = out / variant.name / (f"run-{k + 1}" if repeats > 1 else "")
            report = _run_or_read(variant.settings(cfg).replace(out=str(folder)),
                                  f"{variant.name} ({k + 1}/{repeats})", verbose)
            runs.append(summarize(report))
            scenario = report.sites
        results[variant.name] = combine(runs)
    comparison = {"settings": {k: v for k, v in cfg.to_flower().items()
                               if k not in ("strategy", "personalize", "out")},
                  "repeats": repeats, "scenario": scenario, "variants": results,
                  "table": table(results)}
    _plots(out, comparison, cfg)
    write_json_atomically(out / "report.json", comparison, mode=0o644)
    return comparison


def _run_or_read(cfg: RunConfig, label: str, verbose: bool) -> Report:
    done = Path(cfg.out) / "report.json"
    if done.exists():
        report = Report.read(done)
        if not _same_run(cfg, report.settings):
            raise ConfigError(f"{done} is a run with other settings; choose another --out")
        print(f"[compare] {label}: finished before, read back", flush=True)
        return report
    print(f"[compare] {label}: running", flush=True)
    return simulate(cfg, verbose=verbose)


# Settings one strategy ignores: changing them does not make its finished run stale.
_ONLY_FOR = {"proximal-mu": "fedprox", "server-lr": "fedadam"}


def _same_run(cfg: RunConfig, stored: dict[str, Any]) -> bool:
    """Whether a finished run's ``stored`` settings are ``cfg``'s (classes and, for site
    folders, the site count come from the data; other strategies' knobs do not matter)."""
    settings = cfg.to_flower()
    settings["classes"] = stored.get("classes", "")
    if cfg.partition == "folders":
        settings["clients"] = stored.get("clients")
    keys = (set(settings) | set(stored)) - {k for k, strategy in _ONLY_FOR.items()
                                            if strategy != cfg.strategy}
    return all(settings.get(k) == stored.get(k) for k in keys)


def _fmt(value: float | None, sd: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" ±{sd:.3f}" if sd is not None else "")


def _points(r: dict[str, Any], key: str) -> str:
    sd = r.get(f"{key}_sd")
    return f"{100 * r[key]:+.1f}" + (f" ±{100 * sd:.1f}" if sd is not None else "")


def table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of the variants' final figures, then each site's accuracy; beside
    the pooled reference (when it ran) the mean's ratio to it and each site's points behind
    it, the figures the accuracy targets are stated in."""
    pooled = results.get(POOLED)
    keys = ("mean_site_accuracy", "worst_site_accuracy", "site_accuracy_std",
            "unseen_domain_accuracy", "max_epsilon")
    heads = ("mean site", "worst site", "site spread", "unseen site", "max eps")
    width = max([22, *(len(name) for name in results)])
    lines = [f"{'variant':<{width}} " + " ".join(f"{h:>13}" for h in heads)
             + (f" {'/ pooled':>9}" if pooled else "")]
    for name, r in results.items():
        ratio = (f" {100 * r['mean_site_accuracy'] / pooled['mean_site_accuracy']:>8.0f}%"
                 if pooled and pooled["mean_site_accuracy"] else "")
        lines.append(f"{name:<{width}} "
                     + " ".join(f"{_fmt(r[k], r.get(f'{k}_sd')):>13}" for k in keys) + ratio)
    sites = list(next(iter(results.values()))["per_site_accuracy"]) if results else []
    cell, label = (21, "per site (vs pooled)") if pooled else (13, "per site")
    lines += ["", f"{label:<{width}} " + " ".join(f"{s[:cell]:>{cell}}" for s in sites)]
    for name, r in results.items():
        spread = r.get("per_site_accuracy_sd") or {}
        cells = []
        for s in sites:
            value = r["per_site_accuracy"].get(s)
            text = _fmt(value, spread.get(s))
            reference = pooled["per_site_accuracy"].get(s) if pooled else None
            if name != POOLED and value is not None and reference is not None:
                text += f" ({100 * (value - reference):+.1f})"
            cells.append(f"{text:>{cell}}")
        lines.append(f"{name:<{width}} " + " ".join(cells))
    gains = {name: r for name, r in results.items() if r.get("personal_gain_mean") is not None}
    if gains:
        lines += ["", "own heads against each run's own global head on the same sites (points; "
                  "mean site, worst site: the worst own head against the worst global head)"]
        lines += [f"{name:<{width}} {_points(r, 'personal_gain_mean'):>13} "
                  f"{_points(r, 'personal_gain_worst'):>13}" for name, r in gains.items()]
    noised = {name: r["noised_mean_site_std"] for name, r in results.items()
              if r.get("noised_mean_site_std") is not None}
    if noised:
        lines += ["", "noised held-out figures: a run's mean site figure may be off by about this "
                  "much from the release's noise alone (one std; a site's own figure by more)"]
        lines += [f"{name:<{width}} ±{100 * std:.1f} points" for name, std in noised.items()]
    return "\n".join(lines)


def _plots(out: Path, comparison: dict[str, Any], cfg: RunConfig) -> None:
    results = comparison["variants"]
    length = max(len(r["rounds"]) for r in results.values())
    rounds = list(range(1, length + 1))

    def padded(r: dict[str, Any], key: str) -> list[float | None]:
        # A ridge head is one round; it ends there, the others go on.
        values = [x[key] for x in r["rounds"]]
        return values + [None] * (length - len(values))

    series: dict[str, list[float | None]] = {}
    dashed = []
    for name, r in results.items():
        if name.endswith(PERSONALIZE_SUFFIX) or not r["rounds"]:
            continue  # the same global head as its strategy's; the pooled model has no rounds
        series[f"{name}: mean site"] = padded(r, "mean_site_accuracy")
        series[f"{name}: worst site"] = padded(r, "worst_site_accuracy")
        dashed.append(f"{name}: worst site")
    plot_series(out / "accuracy.png", rounds, series, "accuracy",
                "Global head: mean over sites (solid), worst site (dashed)",
                dashed=dashed)
    plot_site_bars(out / "sites.png", {name: r["per_site_accuracy"]
                                       for name, r in results.items()},
                   "Final accuracy per site, of the model each site uses (bars: sd)",
                   errors={name: r.get("per_site_accuracy_sd") or {}
                           for name, r in results.items()})
    plot_series(out / "epsilon.png", rounds,
                {name: padded(r, "epsilon_max") for name, r in results.items() if r["rounds"]},
                "epsilon", f"Max epsilon over sites per round (delta={cfg.delta})",
                hline=cfg.target_epsilon if cfg.dp else None)
