"""A site's own head, kept at the site: fine-tuned with DP from the final global head, or
(``--personal-tuning ridge``) the global head moved by the site's own one-shot release.

Only its accuracy leaves the site. The head is stored per run in the site's state folder, so
a personalization request repeated after a server restart re-reads it instead of spending
the budget again.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ConfigError, UpdateRejectedError
from common.privacy.oneshot import (COUNT_RATIO, NOISE_SHARE_WARNING, PublicBasis, class_sums,
                                     embed, moment_matrix, noise_share, release_head,
                                     second_moment, sums_std)
from common.privacy.penalty import noise_penalty
from common.storage import write_atomically

log = logging.getLogger("fedtl.site")

HEAD_FILE = "head.npz"
MODEL_FILE = "model.keras"
ACCURACY_FILE = "held_out_accuracy.json"  # exact, for the site's operator; never sent
OWN_RELEASE_FILE = "own_release.npz"
JOINT_NOTE_FILE = "NOT-DP-FOR-THIS-SITE.txt"
JOINT_NOTE = (
    "This personal head (model.keras, head.npz) was fitted to this site's own images without\n"
    "noise (--personal-tuning joint). What left the site in the run was DP; this model is\n"
    "not DP with respect to this site's images. Keep it inside the site: sharing it would\n"
    "release what its images taught it, with no guarantee.\n")


def personal_dir(state: Path, run_key: str) -> Path:
    """Where a site keeps its personal head (and Keras model) of run ``run_key``."""
    return run_dir(state, run_key, "personal")


def run_dir(state: Path, run_key: str, kind: str = "runs") -> Path:
    """The site's folder for run ``run_key`` under ``kind`` in its state folder.

    The run key comes from the server: one that would lead out of the state folder is
    refused (callers check its format first; this is the last line).
    """
    root = (Path(state) / kind).resolve()
    folder = (root / run_key).resolve()
    if folder.parent != root:
        raise ConfigError(f"run id {run_key[:40]!r} is not a plain name; refused")
    return folder


def save_head(folder: Path, weights: list[np.ndarray]) -> None:
    """The head's arrays, written atomically, readable by the site only."""
    write_atomically(folder / HEAD_FILE, lambda handle: np.savez(handle, *weights))


def save_joint_note(folder: Path) -> None:
    """Beside a joint personal head: what it is not, for whoever finds the model file."""
    note = JOINT_NOTE.encode()
    write_atomically(folder / JOINT_NOTE_FILE, lambda handle: handle.write(note), mode=0o644)


def load_head(folder: Path, shapes: list[tuple[int, ...]]) -> list[np.ndarray] | None:
    """The saved head if it is there, readable and of ``shapes``; else None (train again)."""
    path = folder / HEAD_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = [data[f"arr_{i}"] for i in range(len(data.files))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if [tuple(w.shape) for w in weights] != [tuple(s) for s in shapes]:
        return None
    return weights


@dataclass(frozen=True)
class OwnRelease:
    """A site's one-shot release as it keeps it for its personal head: the noised statistics
    at the site's full noise (what it would have released alone), its released count and
    the public basis they are in."""

    arrays: list[np.ndarray]  # as `common.privacy.oneshot.release_shapes` lists them
    count: float
    basis: PublicBasis
    # The full noise it was released at (0 without DP); None for a joint head's exact
    # statistics or a file kept before the noise was kept with it.
    noise_multiplier: float | None = None


def save_own_release(folder: Path, release: OwnRelease) -> None:
    """Written atomically before the release leaves the site, readable by the site only."""
    noise = ({} if release.noise_multiplier is None
             else {"noise_multiplier": np.float64(release.noise_multiplier)})
    arrays = {"count": np.float64(release.count), **noise,
              "recipe": np.frombuffer(release.basis.recipe.encode(), dtype=np.uint8),
              **{f"basis_{i}": a for i, a in enumerate(release.basis.arrays())},
              **{f"arr_{i}": a for i, a in enumerate(release.arrays)}}
    write_atomically(folder / OWN_RELEASE_FILE, lambda handle: np.savez(handle, **arrays))


def load_own_release(folder: Path, feature_dim: int) -> OwnRelease | None:
    """The site's kept release, or None if it has none (it did not release in this run)."""
    path = folder / OWN_RELEASE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = [data[f"arr_{i}"] for i in range(sum(k.startswith("arr_") for k in data))]
            basis = PublicBasis.from_arrays([data[f"basis_{i}"] for i in range(3)],
                                            feature_dim, data["recipe"].tobytes().decode())
            noise = float(data["noise_multiplier"]) if "noise_multiplier" in data else None
            return OwnRelease(arrays, float(data["count"]), basis, noise)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"the site's kept one-shot release {path} is unreadable ({exc}); "
                          "without it this run's personal head cannot be built") from exc


def own_penalty(rule: str, fixed: float, own: OwnRelease, noise_multiplier: float) -> float:
    """The penalty of a head solved from the site's own release alone (what its noise share
    measures): ``fixed`` (``--ridge-lambda``), or with ``rule`` "noise" the penalty
    `noise_penalty` gives that release at the site's full noise."""
    if rule == "fixed":
        return float(fixed)
    return noise_penalty(sums_std(noise_multiplier, len(own.arrays) > 1), own.count,
                         own.basis.variances)


def own_release_share(own: OwnRelease, noise_multiplier: float, penalty: float) -> float:
    """How much of a ridge head solved from the site's own kept release alone is that
    release's noise (`noise_share` at the site's full noise): the part of its personal head
    that rests on the site's own release. Post-processing of the noised release: it spends
    nothing, and the figure stays at the site."""
    k = own.basis.components.shape[1]
    moment = moment_matrix(np.asarray(own.arrays[1], np.float64), k) if len(own.arrays) > 1 \
        else None
    return noise_share(np.asarray(own.arrays[0], np.float64), own.count, own.basis.variances,
                       penalty, sums_std(noise_multiplier, moment is not None), moment)


def note_own_release(site: str, own: OwnRelease, noise_multiplier: float, penalty: float,
                     weight: float | None) -> float:
    """Log, at the site, how much of its own release is noise, and warn when its personal
    head would lean on mostly noise: the server's warning is about the federation's summed
    head, which a small site's own release can be far noisier than. ``weight`` None: the
    site estimates its weight later (`estimated_weight`), and noise keeps that estimate low,
    so there is nothing to warn about."""
    share = own_release_share(own, noise_multiplier, penalty)
    message = (f"site {site}: its own one-shot release ({own.count:.0f} images) is "
               f"{min(share, 1.0):.0%} noise by the spread of the head it gives")
    if weight is None:
        log.info(f"{message}; its personal head weighs it by its own estimate, which the "
                 "release's noise keeps low")
    elif share < NOISE_SHARE_WARNING:
        log.info(message)
    else:
        log.warning(f"warning: {message}: its personal head counts that release {weight:g} "
                    "times and will lean on mostly noise. A smaller --personal-ridge-weight "
                    "or --personal-tuning bias keeps the personal head nearer the federation's.")
    return share


def estimated_weight(totals: Sequence[np.ndarray], count: float, own: OwnRelease,
                     cap: float) -> tuple[float, float]:
    """A site's own weight for `ridge_personal_head`, from the two DP releases it holds and
    the public statistics (post-processing: spends nothing): ``(weight, excess)``.

    Were the site's images drawn like the federation's, its own release would be its share
    ``r = n / N`` of the summed one up to the release's noise and the sampling of its images.
    ``excess`` is how much larger the difference ``own - r * totals`` is than those two
    alone (per entry, in units of their variance; 0 when it is all noise and sampling). As in
    James-Stein shrinkage, the own statistics should then count with ``excess / (1 +
    excess)`` against the federation's; in the mixed release ``totals + w * own`` that is
    ``w = excess / r``. Written here: no library shrinks one DP release towards another.
    """
    if own.noise_multiplier is None or count <= 0:
        raise ValueError("an estimated weight needs the own release's noise (0 for exact "
                         "statistics) and a positive count")
    share = min(max(own.count / count, 1e-6), 1.0)
    moment = len(own.arrays) > 1
    total = np.asarray(totals[0], np.float64)
    difference = np.asarray(own.arrays[0], np.float64) - share * total
    # The release's noise in the difference: the own release's, less what the totals share
    # with it, plus the others' scaled by r: (1 - r)(1 + r) of one release's variance when
    # the sites are alike in size (local noise gives (1 - r): the larger keeps the weight low).
    std = sums_std(own.noise_multiplier, moment)
    noise = np.full(difference.shape, std**2)
    noise[-1] *= COUNT_RATIO**2
    noise *= (1.0 - share) * (1.0 + share)
    # Sampling: a sum over n_c images varies by n_c E[z_k^2] at most (public second moment
    # along each component), a count by n p (1 - p); the difference keeps (1 - r) of it.
    classes = np.clip(share * total[-1], 0.0, None)  # the site's expected class counts
    proportions = classes / max(float(classes.sum()), 1e-12)
    sampling = np.vstack([np.outer(np.asarray(own.basis.variances, np.float64), classes),
                          own.count * proportions * (1.0 - proportions)]) * (1.0 - share)
    with np.errstate(over="ignore", invalid="ignore"):  # absurd totals: inf, then the cap
        ratio = float(np.mean(difference**2 / np.maximum(noise + sampling, 1e-12)))
    if np.isnan(ratio):
        ratio = np.inf
    excess = max(ratio - 1.0, 0.0)
    return min(excess / share, cap), excess


def ridge_personal_head(global_head: Sequence[np.ndarray], totals: Sequence[np.ndarray],
                        count: float, own: OwnRelease, penalty: float,
                        weight: float) -> list[np.ndarray]:
    """The final global head moved by what the site's own release changes in the one-shot
    head when it counts ``weight`` times more: ``global + ridge(total + weight * own) -
    ridge(total)``. Post-processing of DP releases (the federation's total, the site's own
    release): it spends nothing. The difference, not the re-solved head alone, keeps what
    the DP-SGD rounds after the one-shot head learned."""
    shared = release_head(totals, count, own.basis, penalty)
    mixed = release_head([np.asarray(t, np.float64) + weight * np.asarray(o, np.float64)
                          for t, o in zip(totals, own.arrays, strict=True)],
                         count + weight * own.count, own.basis, penalty)
    head = [(np.asarray(g, np.float64) + m - s).astype(np.float32)
            for g, m, s in zip(global_head, mixed, shared, strict=True)]
    # Finite totals can still be large enough to overflow the solve or float32: such a head
    # would be saved and served as the site's own model.
    if not all(np.all(np.isfinite(w)) for w in head):
        raise UpdateRejectedError(
            "the personal head built from the server's one-shot totals is not finite (totals "
            "far outside any real release?); refused, nothing saved")
    return head


def exact_release(features: np.ndarray, labels: np.ndarray, num_classes: int,
                  basis: PublicBasis, moment: bool) -> OwnRelease:
    """The site's own statistics as its release would hold them, without noise: what a
    ``joint`` personal head counts in place of its noised copy (they never leave the site)."""
    z = embed(features, basis)
    arrays = [class_sums(z, labels, num_classes)] + ([second_moment(z)] if moment else [])
    return OwnRelease(arrays, float(len(labels)), basis)


def logistic_toward(start: Sequence[np.ndarray], features: np.ndarray, labels: np.ndarray,
                    strength: float, max_iter: int = 300) -> list[np.ndarray]:
    """The linear head minimising the mean cross-entropy on ``features`` plus ``strength / 2
    * ||kernel - start kernel||^2``: a logistic regression fitted to the site's own images
    with ``start`` (what the federation knows) as its prior. Written here because
    scikit-learn's LogisticRegression penalises towards zero only."""
    from scipy.optimize import minimize  # scikit-learn's dependency; loaded only when used

    kernel0 = np.asarray(start[0], np.float64)
    bias0 = np.asarray(start[1], np.float64)
    x = np.asarray(features, np.float64)
    n, (d, c) = len(labels), kernel0.shape
    onehot = np.eye(c)[labels]

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        kernel, bias = params[:d * c].reshape(d, c), params[d * c:]
        logits = x @ kernel + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        shift = kernel - kernel0
        value = (-np.mean(np.log(probs[np.arange(n), labels] + 1e-12))
                 + strength / 2 * float(np.sum(shift * shift)))
        grad = (probs - onehot) / n
        return value, np.concatenate([(x.T @ grad + strength * shift).ravel(), grad.sum(0)])

    fitted = minimize(loss, np.concatenate([kernel0.ravel(), bias0]), jac=True,
                      method="L-BFGS-B", options={"maxiter": max_iter}).x
    head = [fitted[:d * c].reshape(d, c).astype(np.float32), fitted[d * c:].astype(np.float32)]
    if not all(np.all(np.isfinite(w)) for w in head):
        raise UpdateRejectedError("the site's own logistic fit from the federation's head is "
                                  "not finite; refused, nothing saved")
    return head
