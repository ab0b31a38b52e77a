"""The one-shot DP head: per-class feature sums released once, ridge regression on the server.

Each site bounds its features (norm <= 1 after centring on the public mean and projecting onto
public principal components), sums them per class, ``S = Z^T Y``, and releases ``S`` once with
Gaussian noise: adding or removing one image moves one column by at most 1 in L2, so the
noise multiplier is the std. The server adds the sites' sums and solves ridge regression
with the *public* second moment in place of the private ``Z^T Z``, which a DP release would
drown in noise at a few hundred images per site (Mehta, Krichene et al., TMLR 2023; Fed3R,
Fani et al., ICML 2024). In the public components' basis that moment is diagonal, so the
solve is a division. Plain numpy: no TensorFlow, no Flower.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Ridge on one-hot targets gives logits in about [0, 1]: a softmax over them is nearly
# uniform. Scaled, the saved model's probabilities mean something and DP-SGD rounds that
# start from the head are not spent on growing its scale (measured: +2-3 points, CIFAR-10).
LOGIT_SCALE = 10.0


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


def bounded(features: np.ndarray, max_norm: float = 1.0) -> np.ndarray:
    """Rows scaled down to L2 norm at most ``max_norm`` (rows already within are unchanged)."""
    x = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, max_norm / np.maximum(norms, 1e-12))


def public_basis(features: np.ndarray, components: int, recipe: str) -> PublicBasis:
    """The basis of public ``features``: their mean and top principal directions."""
    mean = features.mean(axis=0)
    centred = bounded(features - mean)
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
    """``Z^T Y``: column c is the sum of the rows of class c, shape (K, num_classes)."""
    return embedded.T @ np.eye(num_classes)[labels]


def noised(sums: np.ndarray, noise_multiplier: float, rng: np.random.Generator) -> np.ndarray:
    """The Gaussian mechanism on sums of L2 sensitivity 1."""
    return sums + rng.normal(0.0, noise_multiplier, sums.shape)


def ridge_solution(sums: np.ndarray, count: float, variances: np.ndarray,
                   penalty: float) -> np.ndarray:
    """``(count * diag(variances) + lam I)^-1 sums`` with ``lam = penalty * count *
    mean(variances)``: ridge regression on one-hot targets with the public second moment."""
    lam = penalty * count * float(np.mean(variances))
    return sums / (count * variances + lam)[:, None]


def ridge_head(sums: np.ndarray, count: float, basis: PublicBasis,
               penalty: float) -> list[np.ndarray]:
    """The linear head (kernel (d, classes), bias) that applies the ridge solution to raw
    features: logits = (x - mean) P W = x (P W) - mean (P W)."""
    solution = LOGIT_SCALE * ridge_solution(sums, count, basis.variances, penalty)
    kernel = basis.components.astype(np.float64) @ solution
    bias = -basis.mean.astype(np.float64) @ kernel
    return [kernel.astype(np.float32), bias.astype(np.float32)]
