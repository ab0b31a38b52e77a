"""A site's features centred on its own mean (``--feature-centring site``).

Sites whose images come through other scanners, cameras or styles see the frozen base's
features shifted as a whole; a shared head then spends its capacity on where each site's
cloud sits instead of on the classes. Centring each site's features on its own mean removes
that offset (the first-order part of feature alignment; FedBN, Li et al., ICLR 2021, keeps
local normalisation statistics for the same reason).

The mean is computed once per run from the site's training features and is a Gaussian
mechanism of its own: each row is clipped to ``CLIP_NORM``, the rows are summed, noise of
std ``noise_multiplier * CLIP_NORM`` is added and the sum is divided by the site's *released*
count. Everything the site then sends is computed from features centred on that noised
mean, so the release it belongs to needs no other sensitivity argument than its own. The
mean never leaves the site; it is kept under the site's state folder, written before
anything computed from it leaves, and reused by every later request of the run (a fresh
draw per request would release the site's mean again each time).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from common.errors import ConfigError
from common.privacy.oneshot import bounded
from common.storage import write_atomically

# The base's features have norm ~1 (its unit_scale layer); 2 clips almost no row yet bounds
# every row's share of the sum.
CLIP_NORM = 2.0
MEAN_FILE = "mean.npy"


def noised_mean(features: np.ndarray, count: int, noise_multiplier: float,
                rng: np.random.Generator) -> np.ndarray:
    """The site's feature mean as the Gaussian mechanism releases it: the sum of clipped
    rows plus noise of std ``noise_multiplier * CLIP_NORM``, over the released ``count``
    (dividing by the true number of rows would make it depend on a private number outside
    the mechanism). ``noise_multiplier`` 0 gives the exact mean (a non-private run)."""
    total = bounded(features, CLIP_NORM).sum(axis=0)
    if noise_multiplier > 0:
        total = total + rng.normal(0.0, noise_multiplier * CLIP_NORM, total.shape)
    return (total / max(int(count), 1)).astype(np.float32)


def centred_on_own_mean(features: np.ndarray) -> np.ndarray:
    """``features`` centred on their own exact mean: how images that are not a training site's
    (the public folder, an unseen domain, a folder `fedtl evaluate` scores) meet a head of a
    ``--feature-centring site`` run, as a new site would centre its own. Nothing of them is
    released, so the mean needs no noise."""
    return features - features.mean(axis=0)


def save_mean(folder: Path, mean: np.ndarray) -> None:
    """Kept atomically, readable by the site only."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / MEAN_FILE, lambda handle: np.save(handle, mean,
                                                                 allow_pickle=False))


def load_mean(folder: Path, feature_dim: int) -> np.ndarray | None:
    """The kept mean, None if the site has none for this run; an unreadable or misshapen one
    is an error that names the file (a new draw would be a second release)."""
    path = folder / MEAN_FILE
    if not path.is_file():
        return None
    try:
        mean = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"the site's feature mean {path} is unreadable ({exc}); this run "
                          "cannot go on at this site without it") from exc
    if mean.shape != (feature_dim,) or not np.all(np.isfinite(mean)):
        raise ConfigError(f"the site's feature mean {path} has shape {mean.shape}, not "
                          f"({feature_dim},), or is not finite; this run cannot go on at "
                          "this site without it")
    return mean.astype(np.float32)


def folded_head(weights: list[np.ndarray], mean: np.ndarray) -> list[np.ndarray]:
    """The head that gives on raw features what ``weights`` give on features centred on
    ``mean``: the first layer's bias takes ``- mean @ kernel`` (a saved model then needs no
    extra layer)."""
    kernel, bias = weights[0], weights[1]
    return [kernel, (bias - mean.astype(np.float64) @ kernel).astype(bias.dtype),
            *weights[2:]]
