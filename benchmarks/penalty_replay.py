"""How well ``--ridge-penalty noise`` sets the one-shot head's penalty: a numpy replay of the
release on the product's own cached features, against every penalty of a grid.

For each seed's federation (carved by `fedtl compare`'s scenario code; features from the
sites' caches, extracted on first use), each sub-federation ``SITESxIMAGES`` (the first
SITES sites, their first IMAGES training images), each epsilon and noise draw, the sites'
class sums are released as `common.privacy.oneshot` releases them (each site its own
noise at the run's multiplier for ``--head-method ridge``, or with ``--sums-noise
distributed`` its share of it), optionally denoised by the
public hull prior, and solved at each grid penalty, at the fixed one and at the rule's with
each ``--scales`` constant. Scored as `fedtl compare` scores: mean site held-out accuracy
over the pooled non-private model's. Prints a table per sub-federation and epsilon and a
summary, and writes JSON. Run it on a validation federation (`benchmarks/carve_public.py
... --start 500`), never on the images a table reports.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compare_runs import aligned
from common.config import RunConfig
from common.features.extraction import LazyBase
from common.features.model import predict_classes
from common.features.public_basis import run_basis
from common.privacy.hull import HullPrior, project_release
from common.privacy.oneshot import (class_sums, embed, noised, ridge_solution,
                                    summed_std, sums_std)
from common.privacy.penalty import noise_penalty
from common.privacy.release import sums_noise
from common.site import base_spec, load_simulated_site
from common.storage import write_json_atomically
from simulations.pooled import pooled_head
from simulations.simulate import prepare_sites

GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def mean_site(weights: np.ndarray, bias: np.ndarray, sites: list[tuple]) -> float:
    return float(np.mean([np.mean(predict_classes(x, [weights, bias],
                                                  num_classes=weights.shape[1],
                                                  head_width=0) == y)
                          for _, _, x, y in sites]))


def federation(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The seed's sites (features embedded in the public basis) and the public points."""
    cfg = RunConfig(dataset=args.dataset, max_per_class=args.max_per_class,
                    clients=args.clients, image_size=args.image_size, public=args.public,
                    seed=seed, head_method="ridge", sums_prior="public-hull")
    cfg, _, scenario = prepare_sites(cfg, plan=False)
    base = LazyBase.shared(base_spec(cfg), cfg.stats_cache)
    basis, points = run_basis(cfg, base)
    sites = [load_simulated_site(cfg, s, base) for s in scenario.sites]
    return {"basis": basis, "points": points, "classes": len(cfg.classes),
            "raw": [(s.train_x, s.train_y, s.test_x, s.test_y) for s in sites]}


def replay(args: argparse.Namespace) -> list[dict[str, Any]]:
    hull = args.prior == "public-hull"
    distributed = args.sums_noise == "distributed"
    rows = []
    for seed in args.seeds:
        fed = federation(args, seed)
        basis, k = fed["basis"], fed["classes"]
        variances = basis.variances.astype(np.float64)
        for spec in args.federations:
            count_sites, images = (int(v) for v in spec.split("x"))
            raw = [(x[:images], y[:images], tx, ty) for x, y, tx, ty in fed["raw"][:count_sites]]
            if len(raw) < count_sites:
                raise SystemExit(f"{spec}: the federation has only {len(fed['raw'])} sites")
            pooled = pooled_head(np.concatenate([r[0] for r in raw]),
                                 np.concatenate([r[1] for r in raw]), k)
            pooled_acc = mean_site(pooled[0], pooled[1], raw)
            sites = [(embed(x, basis), y, embed(tx, basis), ty) for x, y, tx, ty in raw]
            clean = [class_sums(z, y, k) for z, y, _, _ in sites]
            for epsilon in args.epsilons:
                multiplier = sums_noise(RunConfig(head_method="ridge", target_epsilon=epsilon,
                                                  accountant=args.accountant))
                # Distributed: each site adds 1/sites of the variance (SecAgg+ sums them).
                share = multiplier / np.sqrt(count_sites) if distributed else multiplier
                std = summed_std(sums_std(multiplier), count_sites, distributed)
                prior = HullPrior(fed["points"], sums_std(multiplier), distributed)
                for draw in range(args.draws):
                    rng = np.random.default_rng([seed, count_sites, images, int(epsilon * 10),
                                                 draw])
                    release = sum(noised(c, share, rng) for c in clean)
                    count = float(release[-1].sum())
                    solved = (project_release(release, prior, count_sites).release if hull
                              else release)

                    def ratio(penalty: float) -> float:
                        w, b = ridge_solution(solved, count, variances, penalty)
                        return mean_site(w, b, sites) / pooled_acc

                    rule = {str(s): noise_penalty(std, count, variances, hull, scale=s)
                            for s in args.scales}
                    rows.append({
                        "seed": seed, "federation": spec, "epsilon": epsilon, "draw": draw,
                        "pooled": pooled_acc, "grid": {str(p): ratio(p) for p in GRID},
                        "fixed": ratio(args.fixed), "rule_penalty": rule,
                        "rule": {s: ratio(p) for s, p in rule.items()}})
                    print(f"seed {seed} {spec} epsilon {epsilon:g} draw {draw}: fixed "
                          f"{rows[-1]['fixed']:.3f}, rule "
                          + ", ".join(f"{s} {v:.3f}" for s, v in rows[-1]["rule"].items()),
                          flush=True)
    return rows


def summarize(rows: list[dict[str, Any]], scales: list[str]) -> dict[str, Any]:
    """Per sub-federation and epsilon: the best grid penalty, the fixed one's and each rule's
    ratio (means over seeds and draws); overall: means and the worst loss against the best."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["federation"], row["epsilon"]), []).append(row)
    table, loss = [], {"fixed": [], **{s: [] for s in scales}}
    for (spec, epsilon), group in sorted(cells.items(), key=lambda c: (c[0][0], c[0][1])):
        grid = {p: float(np.mean([r["grid"][p] for r in group])) for p in group[0]["grid"]}
        best = max(grid, key=grid.get)
        cell = {"federation": spec, "epsilon": epsilon, "best_penalty": float(best),
                "best": grid[best], "fixed": float(np.mean([r["fixed"] for r in group])),
                "rule": {s: float(np.mean([r["rule"][s] for r in group])) for s in scales},
                "rule_penalty": {s: float(np.mean([r["rule_penalty"][s] for r in group]))
                                 for s in scales}}
        table.append(cell)
        loss["fixed"].append(cell["fixed"] - cell["best"])
        for s in scales:
            loss[s].append(cell["rule"][s] - cell["best"])
    best_mean = float(np.mean([c["best"] for c in table]))
    overall = {name: {"mean": best_mean + float(np.mean(v)), "worst_loss": float(min(v))}
               for name, v in loss.items()}
    return {"cells": table, "best_on_grid": best_mean, "overall": overall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a validation CIFAR-10 folder")
    parser.add_argument("--public", required=True, help="the public image folder")
    parser.add_argument("--max-per-class", type=int, default=300)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1,2,3", help="partitions (--seed)")
    parser.add_argument("--federations", default="5x480,3x480,5x160,2x240",
                        help="SITESxIMAGES sub-federations (first sites, first images)")
    parser.add_argument("--epsilons", default="1,2,3,5,8,13,20", help="per-site epsilons")
    parser.add_argument("--draws", type=int, default=2, help="noise draws per point")
    parser.add_argument("--prior", choices=("none", "public-hull"), default="none")
    parser.add_argument("--accountant", choices=("rdp", "pld"), default="rdp")
    parser.add_argument("--sums-noise", choices=("local", "distributed"), default="local",
                        help="each site's noise its own, or shares under SecAgg+")
    parser.add_argument("--fixed", type=float, default=8.0, help="the fixed penalty to beat")
    parser.add_argument("--scales", default="11", help="rule constants to try")
    parser.add_argument("--json", required=True, help="where to write the figures")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.federations = args.federations.split(",")
    args.epsilons = [float(e) for e in args.epsilons.split(",")]
    args.scales = [float(s) for s in args.scales.split(",")]
    scales = [str(s) for s in args.scales]
    rows = replay(args)
    summary = summarize(rows, scales)
    header = ["federation", "epsilon", "best (penalty)", f"fixed {args.fixed:g}",
              *[f"rule x{s}" for s in scales]]
    lines = [header] + [[c["federation"], f"{c['epsilon']:g}",
                         f"{c['best']:.3f} ({c['best_penalty']:g})", f"{c['fixed']:.3f}",
                         *[f"{c['rule'][s]:.3f} ({c['rule_penalty'][s]:.2g})" for s in scales]]
                        for c in summary["cells"]]
    print("\n".join(aligned(lines, left_columns=2)))
    print(f"mean over cells, mean site / pooled: best on the grid {summary['best_on_grid']:.3f}; "
          + "; ".join(f"{name if name == 'fixed' else 'rule x' + name} {o['mean']:.3f} "
                      f"(worst {100 * o['worst_loss']:+.1f} points against the best)"
                      for name, o in summary["overall"].items()))
    write_json_atomically(Path(args.json), {"args": {k: v for k, v in vars(args).items()},
                                            "rows": rows, "summary": summary})
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
