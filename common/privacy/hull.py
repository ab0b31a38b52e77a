"""The public hull prior: the released class sums denoised with the public images' features.

A class's mean feature is an average of images like the public ones, so it lies in the convex
hull of the public features (in the release's basis) when the public images look like the
sites'. The noise of the release pushes the noisy mean out of that hull in most of its 256
directions; the nearest point of the hull removes that part. It is post-processing of the DP
release (free in privacy), done on the server. It is a prior, and a wrong one where the
public images look unlike the sites': there the noisy mean lies several noise norms from the
hull, and the class is left as released (measured: 0.5-0.9 noise norms on CIFAR-10 with the
public CIFAR-10 folder, 2.3-7.1 on PACS with the same folder; docs/private-accuracy.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from common.privacy.oneshot import summed_std

# A class whose noisy mean lies further than this many noise norms from the hull is kept as
# released: noise alone puts it within ~1 (0.5-0.9 measured), a foreign domain 2-7 away.
MAX_DISTANCE = 1.0
# The weight of the row that makes the NNLS weights sum to one (a convex, not conic,
# combination); 10 and 100 gave the same heads to three digits.
_SIMPLEX_WEIGHT = 30.0


@dataclass(frozen=True)
class HullPrior:
    """The embedded public features (n, K) and the planned noise std of one site's release
    on each entry of its sums (``distributed``: the sites' noise adds up to one site's)."""

    points: np.ndarray
    site_std: float
    distributed: bool = False

    def total_std(self, sites: int) -> float:
        return summed_std(self.site_std, sites, self.distributed)


@dataclass(frozen=True)
class Projection:
    release: np.ndarray  # (K + 1, classes): sums (projected where kept), counts as released
    distances: np.ndarray  # per class: distance from the hull in noise norms

    @property
    def projected(self) -> np.ndarray:
        """Per class: whether its sums were replaced (it lay within `MAX_DISTANCE`)."""
        return self.distances <= MAX_DISTANCE

    def summary(self, classes: tuple[str, ...] | list[str]) -> str:
        parts = [f"{name} {d:.2f}{'' if kept else ' (kept as released)'}"
                 for name, d, kept in zip(classes, self.distances, self.projected)]
        return ", ".join(parts)


def project_release(release: np.ndarray, prior: HullPrior, sites: int) -> Projection:
    """Each class's noisy mean (sums / noised count) replaced by its nearest point in the
    hull of ``prior.points``, where it lies within `MAX_DISTANCE` noise norms of it."""
    release = np.asarray(release, dtype=np.float64)
    sums, counts = release[:-1], np.maximum(release[-1], 1.0)
    points = np.asarray(prior.points, dtype=np.float64)
    # scipy has no projection onto the hull of points; NNLS with one heavily weighted row
    # asking the weights to sum to one is that projection.
    system = np.vstack([points.T, _SIMPLEX_WEIGHT * np.ones((1, len(points)))])
    target_tail = np.array([_SIMPLEX_WEIGHT])
    noise_norm = prior.total_std(sites) * np.sqrt(sums.shape[0])
    out, distances = sums.copy(), np.empty(sums.shape[1])
    for k in range(sums.shape[1]):
        mean = sums[:, k] / counts[k]
        weights, _ = nnls(system, np.concatenate([mean, target_tail]), maxiter=50 * len(points))
        nearest = points.T @ weights
        distances[k] = np.linalg.norm(mean - nearest) / (noise_norm / counts[k])
        if distances[k] <= MAX_DISTANCE:
            out[:, k] = counts[k] * nearest
    return Projection(np.vstack([out, release[-1:]]), distances)
