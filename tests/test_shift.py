"""Acquisition shifts: deterministic per site and image, different across sites, real changes."""

import numpy as np
import pytest

from common.errors import ConfigError
from common.data.shift import KINDS, Shift, site_shifts

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
DIGESTS = ["a" * 64, "b" * 64, "c" * 64]


@pytest.mark.parametrize("kind", KINDS)
def test_each_shift_is_deterministic_and_changes_the_image(kind: str) -> None:
    shift = Shift(kind, 3, seed=5)
    first = shift.apply(IMAGES, DIGESTS)
    assert first.dtype == np.uint8 and first.shape == IMAGES.shape
    assert np.array_equal(first, shift.apply(IMAGES, DIGESTS))
    assert np.mean(np.abs(first.astype(int) - IMAGES)) > 2.0


@pytest.mark.parametrize("kind", KINDS)
def test_higher_severity_moves_the_image_further(kind: str) -> None:
    smooth = np.repeat(np.repeat(IMAGES[:, ::4, ::4], 4, axis=1), 4, axis=2)  # photo-like

    def distance(severity: int) -> float:
        shifted = Shift(kind, severity, seed=1).apply(smooth, DIGESTS)
        return float(np.mean(np.abs(shifted.astype(int) - smooth)))

    assert distance(5) > distance(1)


def test_noise_depends_on_the_image_digest_and_the_site_seed() -> None:
    same = np.repeat(IMAGES[:1], 2, axis=0)
    a = Shift("noise", 3, seed=1).apply(same, DIGESTS[:2])
    assert not np.array_equal(a[0], a[1])
    b = Shift("noise", 3, seed=2).apply(same, DIGESTS[:2])
    assert not np.array_equal(a[0], b[0])


def test_site_shifts_are_seeded_and_keep_the_unseen_kind_out_of_training() -> None:
    shifts, unseen = site_shifts(12, 4, seed=3)
    again, unseen_again = site_shifts(12, 4, seed=3)
    assert shifts == again and unseen == unseen_again
    assert unseen.kind not in {s.kind for s in shifts}
    assert unseen.severity == 4 and all(1 <= s.severity <= 4 for s in shifts)
    assert len({s.kind for s in shifts}) == len(KINDS) - 1
    assert len({s.name for s in shifts}) == 12  # every site its own seed, so its own cache


def test_bad_shift_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown shift"):
        Shift("fog", 1)
    with pytest.raises(ConfigError, match="severity"):
        Shift("blur", 6)
    with pytest.raises(ConfigError, match="shift-severity"):
        site_shifts(3, 0, seed=0)
