"""Make a public image folder for the one-shot head from images no simulated site uses.

`fedtl simulate --max-per-class N` gives the sites the first N images of each class (sorted
file order); this links images FROM..FROM+COUNT of each class into OUT, so the public
statistics come from the same kind of images without touching the sites' own. Links, not
copies: nothing is duplicated, and OUT is a run output (never commit it).

    python benchmarks/carve_public.py ../shared/datasets/cifar10/train runs/public-cifar \\
        --start 4000 --count 200
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def carve(source: Path, out: Path, start: int, count: int) -> int:
    """Link images start..start+count of every class folder of ``source`` into ``out``."""
    linked = 0
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.is_file())[start:start + count]
        if not files:
            raise SystemExit(f"{class_dir} has no images from index {start}")
        (out / class_dir.name).mkdir(parents=True, exist_ok=True)
        for f in files:
            link = out / class_dir.name / f.name
            if not link.exists():
                os.symlink(f.resolve(), link)
            linked += 1
    return linked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="dataset folder with one folder per class")
    parser.add_argument("out", type=Path, help="public folder to create")
    parser.add_argument("--start", type=int, default=4000,
                        help="first image index taken from each class (after the sites')")
    parser.add_argument("--count", type=int, default=200, help="images per class")
    args = parser.parse_args()
    print(f"{carve(args.source, args.out, args.start, args.count)} images linked into "
          f"{args.out}")


if __name__ == "__main__":
    main()
