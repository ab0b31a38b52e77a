"""How far a run's noised held-out figures may be off: one reading of a report, shared by
the run's summary, the model card and `fedtl compare`, so that none of them prints a noised
figure without its error.

A site that releases its held-out accuracy as Gaussian-noised (correct, total) gives a
figure whose one-std error is `noisy_accuracy_std` (noise over held-out size): on a few
dozen images it is noise, and a mean over sites inherits the sites' errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.privacy.release import NOISED_ACCURACY, noisy_accuracy_std, played_settings
from common.report import Report

# A figure whose one-std error is this or more tells its reader little (README: What leaves
# a site, on noised figures and held-out sizes).
LITTLE = 0.10
NOISE = 0.50  # more than a figure spread uniformly over [0, 1] (0.29)


@dataclass(frozen=True)
class NoisedFigures:
    """The sites whose figures were noised, their held-out sizes and each figure's one-std
    error, as of the last round that recorded held-out sizes."""

    noise: float  # std of the noise on correct and on total, in images
    held_out: dict[str, int]  # noised sites only
    std: dict[str, float]  # one-std error of each noised site's figure
    sites: int  # sites with a figure in that round (noised or not)

    @property
    def mean_site_std(self) -> float:
        """One-std error of the mean over all the round's sites from the noise alone (exact
        figures add none; the sites' noise is independent)."""
        return math.sqrt(sum(s * s for s in self.std.values())) / max(self.sites, 1)

    def describe(self) -> str:
        """One line for a reader of the figures: how far each may be off, and whether at
        that size they measure the model at all."""
        stds, sizes = list(self.std.values()), sorted(self.held_out.values())
        whose = ("held-out figures are" if len(self.held_out) == self.sites else
                 f"the held-out figures of {len(self.held_out)} of {self.sites} sites are")
        low, high = _points(min(stds)), _points(max(stds))
        line = (f"{whose} noised (std {self.noise:g} images on correct and on total): "
                f"each site's may be off by about ±{low}" + (f"-{high}" if high != low else "")
                + f" points (one std) on its {sizes[0]}"
                + (f"-{sizes[-1]}" if sizes[-1] != sizes[0] else "") + " held-out images"
                + (f", the mean over sites by about ±{_points(self.mean_site_std)}"
                   if self.sites > 1 else ""))
        hint = " (larger held-out splits, --holdout, would help)"
        if max(stds) >= NOISE:
            return line + "; at that size they are noise, not a measure of the model" + hint
        if max(stds) >= LITTLE:
            return line + "; at that size they say little about the model" + hint
        return line


def noised_figures(report: Report) -> NoisedFigures | None:
    """The report's noised held-out figures and their errors; None when no site's were
    noised (exact figures, none released, or a report from before sizes were recorded)."""
    if NOISED_ACCURACY not in report.guarantees.record_level.covers:
        return None
    last = next((r for r in reversed(report.rounds) if r.site_held_out), None)
    noise = report.settings.get("metric-noise")
    if last is None or isinstance(noise, bool) or not isinstance(noise, int | float):
        return None
    tightened = report.guarantees.record_level.tightened_by_sites
    # A site's policy can tighten the run's figure mode to noised (never the other way).
    held_out = {s: n for s, n in last.site_held_out.items()
                if played_settings(report.settings, tightened.get(s, [])).get("site-metrics")
                == "noised"}
    if not held_out:
        return None
    std = {s: noisy_accuracy_std(last.site_accuracy.get(s, 0.5), n, noise)
           for s, n in held_out.items()}
    return NoisedFigures(noise=float(noise), held_out=held_out, std=std,
                         sites=len(last.site_held_out))


def _points(std: float) -> str:  # figures are clipped to [0, 1]: beyond 50 is all noise
    return "50+" if std >= NOISE else f"{100 * std:.0f}"
