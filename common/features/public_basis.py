"""The public statistics a run's one-shot head is solved with, from public images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.data.images import Listing, list_unlabelled
from common.errors import DataError
from common.features.extraction import LazyBase, site_features
from common.features.public_stats import RECIPE, public_crops
from common.privacy.centring import centred_on_own_mean
from common.privacy.oneshot import PublicBasis, embed, public_basis
from common.storage import cached_arrays


def run_basis(cfg: RunConfig, base: LazyBase) -> tuple[PublicBasis, np.ndarray | None]:
    """The basis of ``cfg``'s public images: the ``--public`` folder (features cached in the
    state folder by content), else the crops of two public photos the base is standardised
    with; and, for ``--sums-prior public-hull``, those images' features as the release embeds
    a site's."""
    features, recipe = _public_features(cfg, base)
    basis = public_basis(features, cfg.public_components, recipe)
    return basis, (embed(features, basis) if cfg.sums_prior == "public-hull" else None)


def _public_features(cfg: RunConfig, base: LazyBase) -> tuple[np.ndarray, str]:
    if not cfg.public:
        features = crop_features(base)
        recipe = RECIPE
    else:
        listing = public_listing(cfg.public)
        cache = Path(cfg.state).expanduser() / "public-features" if cfg.cache else None
        feats = site_features(base, listing, cache, skip_bad=cfg.skip_bad_images,
                              dicom_window=cfg.window)
        if len(feats.labels) < 2:
            raise DataError(f"public folder {cfg.public} has fewer than two readable images")
        features = feats.features
        recipe = f"folder:{Path(cfg.public).name}|images={len(feats.labels)}"
    if cfg.site_centred:  # the public images centred on their own mean too,
        # as every site's are: the basis is then about the classes, not where a cloud sits
        features = centred_on_own_mean(features)
        recipe += "|centred"
    return features, recipe


def public_listing(folder: str) -> Listing:
    """The ``--public`` folder's images, flat or in subfolders (labels are not used), or
    `DataError` naming it as the public folder (the same problems in a site's folder read
    "data folder ...", which would send an operator to the wrong place)."""
    try:
        return list_unlabelled(Path(folder).expanduser(), "public")
    except DataError as exc:
        raise DataError(f"--public folder {folder}: {exc}") from exc


def crop_features(base: LazyBase) -> np.ndarray:
    """The base's features of the public crops, kept beside its public statistics: with a
    warm copy a server starts a one-shot run without loading TensorFlow (4-20 s)."""
    spec = base.spec
    recipe = hashlib.sha256(RECIPE.encode()).hexdigest()[:12]
    path = (Path(base.stats_cache) / f"{base.fingerprint}-crops-{recipe}-{spec.compute_dtype}"
            ".npz" if base.stats_cache is not None else None)

    def sane(saved: dict[str, np.ndarray]) -> bool:
        features = saved["features"]
        return (features.ndim == 2 and features.shape[1] == spec.feature_dim
                and bool(np.all(np.isfinite(features))))

    def fresh() -> dict[str, np.ndarray]:
        crops = public_crops(spec.image_size).astype(np.float32)
        return {"features": base.get().model.predict(crops, batch_size=64, verbose=0)}

    return cached_arrays(path, fresh, sane)["features"].astype(np.float32)
