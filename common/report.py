"""The run report (``report.json``) and its plots, written only when a run completes."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.storage import write_atomically, write_json_atomically

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


def write_report(out: Path, report: dict[str, Any]) -> Path:
    """Plots first, then ``report.json`` last, so a report always has its plots beside it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rounds = report["rounds"]
    numbers = [r["round"] for r in rounds]
    series = {"global head, mean over sites (held-out)": [r["accuracy"] for r in rounds],
              "global head, worst site": [r.get("worst_site_accuracy") for r in rounds]}
    if any(r.get("unseen_accuracy") is not None for r in rounds):
        series["global head, unseen-domain site"] = [r.get("unseen_accuracy") for r in rounds]
    plot_series(out / "accuracy.png", numbers, series, "accuracy", "Accuracy per round")
    final = report["final"]
    bars = {"global head": final.get("per_site_global_accuracy") or {}}
    if final.get("per_site_personal_accuracy"):
        bars["own (personalized) head"] = final["per_site_personal_accuracy"]
    if bars["global head"]:
        plot_site_bars(out / "sites.png", bars, "Final accuracy per site (held-out)")
    plot_series(out / "epsilon.png", numbers, {"max epsilon over sites":
                [r["epsilon_max"] for r in rounds]}, "epsilon",
                f"Privacy spent per round (delta={report['final']['delta']})",
                hline=report["settings"].get("target-epsilon") if report["settings"].get("dp") else None)
    path = out / "report.json"
    write_json_atomically(path, report, mode=0o644)
    return path


def plot_series(path: Path, x: Sequence[int], series: dict[str, Sequence[float | None]],
                ylabel: str, title: str, hline: float | None = None,
                dashed: Sequence[str] = ()) -> None:
    """A line plot of one or more per-round series (``dashed`` ones dashed), saved atomically
    as PNG."""
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
        ax.axhline(hline, color="grey", linestyle="--", label="budget")
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to label when sites released no figures
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda handle: fig.savefig(handle, format="png"), mode=0o644)
    plt.close(fig)


def plot_site_bars(path: Path, groups: dict[str, dict[str, float]], title: str) -> None:
    """Grouped bars: one group per site, one bar per model (e.g. global vs own head)."""
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
        ax.bar(xs, [values.get(s, np.nan) for s in sites], width, label=label)
    ax.set_xticks(np.arange(len(sites)), sites, rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda handle: fig.savefig(handle, format="png"), mode=0o644)
    plt.close(fig)
