"""What travels between server and sites, and the checks every update must pass.

Flower checks only a reply's structure; values, shapes, dtypes, norms and the base they were
computed on are checked here, on plain numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.errors import UpdateRejectedError

# Record keys in Messages.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"

# Keys of the server's ConfigRecord and of the site's reply.
FINGERPRINT = "fingerprint"
CLASSES = "classes"
RUN_ID = "run-id"
SITE_NAME = "site-name"
TIGHTENED = "tightened"  # what the site's policy changed in the run ("" if nothing)
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"
ACCURACY = "accuracy"
EXTRACT_SECONDS = "extract-seconds"
SKIPPED_IMAGES = "skipped-images"
GLOBAL_ACCURACY = "global-accuracy"
SAMPLING_RATE = "sampling-rate"
NOISE_MULTIPLIER = "noise-multiplier"
STEPS = "steps"
PROXIMAL_MU = "proximal-mu"  # what Flower's FedProx puts in the train config
SECAGG_CLIP = "secagg-clip"  # SecAgg+ clips every weight to [-clip, clip]: sites check first

# Everything a site's train reply holds besides the head arrays and its name and base
# fingerprint (README, "What leaves a site"). The count is the released one (exact, rounded
# or noised); the DP-SGD settings are computed from it and from public settings.
TRAIN_FIGURES = (NUM_EXAMPLES, EPSILON, SAMPLING_RATE, NOISE_MULTIPLIER, STEPS)
# Added only with --site-metrics exact: computed from private images outside the guarantee.
EXACT_TRAIN_FIGURES = (TRAIN_LOSS, EXTRACT_SECONDS, SKIPPED_IMAGES)

# The message action (``train.personalize``) that asks a site to fine-tune its own head.
PERSONALIZE = "personalize"
# The message action (``train.class_sums``) that asks a site for its one-shot release, and
# the array record that carries the run's public statistics (mean, components, variances).
CLASS_SUMS = "class_sums"
PUBLIC = "public"
PUBLIC_RECIPE = "public-recipe"  # in the server's config: where the public images came from
PUBLIC_FINGERPRINT = "public-fingerprint"  # in a sums reply: the statistics the site used
# In a personalization request with --personal-tuning ridge: the federation's summed
# one-shot release (an array record) and the count it was solved with (in the config).
ONE_SHOT_TOTALS = "one-shot-totals"
ONE_SHOT_COUNT = "one-shot-count"
ONE_SHOT_PENALTY = "one-shot-penalty"  # the ridge penalty the server solved the head with
# In a SecAgg+ fit request's config: this masked round is the one-shot release.
SECURE_SUMS = "secure-class-sums"
# Set by the site's own mod on every request (whatever the server sent): how many sites the
# SecAgg+ round's sum must include (its threshold); 0 when the request is not masked.
MASKED_OVER = "fedtl-masked-over"

# Error codes of replies in which a site declines or refuses a round.
BUDGET_EXHAUSTED = 4001
INCOMPATIBLE = 4002
WITHHELD = 4003  # the site releases no held-out figures (--site-metrics none)
POLICY_REFUSED = 4004  # the site's own policy does not admit the run


def check_one_shot_totals(arrays: Sequence[np.ndarray], count: object,
                          shapes: Sequence[tuple[int, ...]],
                          own_count: float) -> tuple[list[np.ndarray], float]:
    """The server's summed one-shot release as a site accepts it for its personal head: the
    run's release shapes, finite values, and a finite count that includes the site's own."""
    if [tuple(a.shape) for a in arrays] != [tuple(s) for s in shapes]:
        raise UpdateRejectedError(
            f"the server's one-shot totals have shapes {[tuple(a.shape) for a in arrays][:4]}, "
            f"not the run's release shapes {list(shapes)}")
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise UpdateRejectedError("the server's one-shot totals hold non-finite values")
    if isinstance(count, bool) or not isinstance(count, (int, float)) \
            or not np.isfinite(count) or not own_count <= count < 1e12:
        raise UpdateRejectedError(
            f"the server's one-shot count {str(count)[:40]!r} is not a finite number of at "
            f"least this site's own released count {own_count:g}")
    return [np.asarray(a, np.float64) for a in arrays], float(count)


def check_one_shot_penalty(value: object, lowest: float, highest: float) -> float:
    """The ridge penalty the server solved the run's one-shot head with (``--ridge-penalty
    noise``), as a site accepts it to solve its personal head alike: a number in the range
    the rule gives. A penalty only weighs what the releases already hold: any value spends
    nothing, but one outside that range is not the rule's."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not lowest <= float(value) <= highest:
        raise UpdateRejectedError(
            f"the server's one-shot penalty {str(value)[:40]!r} is not a number in "
            f"{lowest:g}..{highest:g} (--ridge-penalty noise sets it in that range)")
    return float(value)


def check_global_head(arrays: Sequence[np.ndarray],
                      shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """The server's head as a site accepts it: the run's shapes, float32, finite values."""
    if [tuple(a.shape) for a in arrays] != [tuple(s) for s in shapes]:
        raise UpdateRejectedError(
            f"the server sent head arrays of shapes {[tuple(a.shape) for a in arrays][:8]}, "
            f"not the run's {list(shapes)}")
    for i, a in enumerate(arrays):
        if a.dtype != np.float32 or not np.all(np.isfinite(a)):
            raise UpdateRejectedError(f"the server's head array {i} is not finite float32")
    return list(arrays)


def check_update(arrays: Sequence[np.ndarray], reference: Sequence[np.ndarray], *,
                 max_norm: float, who: str) -> float:
    """Reject an update unless it has the reference's shapes and dtypes and sane values.

    Returns the L2 norm of ``arrays - reference``, which must not exceed ``max_norm``.
    """
    if len(arrays) != len(reference):
        raise UpdateRejectedError(
            f"{who}: update has {len(arrays)} arrays, the head has {len(reference)}")
    squared = 0.0
    for i, (got, want) in enumerate(zip(arrays, reference, strict=True)):
        if got.shape != want.shape:
            raise UpdateRejectedError(
                f"{who}: array {i} has shape {got.shape}, the head needs {want.shape}")
        if got.dtype != want.dtype:
            raise UpdateRejectedError(
                f"{who}: array {i} has dtype {got.dtype}, the head needs {want.dtype}")
        if not np.all(np.isfinite(got)):
            raise UpdateRejectedError(f"{who}: array {i} holds NaN or Inf")
        squared += float(np.sum((got.astype(np.float64) - want) ** 2))
    norm = float(np.sqrt(squared))
    if norm > max_norm:
        raise UpdateRejectedError(
            f"{who}: update norm {norm:.4g} exceeds the limit {max_norm:.4g}")
    return norm
