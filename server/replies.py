"""What a site's reply must hold, checked into plain values before anything aggregates it.

Flower checks a reply's structure only loosely (one ArrayRecord, one MetricRecord, the same
keys in every reply); one odd reply would abort the whole round. Here each reply is checked
alone, exactly: the records and keys it may hold, shapes, dtypes, finite values, the norm of
its update, figures consistent with the run, and a bounded weight. A reply that fails is
rejected alone; one that passes is rebuilt with the fixed set of keys before aggregation.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from common import protocol
from common.errors import UpdateRejectedError
from common.privacy.oneshot import COUNT_RATIO, diagonal_positions, sums_std

MAX_NAME = 64
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
SITE_KEYS = frozenset({protocol.SITE_NAME, protocol.FINGERPRINT, protocol.TIGHTENED,
                       protocol.PUBLIC_FINGERPRINT})
REQUIRED_SITE_KEYS = frozenset({protocol.SITE_NAME, protocol.FINGERPRINT})
EVALUATION_KEYS = frozenset({protocol.NUM_EXAMPLES, protocol.ACCURACY})
PERSONAL_KEYS = frozenset({protocol.NUM_EXAMPLES, protocol.EPSILON, protocol.STEPS})
PERSONAL_ACCURACIES = frozenset({protocol.ACCURACY, protocol.GLOBAL_ACCURACY})


@dataclass(frozen=True)
class ReplyRules:
    """What the run lets a reply claim."""

    fingerprint: str
    max_update_norm: float
    batch_size: int
    private: bool
    target_epsilon: float


@dataclass(frozen=True)
class SitePrivacy:
    """A site's record-level guarantee for the run, as its last reply with sound figures
    stated it (one rejected for its arrays included: that release left the site too)."""

    epsilon: float
    sampling_rate: float
    noise_multiplier: float
    steps: int


class RejectedAfterFigures(UpdateRejectedError):
    """A reply rejected for its arrays after its DP figures passed their checks: whatever
    else is wrong with it, the site stated what it spent to make it (a rejected release has
    still left the site), and the run's record of that site's spending must not lag it."""

    def __init__(self, reason: str, name: str, privacy: SitePrivacy) -> None:
        super().__init__(reason)
        self.name, self.privacy = name, privacy


class PersonalRejectedAfterFigures(UpdateRejectedError):
    """A personalization reply rejected for its accuracies after its epsilon passed: the
    site fine-tuned and spent that much all the same."""

    def __init__(self, reason: str, name: str, epsilon: float, steps: int) -> None:
        super().__init__(reason)
        self.name, self.epsilon, self.steps = name, epsilon, steps


@dataclass(frozen=True)
class SiteUpdate:
    """A train reply that passed every check (the optional figures come only from sites that
    release exact figures)."""

    node_id: int
    name: str  # as the site asserts it, made safe; the run's label comes from its node id
    arrays: list[np.ndarray]
    num_examples: int
    privacy: SitePrivacy
    train_loss: float | None
    extract_seconds: float
    skipped_images: int | None
    tightened: tuple[str, ...]


@dataclass(frozen=True)
class SiteEvaluation:
    node_id: int
    name: str
    accuracy: float
    num_examples: int


@dataclass(frozen=True)
class SitePersonal:
    """A personalization reply: the site's own head's and the global head's accuracy (both
    absent when the site releases no figures), its epsilon and steps."""

    node_id: int
    name: str
    accuracy: float | None
    global_accuracy: float | None
    epsilon: float
    steps: int


def clean_name(asserted: Any) -> str:
    """A site's self-asserted name made safe to print and to key a report with."""
    name = _NAME_CHARS.sub("_", str(asserted))[:MAX_NAME]
    return name or "site"


def _who(msg: Message) -> str:
    return f"node {msg.metadata.src_node_id}"


def check_structure(content: RecordDict, *, arrays: bool, who: str) -> None:
    """Exactly the records a reply of this kind holds: no more, no fewer."""
    expect_arrays = {protocol.ARRAYS} if arrays else set()
    if set(content.array_records) != expect_arrays:
        raise UpdateRejectedError(f"{who}: reply holds array records "
                                  f"{sorted(content.array_records)[:5]}, not {sorted(expect_arrays)}")
    if set(content.metric_records) != {protocol.METRICS}:
        raise UpdateRejectedError(f"{who}: reply holds metric records "
                                  f"{sorted(content.metric_records)[:5]}, not ['{protocol.METRICS}']")
    if set(content.config_records) != {protocol.SITE}:
        raise UpdateRejectedError(f"{who}: reply holds config records "
                                  f"{sorted(content.config_records)[:5]}, not ['{protocol.SITE}']")


def check_site_record(record: Mapping[str, Any], rules: ReplyRules,
                      who: str) -> tuple[str, tuple[str, ...]]:
    """The site's name and what its policy tightened; its base must be the federation's."""
    keys = set(record)
    if not REQUIRED_SITE_KEYS <= keys <= SITE_KEYS:
        raise UpdateRejectedError(f"{who}: site record has keys {sorted(keys)[:8]}, not "
                                  f"{sorted(SITE_KEYS)}")
    if record[protocol.FINGERPRINT] != rules.fingerprint:
        raise UpdateRejectedError(f"{who}: base fingerprint differs from the federation's")
    tightened = record.get(protocol.TIGHTENED, "")
    if not isinstance(tightened, str) or len(tightened) > 2000:
        raise UpdateRejectedError(f"{who}: its policy note is not a short text")
    return clean_name(record[protocol.SITE_NAME]), tuple(t for t in tightened.split("; ") if t)


def _number(metrics: Mapping[str, Any], key: str, who: str) -> float:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not np.isfinite(value) or value < 0:
        raise UpdateRejectedError(f"{who}: {key} {str(value)[:40]!r} is not a finite number >= 0")
    return float(value)


def _count(metrics: Mapping[str, Any], key: str, who: str) -> int:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UpdateRejectedError(f"{who}: {key} {str(value)[:40]!r} is not a positive integer")
    return value


def check_train_figures(metrics: Mapping[str, Any], rules: ReplyRules,
                        who: str) -> tuple[int, SitePrivacy, float | None, float, int | None]:
    """(count, privacy, train loss, extraction seconds, skipped images) of a train reply.

    The count must be the one the sampling rate was computed from (rate = min(1, batch /
    count)), the DP figures finite, and the epsilon within the run's target.
    """
    keys = set(metrics)
    required, exact = set(protocol.TRAIN_FIGURES), set(protocol.EXACT_TRAIN_FIGURES)
    if not (keys == required or keys == required | exact):
        raise UpdateRejectedError(f"{who}: figures {sorted(keys)[:10]} are not "
                                  f"{sorted(required)} (plus {sorted(exact)} when exact)")
    n = _count(metrics, protocol.NUM_EXAMPLES, who)
    rate = _number(metrics, protocol.SAMPLING_RATE, who)
    if not 0 < rate <= 1:
        raise UpdateRejectedError(f"{who}: sampling rate {rate} is not in (0, 1]")
    expected = min(1.0, rules.batch_size / n)
    if abs(rate - expected) > 1e-9 * max(1.0, expected):
        raise UpdateRejectedError(
            f"{who}: sampling rate {rate:.6g} does not follow from batch {rules.batch_size} "
            f"and its count {n} (expected {expected:.6g})")
    privacy = SitePrivacy(epsilon=_number(metrics, protocol.EPSILON, who), sampling_rate=rate,
                          noise_multiplier=_number(metrics, protocol.NOISE_MULTIPLIER, who),
                          steps=int(_number(metrics, protocol.STEPS, who)))
    if rules.private and (privacy.noise_multiplier <= 0 or privacy.steps < 1
                          or privacy.epsilon > rules.target_epsilon * (1 + 1e-6)):
        raise UpdateRejectedError(
            f"{who}: DP figures (epsilon {privacy.epsilon:.4g}, noise "
            f"{privacy.noise_multiplier:.4g}, steps {privacy.steps}) do not fit the run's "
            f"target of {rules.target_epsilon}")
    if protocol.TRAIN_LOSS not in keys:
        return n, privacy, None, 0.0, None
    return (n, privacy, _number(metrics, protocol.TRAIN_LOSS, who),
            _number(metrics, protocol.EXTRACT_SECONDS, who),
            int(_number(metrics, protocol.SKIPPED_IMAGES, who)))


def check_arrays(arrays: Sequence[np.ndarray], start: Sequence[np.ndarray],
                 rules: ReplyRules, who: str) -> list[np.ndarray]:
    """The head's shapes and dtypes, finite, moved at most the run's norm, and moved at all
    (DP-SGD never returns the head unchanged; client-level clipping divides by the norm)."""
    norm = protocol.check_update(arrays, start, max_norm=rules.max_update_norm, who=who)
    if norm == 0.0:
        raise UpdateRejectedError(f"{who}: its head is the global head unchanged")
    return list(arrays)


def _arrays(content: RecordDict, who: str) -> list[np.ndarray]:
    try:
        return content.array_records[protocol.ARRAYS].to_numpy_ndarrays()
    except Exception as exc:  # an array that does not deserialise is a bad reply, not a crash
        raise UpdateRejectedError(f"{who}: its arrays cannot be read ({exc})") from exc


def check_train_reply(msg: Message, start: Sequence[np.ndarray],
                      rules: ReplyRules) -> SiteUpdate:
    """A train reply as values, or `UpdateRejectedError` saying what is wrong with it."""
    who = _who(msg)
    content = msg.content
    check_structure(content, arrays=True, who=who)
    name, tightened = check_site_record(content.config_records[protocol.SITE], rules, who)
    who = f"{who} ({name})"
    n, privacy, loss, seconds, skipped = check_train_figures(
        content.metric_records[protocol.METRICS], rules, who)
    try:
        arrays = check_arrays(_arrays(content, who), start, rules, who)
    except UpdateRejectedError as exc:
        raise RejectedAfterFigures(str(exc), name, privacy) from exc
    return SiteUpdate(node_id=msg.metadata.src_node_id, name=name, arrays=arrays,
                      num_examples=n, privacy=privacy, train_loss=loss,
                      extract_seconds=seconds, skipped_images=skipped, tightened=tightened)


def check_sums_figures(record: Mapping[str, Any], metrics: Mapping[str, Any],
                       public_fingerprint: str, rules: ReplyRules,
                       who: str) -> tuple[str, tuple[str, ...], int, SitePrivacy]:
    """(name, what its policy tightened, count, privacy) of a one-shot reply: computed in the
    run's public basis, with figures of one Gaussian release within the target."""
    name, tightened = check_site_record(record, rules, who)
    who = f"{who} ({name})"
    if record.get(protocol.PUBLIC_FINGERPRINT) != public_fingerprint:
        raise UpdateRejectedError(f"{who}: its sums are computed with other public statistics "
                                  "than the run's")
    if set(metrics) != set(protocol.TRAIN_FIGURES):
        raise UpdateRejectedError(f"{who}: figures {sorted(metrics)[:10]} are not "
                                  f"{sorted(protocol.TRAIN_FIGURES)}")
    n = _count(metrics, protocol.NUM_EXAMPLES, who)
    privacy = SitePrivacy(epsilon=_number(metrics, protocol.EPSILON, who), sampling_rate=1.0,
                          noise_multiplier=_number(metrics, protocol.NOISE_MULTIPLIER, who),
                          steps=int(_number(metrics, protocol.STEPS, who)))
    if metrics[protocol.SAMPLING_RATE] != 1.0 or privacy.steps != 1:
        raise UpdateRejectedError(f"{who}: a one-shot release is one query of every image")
    if rules.private and (privacy.noise_multiplier <= 0
                          or privacy.epsilon > rules.target_epsilon * (1 + 1e-6)):
        raise UpdateRejectedError(f"{who}: DP figures (epsilon {privacy.epsilon:.4g}, noise "
                                  f"{privacy.noise_multiplier:.4g}) do not fit the run's target "
                                  f"of {rules.target_epsilon}")
    return name, tightened, n, privacy


def check_sums_reply(msg: Message, shapes: list[tuple[int, ...]], public_fingerprint: str,
                     rules: ReplyRules) -> SiteUpdate:
    """A one-shot reply as values: finite float32 arrays of ``shapes`` (`release_shapes`):
    sums and counts, none larger than the site's count allows (rows have norm <= 1) plus the
    noise, and with a second shape the upper triangle of the site's ``Z^T Z``; computed in the
    run's public basis, with figures of one Gaussian release within the target."""
    who = _who(msg)
    content = msg.content
    check_structure(content, arrays=True, who=who)
    name, tightened, n, privacy = check_sums_figures(
        content.config_records[protocol.SITE], content.metric_records[protocol.METRICS],
        public_fingerprint, rules, who)
    try:
        arrays = _release_arrays(content, shapes, n, privacy, f"{who} ({name})")
    except UpdateRejectedError as exc:
        raise RejectedAfterFigures(str(exc), name, privacy) from exc
    return SiteUpdate(node_id=msg.metadata.src_node_id, name=name, arrays=arrays,
                      num_examples=n, privacy=privacy, train_loss=None, extract_seconds=0.0,
                      skipped_images=None, tightened=tightened)


def _release_arrays(content: RecordDict, shapes: list[tuple[int, ...]], n: int,
                    privacy: SitePrivacy, who: str) -> list[np.ndarray]:
    """The release's arrays, checked against the count and noise its figures state."""
    arrays = _arrays(content, who)
    moment = len(shapes) > 1
    if [a.shape for a in arrays] != list(shapes) or any(
            a.dtype != np.float32 or not np.all(np.isfinite(a)) for a in arrays):
        raise UpdateRejectedError(f"{who}: the release must be finite float32 arrays of "
                                  f"shapes {list(shapes)}")
    # Noise-free sum columns have norm <= their class's count, counts are <= the site's;
    # the noise adds ~std sqrt(K) to a column, COUNT_RATIO std to a count.
    std = sums_std(privacy.noise_multiplier, moment)

    def beyond_count(value: float, noise: float) -> bool:
        # The site's count, a margin of 50 and ten noise deviations on top.
        return float(value) > n + 50 + 10 * noise

    if moment:  # rows of norm <= 1: trace(Z^T Z) <= n and every entry is at most n
        k = shapes[0][0] - 1
        diagonal = arrays[1][diagonal_positions(k)]
        if beyond_count(diagonal.sum(), std * np.sqrt(k)) \
                or beyond_count(np.abs(arrays[1]).max(), std):
            raise UpdateRejectedError(f"{who}: its second moment is larger than its count "
                                      "allows")
    sums, counts = arrays[0][:-1], arrays[0][-1]
    if beyond_count(np.linalg.norm(sums, axis=0).max(), std * np.sqrt(shapes[0][0])):
        raise UpdateRejectedError(f"{who}: a class sum is longer than its count allows")
    if beyond_count(np.abs(counts).max(), COUNT_RATIO * std):
        raise UpdateRejectedError(f"{who}: a class count exceeds its example count")
    return arrays


def _figures_reply(msg: Message, rules: ReplyRules) -> tuple[str, str, Mapping[str, Any]]:
    """(who, name, figures) of a reply that carries figures and no arrays."""
    who = _who(msg)
    content = msg.content
    check_structure(content, arrays=False, who=who)
    name, _ = check_site_record(content.config_records[protocol.SITE], rules, who)
    return who, name, content.metric_records[protocol.METRICS]


def check_evaluation_reply(msg: Message, rules: ReplyRules) -> SiteEvaluation:
    who, name, metrics = _figures_reply(msg, rules)
    if set(metrics) != EVALUATION_KEYS:
        raise UpdateRejectedError(f"{who} ({name}): evaluation figures {sorted(metrics)[:5]} "
                                  f"are not {sorted(EVALUATION_KEYS)}")
    accuracy = _number(metrics, protocol.ACCURACY, who)
    if accuracy > 1.0:
        raise UpdateRejectedError(f"{who} ({name}): accuracy {accuracy} is above 1")
    return SiteEvaluation(msg.metadata.src_node_id, name, accuracy,
                          _count(metrics, protocol.NUM_EXAMPLES, who))


def check_personal_reply(msg: Message, rules: ReplyRules) -> SitePersonal:
    who, name, metrics = _figures_reply(msg, rules)
    keys = set(metrics)
    if keys not in (PERSONAL_KEYS, PERSONAL_KEYS | PERSONAL_ACCURACIES):
        raise UpdateRejectedError(f"{who} ({name}): personalization figures {sorted(keys)[:6]}"
                                  f" are not {sorted(PERSONAL_KEYS | PERSONAL_ACCURACIES)}")
    epsilon = _number(metrics, protocol.EPSILON, who)
    if rules.private and epsilon > rules.target_epsilon * (1 + 1e-6):
        raise UpdateRejectedError(f"{who} ({name}): epsilon {epsilon:.4g} is past the run's "
                                  f"target of {rules.target_epsilon}")
    _count(metrics, protocol.NUM_EXAMPLES, who)
    steps = int(_number(metrics, protocol.STEPS, who))
    try:
        accuracies = [(_number(metrics, k, who) if k in keys else None)
                      for k in (protocol.ACCURACY, protocol.GLOBAL_ACCURACY)]
        if any(a is not None and a > 1.0 for a in accuracies):
            raise UpdateRejectedError(f"{who} ({name}): an accuracy is above 1")
    except UpdateRejectedError as exc:
        raise PersonalRejectedAfterFigures(str(exc), name, epsilon, steps) from exc
    return SitePersonal(msg.metadata.src_node_id, name, accuracies[0], accuracies[1], epsilon,
                        steps)


def split_legacy(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A legacy (SecAgg+) reply's metrics as (site record, figures): a legacy reply has no
    room for the site record, so its strings travel among the metrics."""
    site = {k: v for k, v in metrics.items() if k in SITE_KEYS}
    return site, {k: v for k, v in metrics.items() if k not in SITE_KEYS}


def capped_weights(counts: Sequence[int], ratio: float) -> list[int]:
    """Each site's weight in the average: its count, at most ``ratio`` times the median of
    the *other* sites' counts, so that no single reply can claim the whole average
    (``ratio`` 0: no cap; a lone site is not capped)."""
    if ratio <= 0 or len(counts) < 2:
        return list(counts)
    out = []
    for i, n in enumerate(counts):
        others = [c for j, c in enumerate(counts) if j != i]
        out.append(max(1, min(n, int(ratio * statistics.median(others)))))
    return out


def rebuilt(msg: Message, arrays: list[np.ndarray] | None, weight: int,
            figures: Mapping[str, float] | None = None) -> Message:
    """A checked reply with the fixed keys aggregation expects (nothing else travels on)."""
    content = RecordDict({protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: weight,
                                                          **(figures or {})})})
    if arrays is not None:
        content[protocol.ARRAYS] = ArrayRecord(arrays)
    return Message(content=content, metadata=msg.metadata)
