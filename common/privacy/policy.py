"""A site's own policy: the least privacy and the most resources it grants any run.

Everything a run asks of a site comes from the server, which the site does not trust. Before a
site touches its data for a run, `admit` holds the run against the site's policy: a run that
asks for less privacy is tightened to the policy (or refused, if the site says so), a run
beyond the site's resource bounds or without DP (unless the site allows it) is refused. No
setting from the server can loosen what the site declared.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import ConfigError
from common.kebab import from_kebab
from common.privacy.ledger import SiteBudget
from common.privacy.release import COUNT_MODES, METRIC_MODES

if TYPE_CHECKING:
    from common.config import RunConfig

ACTIONS = ("tighten", "refuse")
ADMITTED, TIGHTENED, REFUSED = "admitted", "tightened", "refused"
# Releases from the least to the most private: a policy names the loosest it allows.
_COUNT_ORDER = ("exact", "rounded", "noised")
_METRIC_ORDER = ("exact", "noised", "none")


@dataclass(frozen=True)
class SitePolicy:
    """What a site grants any run. The defaults are the safe ones."""

    allow_no_dp: bool = False  # admit runs without record-level DP (the ledger then says so)
    max_run_epsilon: float = 3.0  # the most epsilon one run may spend here
    min_noise_multiplier: float = 0.5  # DP-SGD never runs with less noise
    max_sampling_rate: float = 1.0  # Poisson sampling rate of a step (batch / count)
    example_counts: str = "noised"  # the loosest count release allowed (exact < rounded < noised)
    site_metrics: str = "noised"  # the loosest figure release allowed (exact < noised < none)
    require_secure_aggregation: bool = False
    # 0: the one-shot release carries all its noise here. N >= 2: under secure aggregation
    # whose every sum needs at least N sites, the site adds 1/N of the noise variance and
    # trusts the others to add theirs (a weaker guarantee on its own: docs/private-accuracy.md,
    # "Distributed noise").
    distributed_noise_sites: int = 0
    # A personal head fitted to this site's images without noise (--personal-tuning joint)
    # releases nothing, but is a model file here that is not DP for these images; without
    # this, such a run plays the DP-released `ridge` personal head instead.
    allow_joint_personal_heads: bool = False
    on_violation: str = "tighten"  # a run asking for less privacy: tighten it, or refuse it
    require_approval: bool = False  # admit only runs approved with `fedtl approve`
    approved_runs: tuple[str, ...] = ()  # run-id patterns approved in advance (fnmatch)
    # Resource bounds: a run beyond them is refused (they cannot be tightened without
    # changing the model every site must share).
    max_image_size: int = 224
    max_head_width: int = 1024
    max_rounds: int = 1000
    max_local_epochs: int = 20
    max_personal_epochs: int = 20
    max_batch_size: int = 65536
    max_augment_views: int = 16

    def __post_init__(self) -> None:
        checks = [
            (math.isfinite(self.max_run_epsilon) and self.max_run_epsilon > 0
             or self.max_run_epsilon == math.inf,
             f"max-run-epsilon must be positive. Found {self.max_run_epsilon}."),
            (0 <= self.min_noise_multiplier < 1e3,
             f"min-noise-multiplier must be in [0, 1000). Found {self.min_noise_multiplier}."),
            (0 < self.max_sampling_rate <= 1,
             f"max-sampling-rate must be in (0, 1]. Found {self.max_sampling_rate}."),
            (self.example_counts in COUNT_MODES,
             f"example-counts must be one of {COUNT_MODES}. Found {self.example_counts!r}."),
            (self.site_metrics in METRIC_MODES,
             f"site-metrics must be one of {METRIC_MODES}. Found {self.site_metrics!r}."),
            (self.on_violation in ACTIONS,
             f"on-violation must be one of {ACTIONS}. Found {self.on_violation!r}."),
        ]
        checks.append((isinstance(self.distributed_noise_sites, int)
                       and (self.distributed_noise_sites == 0
                            or self.distributed_noise_sites >= 2),
                       "distributed-noise-sites must be 0 (off) or at least 2. "
                       f"Found {self.distributed_noise_sites!r}."))
        for name in ("max_image_size", "max_head_width", "max_rounds", "max_local_epochs",
                     "max_personal_epochs", "max_batch_size", "max_augment_views"):
            value = getattr(self, name)
            checks.append((isinstance(value, int) and value >= 0,
                           f"{name.replace('_', '-')} must be a whole number >= 0. "
                           f"Found {value!r}."))
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"site policy: {message}")

    @classmethod
    def unrestricted(cls) -> SitePolicy:
        """A simulated site's: one user plays every site, so the command line is its policy."""
        return cls(allow_no_dp=True, max_run_epsilon=math.inf, min_noise_multiplier=0.0,
                   example_counts="exact", site_metrics="exact", max_image_size=1 << 30,
                   max_head_width=1 << 30, max_rounds=1 << 30, max_local_epochs=1 << 30,
                   max_personal_epochs=1 << 30, max_batch_size=1 << 30,
                   max_augment_views=1 << 30, allow_joint_personal_heads=True)

    @classmethod
    def from_mapping(cls, values: dict[str, Any], where: str = "site policy") -> SitePolicy:
        """Kebab-case keys (as in a policy file); unknown keys are refused, naming them."""
        return from_kebab(cls, values, lambda name, value, f: _coerce(name, value, str(f.type),
                                                                     where), f"{where}: ")

    @classmethod
    def load(cls, path: Path) -> SitePolicy:
        """A policy file in TOML (see the README's example for a hospital)."""
        try:
            values = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read the site policy {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"site policy {path} is not valid TOML: {exc}") from exc
        return cls.from_mapping(values, where=f"site policy {path}")

    def to_mapping(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): (list(v) if isinstance(v := getattr(self, f.name), tuple)
                                           else v)
                for f in fields(self)}

    def approves(self, run_id: str) -> bool:
        return any(fnmatch.fnmatchcase(run_id, pattern) for pattern in self.approved_runs)


def _coerce(name: str, value: Any, kind: str, where: str) -> Any:
    key = name.replace("_", "-")
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind.startswith("tuple") and isinstance(value, (list, tuple)) \
            and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: {key} must be a {kind}. Found {value!r}.")


@dataclass(frozen=True)
class Admission:
    """A site's decision on a run: the run as it will play it, or why it will not."""

    decision: str  # admitted | tightened | refused
    cfg: RunConfig | None  # the run as this site plays it (None when refused)
    changes: tuple[str, ...] = ()  # what tightening changed, e.g. "target-epsilon 8.0 -> 3.0"
    reason: str = ""  # why it was refused (for the site's log and audit trail only)


def admit(run: RunConfig, policy: SitePolicy, budget: SiteBudget, *, run_id: str,
          approved: bool = False) -> Admission:
    """Hold ``run`` against ``policy``: admitted as is, tightened, or refused with a reason.

    ``approved``: an operator approved ``run_id`` (`fedtl approve`); needed when the policy
    requires approval and no pattern of ``approved_runs`` matches.
    """
    def refused(reason: str) -> Admission:
        return Admission(REFUSED, None, reason=reason)

    if policy.require_approval and not (approved or policy.approves(run_id)):
        return refused(f"run {run_id} is not approved at this site; an operator approves it "
                       f"with `fedtl approve --state <state> {run_id}`")
    if not run.dp and not policy.allow_no_dp:
        return refused("the run trains without differential privacy (dp = false), which this "
                       "site's policy does not allow (allow-no-dp)")
    if policy.require_secure_aggregation and not run.secure_aggregation:
        return refused("the run does not use secure aggregation, which this site's policy "
                       "requires")
    bounds = [("image-size", run.image_size, policy.max_image_size),
              ("head-width", run.head_width, policy.max_head_width),
              ("rounds", run.rounds, policy.max_rounds),
              ("local-epochs", run.local_epochs, policy.max_local_epochs),
              ("personal-epochs", run.personal_epochs if run.personal_sgd else 0,
               policy.max_personal_epochs),
              ("batch-size", run.batch_size, policy.max_batch_size),
              ("augment-views", run.augment_views, policy.max_augment_views)]
    for name, asked, most in bounds:
        if asked > most:
            return refused(f"the run's {name} {asked} exceeds this site's bound of {most}")
    wanted: dict[str, Any] = {}
    if not run.dp:  # admitted without DP: its figures are exact, unless the site sends none
        if policy.site_metrics == "none" and run.site_metrics != "none":
            wanted["site_metrics"] = "none"
        return _tightened(run, wanted, policy)
    if run.target_epsilon > policy.max_run_epsilon:
        wanted["target_epsilon"] = policy.max_run_epsilon
    if run.delta > budget.delta:  # a larger delta is a weaker guarantee at the same epsilon
        wanted["delta"] = budget.delta
    if 0 < run.noise_multiplier < policy.min_noise_multiplier:
        wanted["noise_multiplier"] = policy.min_noise_multiplier
    if _COUNT_ORDER.index(run.example_counts) < _COUNT_ORDER.index(policy.example_counts):
        wanted["example_counts"] = policy.example_counts
    if _METRIC_ORDER.index(run.site_metrics) < _METRIC_ORDER.index(policy.site_metrics):
        wanted["site_metrics"] = policy.site_metrics
    if run.sums_noise == "distributed" and policy.distributed_noise_sites < 2:
        wanted["sums_noise"] = "local"
    if run.personal_joint and not policy.allow_joint_personal_heads:
        wanted["personal_tuning"] = "ridge"  # the same start, from the noised release
    return _tightened(run, wanted, policy)


def _tightened(run: RunConfig, wanted: dict[str, Any], policy: SitePolicy) -> Admission:
    """``run`` with ``wanted`` applied, or refused if the policy refuses looser runs."""
    if not wanted:
        return Admission(ADMITTED, run)
    changes = tuple(f"{k.replace('_', '-')} {getattr(run, k)} -> {v}" for k, v in wanted.items())
    if policy.on_violation == "refuse":
        return Admission(REFUSED, None, reason="the run asks for less privacy than this "
                         "site's policy allows: " + "; ".join(changes))
    return Admission(TIGHTENED, replace(run, **wanted), changes)
