"""Frozen-base features of a site's images: extracted once per image, then read from its cache."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.features.augment import augmented, view_name
from common.data.dicom import DicomWindow
from common.data.images import Listing, content_digests, load_images
from common.errors import DataError, WeightsError
from common.features.cache import DigestMemo, FeatureCache, namespace, private_dir
from common.features.model import BaseSpec, FrozenBase, base_fingerprint, build_base
from common.data.shift import Shift

EXTRACT_BATCH = 64
CHUNK = 1024  # images per shard: an interrupted extraction loses at most this many
PROGRESS_ROWS = 256  # images per predict call: the progress line moves every few seconds

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SiteFeatures:
    """Features of the images a site could read, their labels and extraction facts.

    ``seconds`` is the time spent extracting (0.0 when every image came from the cache).
    ``views`` holds ``augment_views`` augmented copies (K x n x d; K may be 0).
    """

    features: np.ndarray
    views: np.ndarray
    labels: np.ndarray
    skipped: tuple[str, ...]
    seconds: float
    extracted: int

    @property
    def cache_hit(self) -> bool:
        return self.extracted == 0


class LazyBase:
    """Builds the frozen base on first use only: a warm cache never pays for it.

    ``stats_cache`` keeps the base's public statistics across processes (see `build_base`).
    """

    def __init__(self, spec: BaseSpec, fingerprint: str, stats_cache: Path | None = None) -> None:
        self.spec = spec
        self.fingerprint = fingerprint
        self.stats_cache = stats_cache
        self._base: FrozenBase | None = None

    @classmethod
    def for_spec(cls, spec: BaseSpec, stats_cache: Path | None = None) -> LazyBase:
        """A lazy base whose expected fingerprint is that of ``spec`` on this machine."""
        return cls(spec, _fingerprint(spec.for_saving), stats_cache)

    @classmethod
    def shared(cls, spec: BaseSpec, stats_cache: Path | None = None) -> LazyBase:
        """This process's one lazy base for ``spec``: built at most once per worker, whatever
        folder each caller keeps public statistics in (the base is the same; the first
        folder named serves the build)."""
        base = _shared_base(spec)
        if base.stats_cache is None:
            base.stats_cache = stats_cache
        return base

    def get(self) -> FrozenBase:
        if self._base is None:
            base = build_base(self.spec, self.stats_cache)
            if base.fingerprint != self.fingerprint:
                raise WeightsError(
                    f"the base built from {self.spec.weights!r} has fingerprint "
                    f"{base.fingerprint[:12]}, not the federation's {self.fingerprint[:12]}")
            self._base = base
        return self._base


# Simulated sites share worker processes; building the base (with its public statistics)
# costs ~10 s, too much to repeat for each site a worker serves.
@functools.lru_cache(maxsize=4)
def _shared_base(spec: BaseSpec) -> LazyBase:
    return LazyBase.for_spec(spec)


# Reading and hashing the weights costs ~1 s; a simulated site's worker asks for every message.
@functools.lru_cache(maxsize=4)
def _fingerprint(spec: BaseSpec) -> str:
    return base_fingerprint(spec)


def extract(base: FrozenBase, pixels: np.ndarray,
            on_rows: Callable[[int], None] | None = None) -> np.ndarray:
    """Run the frozen base over uint8 images in batches; float32 features.

    ``on_rows(n)`` hears of every ``PROGRESS_ROWS`` images done (for a live progress line).
    """
    parts = []
    for start in range(0, len(pixels), PROGRESS_ROWS):
        part = pixels[start:start + PROGRESS_ROWS].astype(np.float32)
        parts.append(base.model.predict(part, batch_size=EXTRACT_BATCH, verbose=0))
        if on_rows is not None:
            on_rows(len(part))
    if not parts:
        return np.zeros((0, base.spec.feature_dim), np.float32)
    return np.concatenate(parts).astype(np.float32)


def site_features(base: LazyBase, listing: Listing, cache_dir: Path | None, *,
                  skip_bad: bool = False, augment_views: int = 0, shift: Shift | None = None,
                  progress: Progress | None = None,
                  dicom_window: DicomWindow | None = None) -> SiteFeatures:
    """Features of ``listing``: cached rows where ``cache_dir`` has them, the rest extracted.

    ``cache_dir`` None turns the cache off (everything is extracted, nothing is written).
    The VGG16 base is only built when some image is missing from the cache. An image known
    to be unreadable raises `DataError` naming it unless ``skip_bad``. ``shift`` (a simulated
    site's acquisition change) is applied to the decoded images before augmentation.
    ``dicom_window`` overrides DICOM files' own windows (and keys their features apart).
    """
    if cache_dir is not None:
        private_dir(cache_dir)
    memo = DigestMemo(cache_dir / "digests" / f"{namespace(listing.source, 'digests')}.npz"
                      if cache_dir is not None else None)
    digests = _digests(listing, memo)
    seen_as = f"{shift.name}|" if shift is not None else ""
    if base.spec.compute_dtype != "float32":  # bfloat16 features are close, not the same
        seen_as += f"{base.spec.compute_dtype}|"
    if dicom_window is not None and any(i.lower().endswith(".dcm") for i in listing.items):
        seen_as += f"window{dicom_window[0]:g},{dicom_window[1]:g}|"
    caches = [FeatureCache(cache_dir / namespace(base.fingerprint, seen_as + view_name(v))
                           if cache_dir is not None else None)
              for v in range(augment_views + 1)]
    known_bad = caches[0].bad
    missing = [i for i, d in enumerate(digests)
               if d not in known_bad and not all(d in cache for cache in caches)]
    bad_paths = [str(_where(listing, i)) for i, d in enumerate(digests) if d in known_bad]
    if bad_paths and not skip_bad:
        raise DataError(f"cannot read image {bad_paths[0]} (found unreadable before). Remove or "
                        "replace it, or pass --skip-bad-images to leave unreadable images out.")
    start = time.perf_counter()
    total, finished = len(missing) * len(caches), 0

    def tick(rows: int) -> None:
        nonlocal finished
        finished += rows
        if progress is not None:
            progress(min(finished, total), total)

    if missing:
        tick(0)  # the clock starts before the base is built: its time is extraction's too
    for done in range(0, len(missing), CHUNK):
        chunk = np.asarray(missing[done: done + CHUNK], dtype=np.int64)
        images = load_images(listing.subset(chunk), base.spec.image_size, skip_bad=skip_bad,
                             allow_empty=True, dicom_window=dicom_window)
        kept = [digests[i] for i in chunk[images.kept]]
        pixels = shift.apply(images.pixels, kept) if shift is not None else images.pixels
        bad = sorted({digests[i] for i in chunk} - set(kept))
        for view, cache in enumerate(caches):
            rows = (extract(base.get(), augmented(pixels, kept, view), tick) if kept
                    else np.zeros((0, base.spec.feature_dim), np.float32))
            cache.add(kept, rows, bad if view == 0 else ())
        bad_paths += images.skipped
        tick((done + len(chunk)) * len(caches) - finished)  # unreadable images count as done
    readable = [i for i, d in enumerate(digests) if d not in caches[0].bad]
    if not readable:
        raise DataError(f"no readable image in {listing.root or listing.source}")
    kept_digests = [digests[i] for i in readable]
    views = [cache.get(kept_digests) for cache in caches]
    return SiteFeatures(
        features=views[0],
        views=(np.stack(views[1:]) if augment_views
               else np.zeros((0, len(readable), base.spec.feature_dim), np.float32)),
        labels=listing.labels[np.asarray(readable, dtype=np.int64)],
        skipped=tuple(sorted(set(bad_paths))),
        seconds=time.perf_counter() - start if missing else 0.0,
        extracted=len(missing),
    )


def _digests(listing: Listing, memo: DigestMemo) -> list[str]:
    stamped = list(zip(listing.items, listing.stamps, strict=True))
    todo = [i for i, key in enumerate(stamped) if key not in memo.known]
    fresh = dict(zip(todo, content_digests(listing, todo)))
    digests = [fresh[i] if i in fresh else memo.known[key] for i, key in enumerate(stamped)]
    memo.save(listing.items, listing.stamps, digests)
    return digests


def _where(listing: Listing, index: int) -> Path | str:
    return listing.root / listing.items[index] if listing.root else listing.items[index]
