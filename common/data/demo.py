"""The bundled digits written as site image folders, to try a deployment without real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common.data.images import _digits_arrays
from common.errors import ConfigError
from common.data.partition import PartitionSpec, partition


def write_demo_sites(out: Path, sites: int, seed: int = 0) -> list[Path]:
    """``out/site-1`` ... ``out/site-N``, each with one PNG folder per digit (an IID share)."""
    if sites < 1:
        raise ConfigError(f"sites must be at least 1. Found {sites}.")
    out = Path(out)
    folders = [out / f"site-{i + 1}" for i in range(sites)]
    existing = [str(f) for f in folders if f.exists()]
    if existing:
        raise ConfigError(f"{existing} already exist; choose another --out")
    images, labels = _digits_arrays()
    grey = (images * (255.0 / 16.0)).round().astype(np.uint8)
    for folder, share in zip(folders, partition(labels, PartitionSpec(sites, seed=seed)), strict=True):
        for i in share:
            target = folder / str(labels[i])
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grey[i]).save(target / f"{i:04d}.png")
    return folders
