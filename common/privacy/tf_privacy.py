"""The one place fedtl imports tensorflow_privacy (and its empirical-privacy add-on).

tensorflow_privacy's package ``__init__`` imports the Estimator API that TF >= 2.16 removed;
``sys.skip_tf_privacy_import`` is its own escape hatch, after which the submodules in use are
imported directly. The rest of fedtl imports them from here.
"""

from __future__ import annotations

import sys
from types import ModuleType

sys.skip_tf_privacy_import = True  # type: ignore[attr-defined]

from tensorflow_privacy.privacy.fast_gradient_clipping import (  # noqa: E402
    clip_grads,
    gradient_clipping_utils,
    layer_registry,
)

__all__ = ["clip_grads", "gradient_clipping_utils", "layer_registry", "membership_inference",
           "dp_optimizer_keras"]


def membership_inference() -> tuple[ModuleType, ModuleType]:
    """tensorflow-privacy's membership-inference attack module and its data structures
    (package tensorflow-empirical-privacy), imported on first use."""
    import joblib
    import sklearn.metrics
    import sklearn.utils
    from sklearn.metrics import _ranking

    # The package (2023) uses two scikit-learn internals that later releases removed; both
    # still exist under public names, so they are put back as the same functions.
    if not hasattr(sklearn.utils, "parallel_backend"):  # a re-export of joblib's, gone in 1.5
        sklearn.utils.parallel_backend = joblib.parallel_backend  # type: ignore[attr-defined]
    if not hasattr(_ranking, "_binary_clf_curve"):  # public since 1.8 with two more outputs

        def _binary_clf_curve(y_true, y_score, pos_label=None,  # type: ignore[no-untyped-def]
                              sample_weight=None):
            _, fps, _, tps, thresholds = sklearn.metrics.confusion_matrix_at_thresholds(
                y_true, y_score, pos_label=pos_label, sample_weight=sample_weight)
            return fps, tps, thresholds

        _ranking._binary_clf_curve = _binary_clf_curve  # type: ignore[attr-defined]
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import (
        data_structures,
        membership_inference_attack,
    )

    return membership_inference_attack, data_structures


def dp_optimizer_keras() -> ModuleType:
    """tensorflow-privacy's classic Keras DP optimizers (the benchmark's naive baseline)."""
    from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras as module

    return module
