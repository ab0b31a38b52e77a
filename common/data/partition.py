"""How a dataset is split among simulated sites, and each site's held-out split.

The splitting itself is Flower Datasets' partitioners (IID, Dirichlet label skew, sizes, and
inner-Dirichlet for label skew at given sizes); fedtl only turns labels into the table they
expect and draws the site sizes for quantity skew.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError


@dataclass(frozen=True)
class PartitionSpec:
    """Which skews a split has: label skew (Dirichlet ``label_alpha``) and quantity skew
    (site sizes in Dirichlet ``size_alpha`` proportions); 0 turns a skew off."""

    sites: int
    label_alpha: float = 0.0
    size_alpha: float = 0.0
    seed: int = 0
    min_per_site: int = 10

    def __post_init__(self) -> None:
        if self.label_alpha < 0 or self.size_alpha < 0:
            raise ConfigError(f"--alpha and --size-alpha must be >= 0 (0: no skew). Found "
                              f"{self.label_alpha} and {self.size_alpha}.")
        if self.sites < 1:
            raise ConfigError(f"--clients must be at least 1. Found {self.sites}.")


def partition(labels: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """Sorted item positions of each site; disjoint, covering every item, deterministic."""
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        InnerDirichletPartitioner,
        SizePartitioner,
    )

    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    skewed = spec.label_alpha > 0 or spec.size_alpha > 0
    # Every site holds some images out (`holdout_split`): an even split needs two per site,
    # a random one room for its minimum.
    needed = spec.min_per_site if skewed else 2
    if spec.sites * needed > n:
        raise ConfigError(f"{n} images cannot give --clients {spec.sites} sites {needed} "
                          "images each (one to train on and one to hold out at least); "
                          "lower --clients")
    table = Dataset.from_dict({"row": np.arange(n), "label": labels})
    if spec.label_alpha == 0:
        # IID and size partitioners deal out contiguous rows: shuffle first, as
        # flwr_datasets.FederatedDataset does.
        table = table.shuffle(seed=spec.seed)
    if spec.size_alpha > 0:
        sizes = quantity_sizes(n, spec.sites, spec.size_alpha, spec.seed, spec.min_per_site)
        partitioner = (SizePartitioner(sizes) if spec.label_alpha == 0 else
                       InnerDirichletPartitioner(sizes, partition_by="label",
                                                 alpha=float(spec.label_alpha), seed=spec.seed))
    elif spec.label_alpha > 0:
        partitioner = DirichletPartitioner(
            num_partitions=spec.sites, partition_by="label", alpha=float(spec.label_alpha),
            min_partition_size=spec.min_per_site, seed=spec.seed)
    else:
        partitioner = IidPartitioner(spec.sites)
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its progress warnings, not errors
            return [np.sort(np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64))
                    for i in range(spec.sites)]
    except ValueError as exc:  # e.g. no Dirichlet draw gave every site its minimum
        raise ConfigError(f"cannot split {n} images among {spec.sites} sites with --alpha "
                          f"{spec.label_alpha} / --size-alpha {spec.size_alpha}: {exc}; raise "
                          "the alphas or lower --clients") from exc


# Flower Datasets' size partitioners take sizes, or fixed linear/square/exponential shapes;
# a Dirichlet draw of proportions (NIID-Bench's quantity skew) is the tunable one.
def quantity_sizes(num_items: int, num_sites: int, alpha: float, seed: int,
                   min_per_site: int = 10) -> list[int]:
    """Site sizes summing to ``num_items``: ``min_per_site`` each, the rest in Dirichlet
    (``alpha``) proportions (small alpha: a few large sites and many small ones)."""
    if alpha <= 0:
        raise ConfigError(f"--size-alpha must be positive for quantity skew. Found {alpha}.")
    spare = num_items - num_sites * min_per_site
    if spare < 0:
        raise ConfigError(f"{num_items} images cannot give {num_sites} sites "
                          f"{min_per_site} images each; lower --clients")
    rng = np.random.default_rng([seed, 0x51CE])
    extra = rng.multinomial(spare, rng.dirichlet(np.full(num_sites, alpha)))
    return [int(min_per_site + e) for e in extra]


def holdout_split(num_items: int, fraction: float, seed: int | tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) positions; at least one of each when there are two or more items."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"held-out fraction must be in (0, 1). Found {fraction}.")
    if num_items < 2:
        raise ConfigError(f"a site needs at least 2 images to hold some out; it has {num_items}")
    order = np.random.default_rng(seed).permutation(num_items)
    n_test = min(max(1, int(round(num_items * fraction))), num_items - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])
