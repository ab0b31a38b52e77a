"""End to end: a domain-shift scenario compared with its pooled reference, with personal heads.

Real ImageNet weights, Flower's simulation engine, the bundled digits seen by each site
through its own acquisition shift, with label skew, each centring its features on its own
noised mean (``--feature-centring site``); the personal heads are built from each site's
one-shot release (``--personal-tuning ridge``; the DP fine-tuning ones run in the
deployment test).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

ROUNDS = 3


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("compare") / "domain"
    state = tmp_path_factory.mktemp("state")
    done = subprocess.run(
        # pooled and local: the non-private references, no second federation (CI time;
        # FedAdam's server step is tests/test_strategy.py's).
        [sys.executable, "-m", "common.cli", "compare", "--variants",
         "pooled,local,fedprox+personalize", "--dataset", "digits", "--clients", "3",
         "--partition", "domain", "--alpha", "0.5", "--rounds", str(ROUNDS),
         "--target-epsilon", "4", "--batch-size", "128", "--personal-tuning", "ridge",
         "--feature-centring", "site",
         "--out", str(out),
         "--state", str(state)],
        capture_output=True, text=True, timeout=1500)
    return out, done


def test_the_comparison_report_has_every_variant_with_per_site_figures_and_plots(
        comparison) -> None:
    out, done = comparison
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["variants"]) == {"pooled", "local", "fedprox+personalize"}
    for name, variant in report["variants"].items():
        assert set(variant["per_site_accuracy"]) == {"site-0", "site-1", "site-2"}, name
        assert variant["worst_site_accuracy"] == min(variant["per_site_accuracy"].values())
        # Ten classes: chance is 0.1; the worst site holds ~90 held-out images.
        assert variant["mean_site_accuracy"] > 0.25, name
        assert variant["worst_site_accuracy"] > 0.12, name
        assert variant["unseen_domain_accuracy"] is not None
    private = report["variants"]["fedprox+personalize"]
    assert private["max_epsilon"] <= 4.0 + 1e-6
    assert [r["round"] for r in private["rounds"]] == list(range(1, ROUNDS + 1))
    pooled, local = report["variants"]["pooled"], report["variants"]["local"]
    assert pooled["max_epsilon"] is None and local["max_epsilon"] is None  # non-private
    # Each site's own model of its own label mix, not the pooled one scored three times.
    assert local["per_site_accuracy"] != pooled["per_site_accuracy"]
    assert local["unseen_domain_accuracy"] == pooled["unseen_domain_accuracy"]
    for plot in ("accuracy.png", "sites.png", "epsilon.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert "worst site" in done.stdout
    domains = {site["domain"] for site in report["scenario"].values()}
    assert len(domains) == 4  # three training sites and the unseen one, each its own shift


def test_each_run_reports_its_strategy_sites_and_the_unseen_domain(comparison) -> None:
    out, done = comparison
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "fedprox+personalize" / "report.json").read_text())
    assert run["settings"]["strategy"] == "fedprox" and run["final"]["strategy"] == "fedprox"
    final = run["final"]
    assert set(final["per_site_global_accuracy"]) == {"site-0", "site-1", "site-2"}
    assert 0 <= final["unseen_domain_accuracy"] <= 1
    assert all(r["unseen_accuracy"] is not None and r["worst_site_accuracy"] is not None
               for r in run["rounds"])
    assert run["sites"]["unseen-domain"]["trains"] is False
    assert set(run["sites"]) == {"site-0", "site-1", "site-2", "unseen-domain"}


def test_personal_heads_are_kept_at_each_site_within_the_same_budget(comparison) -> None:
    from common.personal import load_head

    out, done = comparison
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = out / "fedprox+personalize"
    run = json.loads((run_dir / "report.json").read_text())
    final = run["final"]
    assert final["personalized"] is True and run["settings"]["proximal-mu"] > 0
    assert set(final["per_site_personal_accuracy"]) == {"site-0", "site-1", "site-2"}
    assert final["per_site_accuracy"] == final["per_site_personal_accuracy"]
    # The release and the rounds spend the budget; the personal heads spend nothing more.
    assert all(3.9 < eps <= 4.0 + 1e-6 for eps in final["epsilon"].values())
    for site in ("site-0", "site-1", "site-2"):
        ledger = json.loads((run_dir / "sites" / site / "privacy-ledger.json").read_text())
        assert all(r["epsilon"] <= 4.0 + 1e-6 for r in ledger["runs"].values())
        assert all(e["kind"] != "personal" for r in ledger["runs"].values()
                   for e in r["events"])
        # One feature-sum release per run, charged, and its mean kept for every request.
        (entry,) = ledger["runs"].values()
        assert [e["kind"] for e in entry["events"]].count("centring") == 1
        (means,) = list((run_dir / "sites" / site / "centring").iterdir())
        assert np.load(means / "mean.npy").shape == (512,)
        heads = list((run_dir / "sites" / site / "personal").iterdir())
        assert len(heads) == 1 and (heads[0] / "model.keras").stat().st_size > 0
        assert (heads[0] / "own_release.npz").is_file()
        weights = load_head(heads[0], [(512, 10), (10,)])
        assert weights is not None and np.all(np.isfinite(weights[0]))
