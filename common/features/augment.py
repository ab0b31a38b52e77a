"""Augmented views of images, precomputed so that training can stay on cached features.

View 0 is the image itself; view k > 0 is a horizontal flip (with probability 1/2) and a
shift of up to an eighth of the side with reflected borders, drawn from a generator seeded
by the image digest and k, so the same image gets the same view on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECIPE = "flip0.5+shift1/8-reflect:v1"


def view_name(view: int) -> str:
    """What the cache calls view ``view`` (0: the image itself)."""
    return "original" if view == 0 else f"{RECIPE}#{view}"


def augmented(pixels: np.ndarray, digests: Sequence[str], view: int) -> np.ndarray:
    """View ``view`` of each image in ``pixels`` (N x H x W x C uint8)."""
    if view == 0:
        return pixels
    out = np.empty_like(pixels)
    size = pixels.shape[1]
    reach = max(1, size // 8)
    for i, (image, digest) in enumerate(zip(pixels, digests, strict=True)):
        rng = np.random.default_rng([int(digest[:16], 16), view])
        if rng.random() < 0.5:
            image = image[:, ::-1]
        dy, dx = rng.integers(-reach, reach + 1, 2)
        padded = np.pad(image, ((reach, reach), (reach, reach), (0, 0)), mode="reflect")
        out[i] = padded[reach + dy: reach + dy + size, reach + dx: reach + dx + size]
    return out
