"""Settings of a site's local SGD, kept apart from `common.privacy.dp` so that reading them needs no
TensorFlow (a site decides whether it may train before it loads the heavy machinery)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SgdSettings:
    """One site's local training: DP-SGD when ``private``, plain SGD otherwise."""

    sampling_rate: float
    steps: int
    learning_rate: float
    momentum: float
    private: bool
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    # FedProx (Li et al., arXiv 1812.06127): mu/2 * ||w - w_global||^2 added to the mean loss.
    # Its gradient depends on no example, so it is added after clipping and noise.
    proximal_mu: float = 0.0
    # The divisor of each step's noisy gradient sum: sampling rate x the site's *released*
    # count (0: sampling rate x the number of examples trained on, for non-private runs).
    expected_batch: float = 0.0
    # Only the head's output bias moves (a site's personal fine-tuning): the other variables'
    # noisy gradients are computed and discarded, post-processing of the same mechanism.
    bias_only: bool = False

    @property
    def noise_swamps(self) -> str | None:
        """Why DP-SGD cannot learn at this site, if its noise outweighs every gradient.

        Each step's noise on the averaged gradient has std ``noise_multiplier /
        expected_batch`` clip norms *on every weight*, while the averaged clipped gradient
        is at most one clip norm long in all: past a ratio of 1 no gradient can show through
        (a bound, not a guess of how small a site may be)."""
        if not self.private or self.expected_batch <= 0:
            return None
        ratio = self.noise_multiplier / self.expected_batch
        if ratio <= 1.0:
            return None
        return (f"DP-SGD's noise on each weight ({ratio:.3g} clip norms a step, noise multiplier "
                f"{self.noise_multiplier:.3g} over an expected batch of "
                f"{self.expected_batch:.3g} images) exceeds any gradient it averages: this "
                "site's training will add noise, not learning (more images or a larger "
                "--target-epsilon would help)")
