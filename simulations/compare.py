"""`fedtl compare`: several strategies on one simulated scenario, one comparison report.

Every variant is a full `fedtl simulate` run (same data, shifts, seed and per-site budget)
in its own subfolder; the comparison's ``report.json`` and plots are written last, so a
folder with a ``report.json`` always holds a finished comparison. An interrupted comparison
is resumed: variants that already finished are read back, not run again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import STRATEGIES, RunConfig
from common.errors import ConfigError
from common.report import plot_series, plot_site_bars
from common.storage import write_json_atomically
from simulations.simulate import simulate

PERSONALIZE_SUFFIX = "+personalize"


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: a server strategy, with or without personal heads."""

    strategy: str
    personalize: bool = False

    @property
    def name(self) -> str:
        return self.strategy + (PERSONALIZE_SUFFIX if self.personalize else "")


def parse_variants(text: str) -> list[Variant]:
    """``"fedavg,fedprox,fedavg+personalize"`` -> variants, checked."""
    variants = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        strategy = item.removesuffix(PERSONALIZE_SUFFIX)
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown variant {item!r}: use one of {STRATEGIES}, each "
                              f"optionally with {PERSONALIZE_SUFFIX!r}")
        variants.append(Variant(strategy, item.endswith(PERSONALIZE_SUFFIX)))
    if not variants or len({v.name for v in variants}) != len(variants):
        raise ConfigError(f"--variants needs one or more distinct variants. Found {text!r}.")
    return variants


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """What the comparison keeps of one run's report."""
    final, rounds = report["final"], report["rounds"]
    return {
        "mean_site_accuracy": final["mean_site_accuracy"],
        "worst_site_accuracy": final["worst_site_accuracy"],
        "site_accuracy_std": final["site_accuracy_std"],
        "weighted_accuracy": final["accuracy"],
        "unseen_domain_accuracy": final.get("unseen_domain_accuracy"),
        "per_site_accuracy": final["per_site_accuracy"],
        "per_site_global_accuracy": final["per_site_global_accuracy"],
        "max_epsilon": max(final["epsilon"].values(), default=None) if final["private"]
        else None,
        "rounds": [{k: r.get(k) for k in ("round", "accuracy", "worst_site_accuracy",
                                          "site_accuracy_std", "unseen_accuracy",
                                          "epsilon_max")} for r in rounds],
        "total_seconds": report["timing"]["total_seconds"],
    }


def compare(cfg: RunConfig, variants: list[Variant], *, verbose: bool = False
            ) -> dict[str, Any]:
    """Run every variant on ``cfg``'s scenario; write and return the comparison report."""
    out = Path(cfg.out)
    if (out / "report.json").exists():
        raise ConfigError(f"{out} already holds a finished comparison; choose another --out")
    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        run_cfg = cfg.replace(out=str(out / variant.name), strategy=variant.strategy,
                              personalize=variant.personalize)
        done = Path(run_cfg.out) / "report.json"
        if done.exists():
            report = json.loads(done.read_text())
            if report["settings"] != _comparable(run_cfg, report["settings"]):
                raise ConfigError(f"{done} is a run with other settings; choose another --out")
            print(f"[compare] {variant.name}: finished before, read back", flush=True)
        else:
            print(f"[compare] {variant.name}: running", flush=True)
            report = simulate(run_cfg, verbose=verbose)
        results[variant.name] = summarize(report)
        scenario = report.get("sites", {})
    comparison = {"settings": {k: v for k, v in cfg.to_flower().items()
                               if k not in ("strategy", "personalize", "out")},
                  "scenario": scenario, "variants": results,
                  "table": table(results)}
    _plots(out, comparison, cfg)
    write_json_atomically(out / "report.json", comparison, mode=0o644)
    return comparison


def _comparable(cfg: RunConfig, stored: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` as a report stores it; classes come from the data, so take the stored ones."""
    settings = cfg.to_flower()
    settings["classes"] = stored.get("classes", "")
    settings["clients"] = stored.get("clients") if cfg.partition == "folders" \
        else settings["clients"]
    return settings


def table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of the variants' final figures."""
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [f"{'variant':<22} {'mean site':>9} {'worst site':>10} {'std':>7} "
             f"{'unseen':>7} {'max eps':>8}"]
    for name, r in results.items():
        lines.append(f"{name:<22} {fmt(r['mean_site_accuracy']):>9} "
                     f"{fmt(r['worst_site_accuracy']):>10} {fmt(r['site_accuracy_std']):>7} "
                     f"{fmt(r['unseen_domain_accuracy']):>7} {fmt(r['max_epsilon']):>8}")
    return "\n".join(lines)


def _plots(out: Path, comparison: dict[str, Any], cfg: RunConfig) -> None:
    results = comparison["variants"]
    first = next(iter(results.values()))
    rounds = [r["round"] for r in first["rounds"]]
    series: dict[str, list[float | None]] = {}
    dashed = []
    for name, r in results.items():
        if name.endswith(PERSONALIZE_SUFFIX):
            continue  # its rounds train the same global head as its strategy's
        series[f"{name}: mean site"] = [x["accuracy"] for x in r["rounds"]]
        series[f"{name}: worst site"] = [x["worst_site_accuracy"] for x in r["rounds"]]
        dashed.append(f"{name}: worst site")
    plot_series(out / "accuracy.png", rounds, series, "accuracy",
                "Global head per round (solid: mean over sites, dashed: worst site)",
                dashed=dashed)
    plot_site_bars(out / "sites.png", {name: r["per_site_accuracy"]
                                       for name, r in results.items()},
                   "Final accuracy per site, of the model each site uses")
    plot_series(out / "epsilon.png", rounds,
                {name: [x["epsilon_max"] for x in r["rounds"]] for name, r in results.items()},
                "epsilon", f"Max epsilon over sites per round (delta={cfg.delta})",
                hline=cfg.target_epsilon if cfg.dp else None)
