"""How a dataset is split among simulated sites, and each site's held-out split."""

from __future__ import annotations

import numpy as np

from common.errors import ConfigError


def iid_partition(num_items: int, num_sites: int, seed: int) -> list[np.ndarray]:
    """Shuffle the items and deal them out in near-equal, sorted shares."""
    if num_sites > num_items:
        raise ConfigError(f"--clients {num_sites} exceeds the {num_items} images available")
    order = np.random.default_rng(seed).permutation(num_items)
    return [np.sort(share) for share in np.array_split(order, num_sites)]


def dirichlet_partition(labels: np.ndarray, num_sites: int, alpha: float, seed: int,
                        min_per_site: int = 10, max_tries: int = 100) -> list[np.ndarray]:
    """Label skew: each class is shared among sites in Dirichlet(alpha) proportions.

    Small ``alpha`` gives each site a few dominant classes (Hsu et al., arXiv 1909.06335).
    Draws again (up to ``max_tries``) until every site has at least ``min_per_site`` items.
    """
    if alpha <= 0:
        raise ConfigError(f"--alpha must be positive. Found {alpha}.")
    if num_sites * min_per_site > len(labels):
        raise ConfigError(
            f"{len(labels)} images cannot give {num_sites} sites {min_per_site} each"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        shares: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            proportions = rng.dirichlet(np.full(num_sites, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for site, part in enumerate(np.split(members, cuts)):
                shares[site].append(part)
        parts = [np.sort(np.concatenate(s)) for s in shares]
        if min(len(p) for p in parts) >= min_per_site:
            return parts
    raise ConfigError(
        f"Dirichlet alpha={alpha} left a site with fewer than {min_per_site} images in "
        f"{max_tries} draws; raise --alpha or lower --clients"
    )


def holdout_split(num_items: int, fraction: float, seed: int | tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) positions; at least one of each when there are two or more items."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"held-out fraction must be in (0, 1). Found {fraction}.")
    if num_items < 2:
        raise ConfigError(f"a site needs at least 2 images to hold some out; it has {num_items}")
    order = np.random.default_rng(seed).permutation(num_items)
    n_test = min(max(1, int(round(num_items * fraction))), num_items - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])
