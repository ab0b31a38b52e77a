"""Checks every update passes before the server may average it."""

import numpy as np
import pytest

from common.errors import UpdateRejectedError
from common.protocol import check_update

REFERENCE = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]


def test_a_sane_update_passes_and_its_norm_is_returned() -> None:
    update = [np.full((4, 3), 0.5, np.float32), np.zeros(3, np.float32)]
    assert check_update(update, REFERENCE, max_norm=10, who="a") == pytest.approx(np.sqrt(3.0))


@pytest.mark.parametrize(("update", "reason"), [
    ([np.zeros((4, 3), np.float32)], "1 arrays"),
    ([np.zeros((3, 4), np.float32), np.zeros(3, np.float32)], "shape"),
    ([np.zeros((4, 3), np.float64), np.zeros(3, np.float32)], "dtype"),
    ([np.full((4, 3), np.nan, np.float32), np.zeros(3, np.float32)], "NaN"),
    ([np.full((4, 3), np.inf, np.float32), np.zeros(3, np.float32)], "NaN or Inf"),
    ([np.full((4, 3), 1e6, np.float32), np.zeros(3, np.float32)], "norm"),
])
def test_malformed_or_poisoned_updates_are_rejected(update: list, reason: str) -> None:
    with pytest.raises(UpdateRejectedError, match=reason):
        check_update(update, REFERENCE, max_norm=100.0, who="site-x")
