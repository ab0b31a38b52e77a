"""Acquisition shift: each simulated site sees its images through its own camera or scanner.

A `Shift` is one corruption (blur, sensor noise, colour cast, contrast loss, JPEG quality,
rotation) at a severity 1..5, applied to the decoded, resized image before the frozen base
sees it. Everything random is drawn from the site's shift seed and the image's content
digest, so a site sees the same images on every run and machine (and the feature cache can
key them). Severity tables follow the spirit of ImageNet-C (Hendrycks & Dietterich, 2019),
scaled for small images.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from common.errors import ConfigError

RECIPE = "v1"
KINDS = ("blur", "noise", "color", "contrast", "jpeg", "rotate")
_BLUR_RADIUS = (0.5, 0.8, 1.1, 1.5, 2.0)  # pixels at 32 px; scaled with the image side
_NOISE_STD = (10.0, 18.0, 28.0, 40.0, 55.0)  # on the 0..255 scale
_CAST_GAIN = (0.12, 0.22, 0.32, 0.42, 0.55)  # channel gain swing
_CONTRAST = (0.7, 0.55, 0.42, 0.32, 0.24)  # blend factor towards the image mean
_JPEG_QUALITY = (40, 25, 15, 10, 6)
_ROTATE_DEGREES = (8.0, 15.0, 22.0, 30.0, 40.0)


@dataclass(frozen=True)
class Shift:
    """One site's acquisition change."""

    kind: str
    severity: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown shift {self.kind!r}; known: {', '.join(KINDS)}")
        if not 1 <= self.severity <= 5:
            raise ConfigError(f"shift severity must be in 1..5. Found {self.severity}.")

    @property
    def name(self) -> str:
        """A stable description; also what the feature cache keys shifted images by."""
        return f"{self.kind}:{self.severity}:seed{self.seed}:{RECIPE}"

    def apply(self, pixels: np.ndarray, digests: Sequence[str]) -> np.ndarray:
        """The shifted copy of ``pixels`` (N x H x W x 3 uint8)."""
        out = np.empty_like(pixels)
        for i, (image, digest) in enumerate(zip(pixels, digests, strict=True)):
            rng = np.random.default_rng([self.seed, int(digest[:16], 16)])
            out[i] = _apply_one(self, image, rng)
        return out

    def site_constants(self) -> np.random.Generator:
        """Draws shared by all of a site's images (its cast, its rotation direction)."""
        return np.random.default_rng([self.seed, 0xC0FFEE])


def _apply_one(shift: Shift, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    level = shift.severity - 1
    side = image.shape[0]
    x = image.astype(np.float32)
    if shift.kind == "blur":
        radius = _BLUR_RADIUS[level] * side / 32.0
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
    if shift.kind == "noise":
        x = x + rng.normal(0.0, _NOISE_STD[level], x.shape)
    elif shift.kind == "color":
        direction = shift.site_constants().normal(size=3)
        direction /= np.linalg.norm(direction)
        x = x * (1.0 + _CAST_GAIN[level] * direction * np.sqrt(3.0))
    elif shift.kind == "contrast":
        mean = x.mean(axis=(0, 1), keepdims=True)
        x = mean + (x - mean) * _CONTRAST[level]
    elif shift.kind == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=_JPEG_QUALITY[level])
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    elif shift.kind == "rotate":
        sign = 1.0 if shift.site_constants().random() < 0.5 else -1.0
        # A tilted mount: the site's fixed angle, +-20% jitter per image.
        angle = sign * _ROTATE_DEGREES[level] * rng.uniform(0.8, 1.2)
        return np.asarray(Image.fromarray(image).rotate(angle, resample=Image.BILINEAR))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def site_shifts(num_sites: int, max_severity: int, seed: int) -> tuple[list[Shift], Shift]:
    """Each training site's shift and the shift of a held-out site no one trains on.

    The kinds are a seeded permutation: the last one is kept for the unseen site at full
    ``max_severity``; training sites cycle through the others, each at a severity drawn in
    1..``max_severity``.
    """
    if not 1 <= max_severity <= 5:
        raise ConfigError(f"--shift-severity must be in 1..5. Found {max_severity}.")
    rng = np.random.default_rng([seed, 0x5EED])
    kinds = [KINDS[i] for i in rng.permutation(len(KINDS))]
    trained, unseen = kinds[:-1], kinds[-1]
    shifts = [Shift(trained[i % len(trained)], int(rng.integers(1, max_severity + 1)),
                    seed=seed * 1000 + i) for i in range(num_sites)]
    return shifts, Shift(unseen, max_severity, seed=seed * 1000 + 999)
