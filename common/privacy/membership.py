"""Empirical privacy check of a trained model: tensorflow-privacy's membership-inference
attacks on images it was trained on (members) against images it never saw (non-members).

An attack's AUC near 0.5 and advantage near 0 mean it cannot tell the two apart; an
overfit model leaks membership through lower loss and higher confidence on its members.
An audit is a lower bound on leakage (a stronger attack may do better), not a proof of DP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.features.evaluation import load_model, predict_folder

# Loss-threshold (Yeom et al., arXiv 1709.01604) and a trained logistic-regression attack on
# the loss and probabilities (Shokri et al., arXiv 1610.05820), as tensorflow-privacy names them.
ATTACKS = ("THRESHOLD_ATTACK", "LOGISTIC_REGRESSION")


@dataclass(frozen=True)
class AuditResult:
    """The strongest attack's AUC and advantage (max |TPR - FPR|), and every attack's."""

    auc: float
    advantage: float
    attack: str
    members: int
    nonmembers: int
    model: str
    attacks: dict[str, dict[str, float]] = field(default_factory=dict)
    member_accuracy: float = 0.0
    nonmember_accuracy: float = 0.0


def run_attacks(probs_in: np.ndarray, labels_in: np.ndarray, probs_out: np.ndarray,
                labels_out: np.ndarray) -> dict[str, dict[str, float]]:
    """AUC and attacker advantage of each attack in `ATTACKS` on these probabilities."""
    from common.privacy.tf_privacy import membership_inference

    mia, structures = membership_inference()
    data = structures.AttackInputData(probs_train=probs_in, probs_test=probs_out,
                                      labels_train=labels_in, labels_test=labels_out)
    # Its epsilon lower bounds divide by empty confusion-matrix cells at extreme thresholds.
    with np.errstate(divide="ignore", invalid="ignore"):
        results = mia.run_attacks(
            data, structures.SlicingSpec(entire_dataset=True, by_class=False),
            attack_types=[structures.AttackType[name] for name in ATTACKS])
    out: dict[str, dict[str, float]] = {}
    for single in results.single_attack_results:
        out[single.attack_type.name] = {"auc": float(single.get_auc()),
                                        "advantage": float(single.get_attacker_advantage())}
    return out


def audit(model_path: Path, members: str, nonmembers: str, *,
          skip_bad: bool = False) -> AuditResult:
    """Attack ``model_path`` with ``members`` (its training images) and ``nonmembers``."""
    model = load_model(model_path)
    inside = predict_folder(model, model_path, members, skip_bad=skip_bad)
    outside = predict_folder(model, model_path, nonmembers, skip_bad=skip_bad)
    if inside.classes != outside.classes:
        raise DataError(f"members ({members}) and non-members ({nonmembers}) have different "
                        f"class folders: {list(inside.classes)} vs {list(outside.classes)}")
    for name, scored, folder in (("members", inside, members),
                                 ("non-members", outside, nonmembers)):
        if len(scored.labels) < 10:
            raise DataError(f"{name} folder {folder} has {len(scored.labels)} readable images; "
                            "an attack needs at least 10 on each side")
    attacks = run_attacks(inside.probabilities, inside.labels, outside.probabilities,
                          outside.labels)
    best = max(attacks, key=lambda name: attacks[name]["auc"])
    return AuditResult(
        auc=attacks[best]["auc"], advantage=attacks[best]["advantage"], attack=best,
        members=len(inside.labels), nonmembers=len(outside.labels), model=str(model_path),
        attacks=attacks,
        member_accuracy=float(np.mean(np.argmax(inside.probabilities, 1) == inside.labels)),
        nonmember_accuracy=float(np.mean(np.argmax(outside.probabilities, 1) == outside.labels)))
