"""Feature statistics from public images, so features are standardised without private data.

Standardising the pooled VGG16 features lifts DP accuracy by about 10 points on CIFAR-10
(README, "Choosing the defaults"), but statistics of a site's own images would be a release
of private information. These come from random crops of the two public photographs that
scikit-learn ships (`sklearn.datasets.load_sample_images`), identical at every site.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

RECIPE = "sklearn-sample-images|crops=512|seed=0|flip"
NUM_CROPS = 512


def public_crops(image_size: int, num_crops: int = NUM_CROPS, seed: int = 0) -> np.ndarray:
    """``num_crops`` random square crops (uint8 RGB) of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = np.empty((num_crops, image_size, image_size, 3), dtype=np.uint8)
    for k in range(num_crops):
        photo = photos[k % len(photos)]
        side = int(rng.integers(24, 200))
        top = int(rng.integers(0, photo.shape[0] - side))
        left = int(rng.integers(0, photo.shape[1] - side))
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        crop = crop.resize((image_size, image_size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops[k] = np.asarray(crop)
    return crops


def feature_stats(featurize: Callable[[np.ndarray], np.ndarray],
                  image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance of ``featurize`` over the public crops."""
    features = featurize(public_crops(image_size).astype(np.float32))
    variance = np.maximum(features.var(axis=0), 1e-12)
    return features.mean(axis=0).astype(np.float32), variance.astype(np.float32)
