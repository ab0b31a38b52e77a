"""Frozen-base features of a site's images, computed once and cached in the site's state folder."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data import Listing, load_images
from common.errors import WeightsError
from common.model import BaseSpec, FrozenBase, base_fingerprint, build_base
from common.storage import write_atomically

EXTRACT_BATCH = 64


@dataclass(frozen=True)
class SiteFeatures:
    """Features of the images a site could read, their labels and extraction facts."""

    features: np.ndarray
    labels: np.ndarray
    skipped: tuple[str, ...]
    seconds: float
    cache_hit: bool


class LazyBase:
    """Builds the frozen base on first use only: a warm cache never pays for it."""

    def __init__(self, spec: BaseSpec, fingerprint: str) -> None:
        self.spec = spec
        self.fingerprint = fingerprint
        self._base: FrozenBase | None = None

    @classmethod
    def for_spec(cls, spec: BaseSpec) -> LazyBase:
        """A lazy base whose expected fingerprint is that of ``spec`` on this machine."""
        return cls(spec, base_fingerprint(spec))

    def get(self) -> FrozenBase:
        if self._base is None:
            base = build_base(self.spec)
            if base.fingerprint != self.fingerprint:
                raise WeightsError(
                    f"the base built from {self.spec.weights!r} has fingerprint "
                    f"{base.fingerprint[:12]}, not the federation's {self.fingerprint[:12]}")
            self._base = base
        return self._base


def cache_key(fingerprint: str, listing: Listing, skip_bad: bool) -> str:
    """Changes whenever the base, an image's identity or bytes, or the skip policy change."""
    digest = hashlib.sha256(f"{fingerprint}|{listing.source}|{skip_bad}".encode())
    for item, stamp in zip(listing.items, listing.stamps, strict=True):
        digest.update(f"|{item}|{stamp}".encode())
    return digest.hexdigest()[:32]


def extract(base: FrozenBase, pixels: np.ndarray) -> np.ndarray:
    """Run the frozen base over uint8 images in batches; float32 features."""
    return base.model.predict(pixels.astype(np.float32), batch_size=EXTRACT_BATCH,
                              verbose=0).astype(np.float32)


def site_features(base: LazyBase, listing: Listing, cache_dir: Path | None,
                  *, skip_bad: bool = False) -> SiteFeatures:
    """Features of ``listing`` from ``cache_dir`` if present, else computed and stored there.

    The VGG16 base is only built on a cache miss.
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"features-{cache_key(base.fingerprint, listing, skip_bad)}.npz"
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as cached:
                    return SiteFeatures(cached["features"], cached["labels"],
                                        tuple(str(s) for s in cached["skipped"]), 0.0, True)
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a damaged cache entry is recomputed
    start = time.perf_counter()
    images = load_images(listing, base.spec.image_size, skip_bad=skip_bad)
    features = extract(base.get(), images.pixels)
    seconds = time.perf_counter() - start
    if path is not None:
        arrays = {"features": features, "labels": images.labels,
                  "skipped": np.asarray(images.skipped, dtype=str)}
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, lambda handle: np.savez(handle, **arrays))
    return SiteFeatures(features, images.labels, tuple(images.skipped), seconds, False)
