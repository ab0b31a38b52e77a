"""The server's record of a run: each round, each site's guarantee, the global head.

One object owns this state; the strategy wrapper, secure aggregation, personalization and the
report read and write it only through its methods, and a checkpoint is its `snapshot`.
Sites are known by their Flower node id: the name a site asserts labels it in the report,
but cannot take over another node's figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from common import protocol
from common.report import RoundRecord
from common.errors import UpdateRejectedError
from server.replies import (RejectedAfterFigures, SiteEvaluation, SitePrivacy,
                            SiteUpdate)

log = logging.getLogger("fedtl.server")


def site_summary(per_site: dict[str, float]) -> dict[str, float | None]:
    """Mean (unweighted: every site counts once), worst and spread of per-site accuracies."""
    values = np.array(list(per_site.values()), dtype=np.float64)
    if values.size == 0:
        return {"mean_site_accuracy": None, "worst_site_accuracy": None,
                "site_accuracy_std": None}
    return {"mean_site_accuracy": float(values.mean()),
            "worst_site_accuracy": float(values.min()),
            "site_accuracy_std": float(values.std())}


class RunBook:
    """History, per-site privacy and figures, site labels, and the global head of one run."""

    def __init__(self, head: list[np.ndarray],
                 on_round: Callable[[RoundRecord], None] | None = None) -> None:
        self.head = list(head)  # the global head after the last aggregated round
        self.on_round = on_round
        self.history: list[RoundRecord] = []
        self.privacy: dict[str, SitePrivacy] = {}
        self.skipped: dict[str, int] = {}
        self.tightened: dict[str, list[str]] = {}
        self.extract_seconds = 0.0
        self.names: dict[int, str] = {}
        self.round_offset = 0
        # The sites' summed one-shot release and the count it was solved with: what sites
        # with --personal-tuning ridge build their own heads from.
        self.one_shot: tuple[list[np.ndarray], float] | None = None
        self._start: list[np.ndarray] = list(head)
        self._losses: list[tuple[float, int]] = []
        self._round_started = time.monotonic()

    # --- who is who ---------------------------------------------------------------------
    def label(self, node_id: int, asserted: str | None = None) -> str:
        """The run's name for ``node_id``: the first name it asserted, unless another node
        holds it already; a node cannot change its name, or take another's, mid-run."""
        if node_id in self.names:
            return self.names[node_id]
        name = asserted or f"node-{node_id}"
        if name in self.names.values():
            name = f"{name}@node-{node_id}"
        self.names[node_id] = name
        return name

    def known(self, node_id: int) -> str:
        """A node's label if it has one, else how to name it in a warning."""
        return self.names.get(node_id, f"node {node_id}")

    @property
    def epsilon_by_site(self) -> dict[str, float]:
        return {site: p.epsilon for site, p in self.privacy.items()}

    # --- a round ------------------------------------------------------------------------
    @property
    def start_head(self) -> list[np.ndarray]:
        """The head this round's sites started from (every update is measured against it)."""
        return self._start

    @property
    def current(self) -> RoundRecord:
        return self.history[-1]

    def run_round(self, server_round: int) -> int:
        """The run's round number for this process's ``server_round`` (resumed runs go on)."""
        return server_round + self.round_offset

    def begin_round(self, server_round: int, head: list[np.ndarray]) -> RoundRecord:
        self._start = list(head)
        self.head = list(head)
        self.history.append(RoundRecord(round=self.run_round(server_round)))
        self._round_started = time.monotonic()
        self._losses = []
        return self.current

    def accept(self, update: SiteUpdate) -> str:
        """Count an update that passed every check; returns the site's label."""
        site = self.label(update.node_id, update.name)
        self.current.sites_trained.append(site)
        if update.train_loss is not None:
            self._losses.append((update.train_loss, update.num_examples))
        self.privacy[site] = update.privacy
        self.extract_seconds += update.extract_seconds
        if update.skipped_images is not None:
            self.skipped[site] = update.skipped_images
        if update.tightened:
            self.tightened[site] = list(update.tightened)
        return site

    def reject(self, node_id: int, error: UpdateRejectedError, inside_sum: bool = False) -> None:
        """A reply left out of the round (``inside_sum``: only its figures; its masked update
        is inside a SecAgg+ sum). If its DP figures passed their checks, they stand as the
        site's spending: the reply left the site whatever is wrong with its arrays, and a
        report of what sites spent must not show less than their ledgers."""
        spent = ""
        if isinstance(error, RejectedAfterFigures):
            site = self.label(node_id, error.name)
            before = self.privacy.get(site)
            if before is None or error.privacy.epsilon >= before.epsilon:
                self.privacy[site] = error.privacy
                spent = f" (its stated spending stands: epsilon {error.privacy.epsilon:.3f})"
        if inside_sum:
            self.current.unconfirmed.append(self.known(node_id))
            log.warning("round %d: rejected the figures of %s, whose masked update is inside "
                        "the secure sum (SecAgg+ cannot take one site's out): %s%s",
                        self.current.round, self.known(node_id), error, spent)
            return
        self.current.rejected.append(self.known(node_id))
        log.warning("round %d: rejected the reply of %s: %s%s", self.current.round,
                    self.known(node_id), error, spent)

    def note_error(self, node_id: int | None, code: int, reason: str) -> None:
        """A site that answered with an error: declined (budget), refused (policy) or failed
        (``node_id`` None: a SecAgg+ dropout, which Flower does not name)."""
        who = "a site" if node_id is None else self.known(node_id)
        kind = {protocol.BUDGET_EXHAUSTED: self.current.declined,
                protocol.POLICY_REFUSED: self.current.refused}.get(code, self.current.rejected)
        kind.append(who)
        log.warning("round %d: %s did not train: %s", self.current.round, who, reason)

    def fail_round(self, reason: str) -> None:
        """Aggregation failed: the head stays as it was and the round says why."""
        self.current.failure = reason
        self.head = list(self._start)
        log.error("round %d: aggregation failed (%s); the global head stays as it was",
                     self.current.round, reason)

    def close_training(self, head: list[np.ndarray] | None) -> None:
        """The round's training figures, and its new head if one was aggregated."""
        if head is not None:
            self.head = [a.astype(g.dtype) for a, g in zip(head, self._start, strict=True)]
        record = self.current
        total = sum(n for _, n in self._losses)
        record.train_loss = (sum(loss * n for loss, n in self._losses) / total
                             if total else None)
        record.epsilon_max = max(self.epsilon_by_site.values(), default=0.0)
        self._losses = []

    def note_personalization(self, site: str, epsilon: float, steps: int) -> None:
        """A site's guarantee after its personal fine-tuning (same run, same ledger entry,
        so never below what the site stated before: a lower figure is kept out)."""
        before = self.privacy.get(site)
        if before is not None and epsilon >= before.epsilon:
            self.privacy[site] = replace(before, epsilon=epsilon, steps=steps)

    def record_accuracy(self, evaluation: SiteEvaluation) -> str:
        site = self.label(evaluation.node_id, evaluation.name)
        self.current.site_accuracy[site] = evaluation.accuracy
        self.current.site_held_out[site] = evaluation.num_examples
        return site

    def close_round(self, accuracy: float | None) -> None:
        """Finish the round's record with its weighted ``accuracy`` and hand it on."""
        record = self.current
        record.seconds = time.monotonic() - self._round_started
        record.accuracy = accuracy
        summary = site_summary(record.site_accuracy)
        record.mean_site_accuracy = summary["mean_site_accuracy"]
        record.worst_site_accuracy = summary["worst_site_accuracy"]
        record.site_accuracy_std = summary["site_accuracy_std"]
        if self.on_round is not None:
            self.on_round(record)

    # --- checkpoints --------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Everything needed to go on after the last closed round: JSON-able state and the
        head's arrays."""
        state = {"rounds_done": self.history[-1].round if self.history else self.round_offset,
                 "history": [asdict(r) for r in self.history],
                 "privacy": {k: asdict(v) for k, v in self.privacy.items()},
                 "skipped": dict(self.skipped), "tightened": dict(self.tightened),
                 "extract_seconds": self.extract_seconds,
                 "names": {str(k): v for k, v in self.names.items()},
                 "one_shot_count": self.one_shot[1] if self.one_shot else None}
        return state, list(self.head)

    def restore(self, state: dict[str, Any], head: list[np.ndarray],
                one_shot: list[np.ndarray] | None = None) -> None:
        """Go on from a `snapshot` (its rounds are kept, not redone) and the one-shot totals
        kept beside it."""
        self.head = list(head)
        self._start = list(head)
        self.round_offset = int(state["rounds_done"])
        self.history = [RoundRecord(**r) for r in state["history"]]
        self.privacy = {k: SitePrivacy(**v) for k, v in state["privacy"].items()}
        self.skipped = {k: int(v) for k, v in state["skipped"].items()}
        self.tightened = {k: list(v) for k, v in state.get("tightened", {}).items()}
        self.extract_seconds = float(state["extract_seconds"])
        self.names = {int(k): str(v) for k, v in state.get("names", {}).items()}
        count = state.get("one_shot_count")
        self.one_shot = (list(one_shot), float(count)) if one_shot and count else None
