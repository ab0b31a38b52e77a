"""What each simulated site holds: its share of the data and the acquisition shift it sees.

One function builds the whole scenario from the run config, so the simulation driver and
every worker process agree on it without sending data around.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import RunConfig
from common.data.images import Listing, check_same_classes, list_dataset
from common.errors import DataError
from common.data.partition import PartitionSpec, holdout_split, partition
from common.data.shift import Shift, site_shifts

UNSEEN = "unseen-domain"


@dataclass(frozen=True)
class SimulatedSite:
    """A virtual site: its images, the shift it sees them through, its held-out seed."""

    name: str
    listing: Listing
    shift: Shift | None
    holdout_seed: tuple[int, ...]

    def training_images(self, holdout: float) -> np.ndarray:
        """Positions in ``listing`` of the images the site trains on: the split
        `common.site.load_site` makes when every image is readable."""
        return holdout_split(len(self.listing), holdout, self.holdout_seed)[0]

    def describe(self) -> dict[str, Any]:
        """The site as the report shows it (no image names: counts only)."""
        counts = np.bincount(self.listing.labels, minlength=len(self.listing.classes))
        return {"images": len(self.listing),
                "domain": self.shift.name if self.shift else "as recorded",
                "source": self.listing.source,
                "label_counts": dict(zip(self.listing.classes, counts.tolist(), strict=True))}


@dataclass(frozen=True)
class Scenario:
    """The federation's training sites and, with domain shift, a site nobody trains on."""

    classes: tuple[str, ...]
    sites: tuple[SimulatedSite, ...]
    unseen: SimulatedSite | None

    def describe(self) -> dict[str, Any]:
        out = {site.name: site.describe() for site in self.sites}
        if self.unseen is not None:
            out[self.unseen.name] = {**self.unseen.describe(), "trains": False}
        return out


def build_scenario(cfg: RunConfig) -> Scenario:
    """The sites of ``cfg``'s simulation, deterministic in ``cfg.seed``."""
    if cfg.partition == "folders":
        return _folder_sites(cfg)
    listing = list_dataset(cfg.dataset, cfg.max_per_class)
    if cfg.classes:
        check_same_classes(cfg.classes, listing.classes, f"the simulated dataset {cfg.dataset}")
    shifts: list[Shift | None] = [None] * cfg.clients
    unseen = None
    if cfg.partition == "domain":
        trained, unseen_shift = site_shifts(cfg.clients, cfg.shift_severity, cfg.seed)
        shifts = list(trained)
        # The unseen site gets about as many images as a training site holds out.
        n_unseen = max(10, round(len(listing) * cfg.holdout / (cfg.clients + 1)))
        order = np.random.default_rng([cfg.seed, 0x0D0]).permutation(len(listing))
        unseen = SimulatedSite(UNSEEN, listing.subset(np.sort(order[:n_unseen])), unseen_shift,
                               (cfg.seed, -1))
        listing = listing.subset(np.sort(order[n_unseen:]))
    parts = partition(listing.labels, PartitionSpec(
        sites=cfg.clients, label_alpha=cfg.label_alpha, size_alpha=cfg.size_alpha,
        seed=cfg.seed))
    sites = tuple(SimulatedSite(f"site-{i}", listing.subset(p), shifts[i], (cfg.seed, i))
                  for i, p in enumerate(parts))
    return Scenario(listing.classes, sites, unseen)


def site_folders(dataset: str) -> list[Path]:
    """The per-site folders of a ``--partition folders`` dataset (one folder per site)."""
    root = Path(dataset).expanduser()
    if not root.is_dir():
        raise DataError(f"sites folder {root} does not exist or is not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"sites folder {root} has no site subfolders "
                        f"(expected {root}/<site>/<class>/*.jpg)")
    return folders


def _folder_sites(cfg: RunConfig) -> Scenario:
    folders = site_folders(cfg.dataset)
    names = [f.name for f in folders]
    if cfg.unseen_site and cfg.unseen_site not in names:
        raise DataError(f"--unseen-site {cfg.unseen_site!r} is not a site folder of "
                        f"{cfg.dataset}; its site folders are {names}")
    training = len(folders) - bool(cfg.unseen_site)
    if training != cfg.clients:
        raise DataError(f"{cfg.dataset} holds {len(folders)} site folders"
                        + (f", {training} of them training," if cfg.unseen_site else "")
                        + f" but the run has {cfg.clients} clients; set --clients {training}")
    listings = [list_dataset(str(f), cfg.max_per_class) for f in folders]
    classes = cfg.classes or listings[0].classes
    for folder, listing in zip(folders, listings, strict=True):
        check_same_classes(classes, listing.classes, f"site folder {folder}")
    sites = [SimulatedSite(folder.name, listing, None, (cfg.seed,))
             for folder, listing in zip(folders, listings, strict=True)]
    unseen = next((s for s in sites if s.name == cfg.unseen_site), None)
    return Scenario(classes, tuple(s for s in sites if s is not unseen), unseen)
