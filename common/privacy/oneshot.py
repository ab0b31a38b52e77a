"""The one-shot DP head: per-class feature sums and counts released once, ridge regression
with an intercept on the server.

Each site bounds its features (norm <= 1 after centring on the public mean and projecting onto
public principal components), sums them per class, ``S = Z^T Y``, counts its images per
class, ``c = 1^T Y``, and releases both once with Gaussian noise: one image moves ``S`` by at
most 1 and ``c / COUNT_RATIO`` by ``1 / COUNT_RATIO`` (L2), so ``[S, c / COUNT_RATIO]`` is one
Gaussian query of sensitivity ``sqrt(1 + 1 / COUNT_RATIO^2)``. The server adds the sites'
releases and solves least squares on one-hot targets with an intercept, using the *public*
second moment in place of the private ``Z^T Z``, which a DP release would drown in noise at a
few hundred images per site (Mehta, Krichene et al., TMLR 2023; Fed3R, Fani et al., ICML
2024); the private mean it needs is ``sum_k S_k / n``, from the release itself. The intercept
carries the class priors and the offset of the sites' features from the public mean (without
it, PACS' domain sites scored 0.36 instead of 0.49). Plain numpy: no TensorFlow, no Flower.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Counts are released with COUNT_RATIO times the sums' noise: per-class counts of a few dozen
# images stay usable priors, and the sums keep 95 % of the release's precision.
COUNT_RATIO = 3.0
# Ridge on one-hot targets gives logits in about [0, 1]: a softmax over them is nearly
# uniform. Scaled, the saved model's probabilities mean something and DP-SGD rounds that
# start from the head are not spent on growing its scale (measured: +2-3 points, CIFAR-10).
LOGIT_SCALE = 10.0

# A one-shot head whose `noise_share` is at least this is said to be mostly noise: in a replay
# on CIFAR-10 features (2-5 sites of 30-480 images, 64 or 256 components, epsilon 3, penalty
# 8) every head at or above it scored at most 0.19 (chance 0.10), every one below 0.6 at least
# 0.30 (docs/private-accuracy.md, "How much of the one-shot head is noise").
NOISE_SHARE_WARNING = 0.8


@dataclass(frozen=True)
class PublicBasis:
    """Public feature statistics every site of a run uses: mean, principal directions and
    the second moment along them (of centred, norm-bounded public features)."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (d, K), orthonormal columns
    variances: np.ndarray  # (K,), descending
    recipe: str  # where the public images came from

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.recipe.encode())
        for array in self.arrays():
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def arrays(self) -> list[np.ndarray]:
        return [self.mean.astype(np.float32), self.components.astype(np.float32),
                self.variances.astype(np.float32)]

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], feature_dim: int,
                    recipe: str) -> PublicBasis:
        """The server's statistics as a site accepts them, or ValueError saying why not."""
        if len(arrays) != 3:
            raise ValueError(f"public statistics are 3 arrays (mean, components, variances), "
                             f"not {len(arrays)}")
        mean, components, variances = (np.asarray(a, dtype=np.float32) for a in arrays)
        if mean.shape != (feature_dim,) or components.ndim != 2 \
                or components.shape[0] != feature_dim \
                or variances.shape != (components.shape[1],) \
                or not 1 <= components.shape[1] <= feature_dim:
            raise ValueError(f"public statistics have shapes {mean.shape}, {components.shape}, "
                             f"{variances.shape}; expected ({feature_dim},), ({feature_dim}, K), "
                             "(K,)")
        if not all(np.all(np.isfinite(a)) for a in (mean, components, variances)) \
                or np.any(variances <= 0):
            raise ValueError("public statistics hold non-finite values or non-positive "
                             "variances")
        gram = components.T.astype(np.float64) @ components
        if not np.allclose(gram, np.eye(gram.shape[0]), atol=1e-3):
            raise ValueError("the public components are not orthonormal")
        return cls(mean, components, variances, recipe)


def _single_threaded_blas():  # noqa: ANN202 (a context manager)
    # In a simulation the server runs in a thread beside TensorFlow's and Ray's; there
    # OpenBLAS' thread pool was seen to spin for 25 minutes in a 512 x 512 eigh (twice in ~40
    # runs), and a product computed by the pool while Ray forked its first processes hung
    # both (OpenBLAS' fork handler waits for its pool, holding the GIL the product needs;
    # 2026-12-02, once the basis no longer waited for TensorFlow). One BLAS thread takes
    # ~0.1 s for these sizes and cannot deadlock.
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def bounded(features: np.ndarray, max_norm: float = 1.0) -> np.ndarray:
    """Rows scaled down to L2 norm at most ``max_norm`` (rows already within are unchanged)."""
    x = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, max_norm / np.maximum(norms, 1e-12))


def public_basis(features: np.ndarray, components: int, recipe: str) -> PublicBasis:
    """The basis of public ``features``: their mean and top principal directions."""
    mean = features.mean(axis=0)
    centred = bounded(features - mean)
    with _single_threaded_blas():
        moment = centred.T @ centred / len(centred)
        values, vectors = np.linalg.eigh(moment)
    order = np.argsort(values)[::-1][:min(components, features.shape[1])]
    return PublicBasis(mean.astype(np.float32), vectors[:, order].astype(np.float32),
                       np.maximum(values[order], 1e-8).astype(np.float32),
                       f"{recipe}|components={len(order)}")


def embed(features: np.ndarray, basis: PublicBasis) -> np.ndarray:
    """Features centred on the public mean, bounded, projected onto the public components and
    bounded again: every row has norm <= 1 whatever the components are."""
    return bounded(bounded(features - basis.mean) @ basis.components)


def class_sums(embedded: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[Z^T Y ; 1^T Y]``: per-class sums of the rows (shape (K, classes)) with the per-class
    counts as one more row."""
    onehot = np.eye(num_classes)[labels]
    return np.vstack([embedded.T @ onehot, onehot.sum(axis=0)])


def sensitivity(moment: bool = False) -> float:
    """L2 sensitivity of the release in units of the sums' noise std (see the module doc).

    With the private second moment one image also moves the upper triangle of ``Z^T Z`` by at
    most ``||z z^T||_F = ||z||^2 <= 1``: the joint query's sensitivity is
    ``sqrt(2 + 1 / COUNT_RATIO^2)``.
    """
    return float(np.sqrt(1.0 + float(moment) + 1.0 / COUNT_RATIO**2))


def sums_std(noise_multiplier: float, moment: bool = False) -> float:
    """The noise std on each entry of the released sums (and of the moment's triangle):
    what a site adds, what the server checks a release against and denoises with."""
    return float(noise_multiplier) * sensitivity(moment)


def summed_std(site_std: float, sites: int, distributed: bool = False) -> float:
    """The noise std per entry of ``sites`` releases added up: each site's own noise adds in
    variance; with distributed noise (``--sums-noise distributed``) the sites' shares add up
    to ``site_std``, one site's release."""
    return float(site_std) if distributed else float(site_std) * float(np.sqrt(sites))


def noised(release: np.ndarray, noise_multiplier: float, rng: np.random.Generator,
           moment: bool = False) -> np.ndarray:
    """The Gaussian mechanism on `class_sums`: std ``noise_multiplier * sensitivity()`` on
    the sums, ``COUNT_RATIO`` times that on the counts row."""
    std = sums_std(noise_multiplier, moment)
    noise = rng.normal(0.0, std, release.shape)
    noise[-1] *= COUNT_RATIO
    return release + noise


def second_moment(embedded: np.ndarray) -> np.ndarray:
    """The upper triangle (diagonal included) of ``Z^T Z``, row by row: the private second
    moment a site may release with its sums (``--second-moment private``)."""
    k = embedded.shape[1]
    return (embedded.T.astype(np.float64) @ embedded)[np.triu_indices(k)]


def noised_moment(triangle: np.ndarray, noise_multiplier: float,
                  rng: np.random.Generator) -> np.ndarray:
    """The same Gaussian query's noise on the moment's triangle."""
    return triangle + rng.normal(0.0, sums_std(noise_multiplier, True), triangle.shape)


def triangle_size(k: int) -> int:
    return k * (k + 1) // 2


def diagonal_positions(k: int) -> np.ndarray:
    """Where the diagonal of a (k, k) matrix sits in its `second_moment` triangle."""
    rows, cols = np.triu_indices(k)
    return np.flatnonzero(rows == cols)


def release_shapes(components: int, classes: int, moment: bool) -> list[tuple[int, ...]]:
    """The arrays of a site's release: sums with the counts row, then (with the private
    second moment) the moment's triangle."""
    return [(components + 1, classes)] + ([(triangle_size(components),)] if moment else [])


def release_head(totals: Sequence[np.ndarray], count: float, basis: PublicBasis,
                 penalty: float) -> list[np.ndarray]:
    """`ridge_head` of the sites' summed release (``totals`` as `release_shapes` lists them):
    with a second array, the sites' own second moment instead of the public one."""
    k = basis.components.shape[1]
    moment = moment_matrix(np.asarray(totals[1], np.float64), k) if len(totals) > 1 else None
    return ridge_head(np.asarray(totals[0], np.float64), count, basis, penalty, moment)


def moment_matrix(triangle: np.ndarray, k: int) -> np.ndarray:
    """The symmetric (k, k) matrix of an upper triangle from `second_moment`."""
    full = np.zeros((k, k))
    full[np.triu_indices(k)] = triangle
    return full + np.triu(full, 1).T


def _normal_equations(release: np.ndarray, count: float, variances: np.ndarray,
                      penalty: float, moment: np.ndarray | None) -> np.ndarray:
    """The (K + 1, K + 1) matrix of `ridge_solution`'s normal equations, penalty included."""
    sums = release[:-1]
    k = len(variances)
    mean = sums.sum(axis=1) / count
    gram = np.empty((k + 1, k + 1))
    if moment is None:
        centred = count * np.diag(variances)
    else:
        raw = moment - count * np.outer(mean, mean)
        with _single_threaded_blas():
            values, vectors = np.linalg.eigh((raw + raw.T) / 2.0)
        centred = (vectors * np.maximum(values, 0.0)) @ vectors.T
    gram[:k, :k] = centred + count * np.outer(mean, mean)
    gram[:k, k] = gram[k, :k] = count * mean
    gram[k, k] = count
    penalty_matrix = penalty * count * float(np.mean(variances)) * np.eye(k + 1)
    penalty_matrix[k, k] = 0.0
    return gram + penalty_matrix


def ridge_solution(release: np.ndarray, count: float, variances: np.ndarray,
                   penalty: float, moment: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) minimising ``||Z W + 1 b - Y||^2 + lam ||W||^2`` (``lam = penalty * count *
    mean(variances)``, the intercept unpenalised) with ``Z^T Z`` taken as ``count`` times the
    public second moment ``diag(variances)`` about the sites' mean ``m = sum_k S_k / count``:
    ``Z^T Z = count (diag(variances) + m m^T)``, ``Z^T 1 = count m``. With ``moment`` (the
    sites' released ``Z^T Z``, summed) it is used instead, centred on ``m`` and projected onto
    the positive semi-definite matrices (its noise can make it indefinite)."""
    counts = np.maximum(release[-1], 0.0)
    k = len(variances)
    system = _normal_equations(release, count, variances, penalty, moment)
    with _single_threaded_blas():
        solution = np.linalg.solve(system, np.vstack([release[:-1], counts]))
    return solution[:k], solution[k]


def noise_share(release: np.ndarray, count: float, variances: np.ndarray, penalty: float,
                total_std: float, moment: np.ndarray | None = None) -> float:
    """How much of the ridge head's score spread the release's noise makes: the noise's
    expected part of ``sum_k var_z(z . w_k)`` (weights centred over the classes, ``z`` with the
    public variances) over the observed total; about 1 when the sums are all noise, 0 when
    noise-free. ``total_std`` is the summed release's noise std per entry of its sums (the
    counts carry `COUNT_RATIO` times it). Post-processing of the release: free in privacy.
    With ``moment`` only the sums' noise is counted: its own noise makes the head noisier."""
    release = np.asarray(release, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    k, classes = len(variances), release.shape[1]
    with _single_threaded_blas():
        rows = np.linalg.inv(_normal_equations(release, count, variances, penalty,
                                               moment))[:k]
    weights = rows @ np.vstack([release[:-1], np.maximum(release[-1], 0.0)])
    centred = weights - weights.mean(axis=1, keepdims=True)
    observed = float(np.sum(variances[:, None] * centred**2))
    entry_variance = np.full(k + 1, float(total_std) ** 2)
    entry_variance[k] *= COUNT_RATIO**2
    # Each class's weights get rows @ noise; centring over the classes keeps classes - 1 of
    # the classes' independent noise.
    expected = (classes - 1) * float(np.sum(variances[:, None] * rows**2 * entry_variance))
    return expected / max(observed, 1e-300)


def ridge_head(release: np.ndarray, count: float, basis: PublicBasis,
               penalty: float, moment: np.ndarray | None = None) -> list[np.ndarray]:
    """The linear head (kernel (d, classes), bias) that applies the ridge solution to raw
    features: logits = (x - mean) P W + b = x (P W) + (b - mean P W)."""
    weights, intercept = ridge_solution(release, count, basis.variances, penalty, moment)
    kernel = LOGIT_SCALE * basis.components.astype(np.float64) @ weights
    bias = LOGIT_SCALE * intercept - basis.mean.astype(np.float64) @ kernel
    return [kernel.astype(np.float32), bias.astype(np.float32)]
