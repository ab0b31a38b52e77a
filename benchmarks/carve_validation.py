"""Make a validation federation from a `--partition folders` dataset's training images only.

`fedtl simulate --partition folders` holds out 20 % of each site folder (`--holdout`, seed
`--seed`) and scores the run there. Tuning on those figures would select on the test set.
This links, per site folder, only the images the product trains on into OUT, keeping the
layout; a run on OUT then carves its own 20 % out of them to tune on, and the held-out
images of the real run are never seen. Links, not copies; OUT is a run output (never commit
it).

    python benchmarks/carve_validation.py ../shared/datasets/pacs/train runs/pacs-validation
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from common.config import RunConfig
from common.data.scenario import build_scenario, site_folders


def carve(source: Path, out: Path, holdout: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Link each site folder's training images (the product's split) into ``out``; returns
    how many each site folder gave."""
    cfg = RunConfig(dataset=str(source), partition="folders", holdout=holdout, seed=seed,
                    clients=len(site_folders(str(source))))
    linked: dict[str, int] = {}
    for site in build_scenario(cfg).sites:  # the product's sites, with their split seeds
        # A skipped (unreadable) image would shift the positions: every image must read.
        train = site.training_images(cfg.holdout)
        for i in train:
            relative = Path(site.listing.items[i])
            link = out / site.name / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink((Path(site.listing.root) / relative).resolve(), link)
        linked[site.name] = len(train)
    return linked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with one folder per site")
    parser.add_argument("out", type=Path, help="validation federation to create")
    parser.add_argument("--holdout", type=float, default=0.2, help="the runs' --holdout")
    parser.add_argument("--seed", type=int, default=0, help="the runs' --seed")
    args = parser.parse_args()
    for site, count in carve(args.source, args.out, args.holdout, args.seed).items():
        print(f"{site}: {count} training images linked into {args.out / site}")


if __name__ == "__main__":
    main()
