"""The one run configuration: parsed and checked once at the edge, then passed down frozen."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from common.accounting import ACCOUNTANTS
from common.errors import ConfigError
from common.ledger import SiteBudget
from common.policy import SitePolicy
from common.release import COUNT_MODES, METRIC_MODES

# iid / dirichlet (label skew) / domain (each site its own acquisition shift; label skew too
# with --alpha) split one dataset; folders: the dataset folder holds one folder per site.
PARTITIONS = ("iid", "dirichlet", "domain", "folders")
STRATEGIES = ("fedavg", "fedprox", "fedadam")
CLIENT_DP = ("off", "fixed", "adaptive")
# VGG16 layers a head can attach to.
POOL_LAYERS = ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool")
# The frozen base's arithmetic (common.model): auto is bfloat16 where the CPU has it.
BASE_DTYPES = ("auto", "float32", "bfloat16")


def default_state_dir() -> str:
    """Per-user folder for simulated sites' state (feature caches: warm across runs)."""
    return str(Path("~/.cache/fedtl/sites").expanduser())


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a federated run.

    Defaults were chosen by measurement (README, "Choosing the defaults"). Flower's run
    config carries the same fields in kebab case (``target-epsilon``); `from_flower` parses it.
    """

    # data and federation
    dataset: str = "digits"
    max_per_class: int = 0
    clients: int = 4
    rounds: int = 10
    partition: str = "iid"
    alpha: float = 0.0  # Dirichlet label skew (0: none; --partition dirichlet means 0.5)
    size_alpha: float = 0.0  # Dirichlet quantity skew of site sizes (0: equal sizes)
    shift_severity: int = 3  # highest acquisition-shift severity (1..5) with --partition domain
    holdout: float = 0.2
    skip_bad_images: bool = False
    classes: tuple[str, ...] = ()
    # model
    weights: str = "imagenet-pypi"
    image_size: int = 32
    base_layer: str = "block4_pool"
    head_width: int = 0
    augment_views: int = 0  # precomputed augmented views per image (0: the images as they are)
    base_dtype: str = "auto"  # the frozen base's arithmetic: auto (bf16 where the CPU has it)
    # local training
    batch_size: int = 512
    local_epochs: int = 1
    learning_rate: float = 16.0
    momentum: float = 0.0
    # privacy
    dp: bool = True
    target_epsilon: float = 3.0
    delta: float = 1e-5
    noise_multiplier: float = 0.0
    clip_norm: float = 1.0
    accountant: str = "rdp"
    # what a site releases besides the head (common/release.py)
    example_counts: str = "noised"  # exact | rounded | noised (Gaussian, accounted)
    count_noise: float = 10.0  # std of the noised count, in images
    count_rounding: int = 50  # granularity of rounded counts
    site_metrics: str = "exact"  # held-out accuracy and train loss: exact | noised | none
    metric_noise: float = 30.0  # std, in images, of each noised (correct, total) release
    # client-level DP on the server (server/client_dp.py): a whole site is the unit
    client_dp: str = "off"  # off | fixed | adaptive (clipping of each site's update)
    client_noise: float = 1.0  # noise multiplier z: std z * clip / sites on the mean update
    client_clip: float = 5.0  # clip norm of a site's update (initial norm when adaptive)
    client_quantile: float = 0.5  # adaptive clipping's target fraction of unclipped updates
    client_delta: float = 1e-3  # delta of the client-level guarantee
    # secure aggregation (server/secure.py): the server sees only the sum of the heads
    secure_aggregation: bool = False
    secagg_clip: float = 8.0  # SecAgg+ clips every head weight to [-clip, clip]
    # heterogeneity
    strategy: str = "fedavg"
    proximal_mu: float = 0.001  # FedProx's proximal weight (with --strategy fedprox)
    server_lr: float = 0.1  # FedAdam's server learning rate (with --strategy fedadam)
    personalize: bool = False  # each site fine-tunes its own head from the final global one
    personal_epochs: int = 1  # epochs of that DP fine-tuning, charged to the same budget
    # server side
    run_id: str = ""  # the run's name at every site (ledger, audit trail); "": a random one
    max_update_norm: float = 1000.0
    max_weight_ratio: float = 10.0  # a site weighs at most this many times the others' median
    min_sites: int = 0  # sites needed to start and accepted to aggregate a round (0: see below)
    round_timeout: float = 3600.0  # seconds a round waits for sites that do not answer
    # where things go
    seed: int = 0
    out: str = "runs/latest"
    state: str = field(default_factory=default_state_dir)  # simulated sites' state folders
    cache: bool = True  # keep extracted features in each site's state folder
    # simulation engine
    ray_address: str = ""  # attach to this running Ray cluster ("auto", "host:6379")
    gpus_per_site: float = 0.0  # GPU share per simulated site (0.5: two sites per GPU)

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.clients >= 1, f"clients must be at least 1. Found {self.clients}."),
            (1 <= self.rounds <= 100_000, f"rounds must be in 1..100000. Found {self.rounds}."),
            (self.clients <= 100_000, f"clients must be at most 100000. Found {self.clients}."),
            (self.run_id == "" or valid_run_id(self.run_id),
             f"run-id must be 1-128 letters, digits, '.', '_' or '-', starting with a letter "
             f"or digit. Found {self.run_id!r}."),
            (self.max_per_class >= 0, f"max-per-class must be >= 0. Found {self.max_per_class}."),
            (self.partition in PARTITIONS,
             f"partition must be one of {PARTITIONS}. Found {self.partition!r}."),
            (self.alpha >= 0, f"alpha must be >= 0 (0: no label skew). Found {self.alpha}."),
            (self.size_alpha >= 0,
             f"size-alpha must be >= 0 (0: equal site sizes). Found {self.size_alpha}."),
            (not (self.partition == "iid" and self.alpha > 0),
             "alpha sets label skew, which --partition iid does not have; use --partition "
             "dirichlet or domain"),
            (not (self.partition == "folders" and (self.alpha > 0 or self.size_alpha > 0)),
             "with --partition folders each site is its own folder; alpha and size-alpha "
             "do not apply"),
            (1 <= self.shift_severity <= 5,
             f"shift-severity must be in 1..5. Found {self.shift_severity}."),
            (self.strategy in STRATEGIES,
             f"strategy must be one of {STRATEGIES}. Found {self.strategy!r}."),
            (self.proximal_mu >= 0, f"proximal-mu must be >= 0. Found {self.proximal_mu}."),
            (self.strategy != "fedprox" or self.learning_rate * self.proximal_mu < 1.0,
             f"learning-rate x proximal-mu must be below 1 or the proximal step overshoots "
             f"the global head (found {self.learning_rate} x {self.proximal_mu}); lower "
             "--proximal-mu"),
            (self.server_lr > 0, f"server-lr must be positive. Found {self.server_lr}."),
            (1 <= self.personal_epochs <= 1000,
             f"personal-epochs must be in 1..1000. Found {self.personal_epochs}."),
            (0 < self.holdout < 1, f"holdout must be in (0, 1). Found {self.holdout}."),
            (32 <= self.image_size <= 1024, f"image-size must be in 32..1024 (VGG16 needs "
                                              f"at least 32). Found {self.image_size}."),
            (self.base_layer in POOL_LAYERS,
             f"base-layer must be one of {POOL_LAYERS}. Found {self.base_layer!r}."),
            (0 <= self.head_width <= 65536,
             f"head-width must be in 0..65536. Found {self.head_width}."),
            (self.base_dtype in BASE_DTYPES,
             f"base-dtype must be one of {BASE_DTYPES}. Found {self.base_dtype!r}."),
            (0 <= self.augment_views <= 16,
             f"augment-views must be in 0..16. Found {self.augment_views}."),
            (0 <= self.gpus_per_site <= 8,
             f"gpus-per-site must be in [0, 8]. Found {self.gpus_per_site}."),
            (1 <= self.batch_size <= 10_000_000,
             f"batch-size must be in 1..10000000. Found {self.batch_size}."),
            (1 <= self.local_epochs <= 1000,
             f"local-epochs must be in 1..1000. Found {self.local_epochs}."),
            (self.learning_rate > 0, f"learning-rate must be positive. Found {self.learning_rate}."),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1). Found {self.momentum}."),
            (self.target_epsilon > 0,
             f"target-epsilon must be positive. Found {self.target_epsilon}."),
            (0 < self.delta < 1, f"delta must be in (0, 1). Found {self.delta}."),
            (self.noise_multiplier >= 0,
             f"noise-multiplier must be >= 0 (0 derives it from the budget). "
             f"Found {self.noise_multiplier}."),
            (self.clip_norm > 0, f"clip-norm must be positive. Found {self.clip_norm}."),
            (self.accountant in ACCOUNTANTS,
             f"accountant must be one of {ACCOUNTANTS}. Found {self.accountant!r}."),
            (self.example_counts in COUNT_MODES,
             f"example-counts must be one of {COUNT_MODES}. Found {self.example_counts!r}."),
            (self.count_noise > 0, f"count-noise must be positive. Found {self.count_noise}."),
            (self.count_rounding >= 1,
             f"count-rounding must be at least 1. Found {self.count_rounding}."),
            (self.site_metrics in METRIC_MODES,
             f"site-metrics must be one of {METRIC_MODES}. Found {self.site_metrics!r}."),
            (self.metric_noise > 0,
             f"metric-noise must be positive. Found {self.metric_noise}."),
            (self.client_dp in CLIENT_DP,
             f"client-dp must be one of {CLIENT_DP}. Found {self.client_dp!r}."),
            (self.client_noise > 0, f"client-noise must be positive. Found {self.client_noise}."),
            (self.client_clip > 0, f"client-clip must be positive. Found {self.client_clip}."),
            (0 < self.client_quantile < 1,
             f"client-quantile must be in (0, 1). Found {self.client_quantile}."),
            (0 < self.client_delta < 1,
             f"client-delta must be in (0, 1). Found {self.client_delta}."),
            (self.client_dp == "off" or self.strategy != "fedadam",
             "client-level DP noises the averaged update; FedAdam's step is not an average, "
             "so its output would not carry the guarantee: use --strategy fedavg or fedprox"),
            (self.secagg_clip > 0, f"secagg-clip must be positive. Found {self.secagg_clip}."),
            (not self.secure_aggregation or self.client_dp == "off",
             "client-level DP clips each update on the server, which secure aggregation keeps "
             "from seeing them; run one or the other"),
            (not self.secure_aggregation or self.strategy in ("fedavg", "fedprox"),
             "secure aggregation runs FedAvg or FedProx (SecAgg+ yields only the weighted "
             "mean); use --strategy fedavg or fedprox"),
            (self.max_update_norm > 0,
             f"max-update-norm must be positive. Found {self.max_update_norm}."),
            (self.max_weight_ratio >= 1 or self.max_weight_ratio == 0,
             f"max-weight-ratio must be at least 1 (0: no cap). Found {self.max_weight_ratio}."),
            (self.min_sites >= 0, f"min-sites must be >= 0. Found {self.min_sites}."),
            (self.round_timeout > 0,
             f"round-timeout must be positive. Found {self.round_timeout}."),
            (len(set(self.classes)) == len(self.classes),
             f"classes must be distinct. Found {list(self.classes)[:20]}."),
            (len(self.classes) <= 10_000 and all(0 < len(c) <= 255 for c in self.classes),
             "classes must be at most 10000 names of 1-255 characters"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def label_alpha(self) -> float:
        """The Dirichlet label-skew alpha in force (0: labels spread evenly)."""
        return (self.alpha or 0.5) if self.partition == "dirichlet" else self.alpha

    @property
    def required_sites(self) -> int:
        """Sites that must be connected to start a round (all `clients` unless min-sites)."""
        return self.min_sites or self.clients

    @property
    def stats_cache(self) -> Path | None:
        """Where this machine keeps the public statistics of bases it built (None: cache off)."""
        return Path(self.state).expanduser() / "public-stats" if self.cache else None

    def site_cache_dir(self, site: str) -> Path | None:
        """Where simulated site ``site`` caches its features (None: cache off)."""
        return Path(self.state).expanduser() / site / "features" if self.cache else None

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied (and checked again)."""
        return dataclasses.replace(self, **changes)

    def to_flower(self) -> dict[str, bool | int | float | str]:
        """Kebab-case scalars, the form of Flower's run config and of ``report.json``."""
        out: dict[str, bool | int | float | str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name.replace("_", "-")] = ",".join(value) if f.name == "classes" else value
        return out

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Parse a Flower run config; missing keys keep their defaults, unknown keys fail."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown setting {key!r}; known: "
                                  f"{sorted(k.replace('_', '-') for k in known)}")
            kwargs[name] = _coerce(name, value, known[name].type)
        return cls(**kwargs)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    kind = str(annotation)
    key = name.replace("_", "-")
    if name == "classes":
        if isinstance(value, str):
            return tuple(c for c in value.split(",") if c) if value else ()
        return tuple(str(c) for c in value)
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {key!r} must be a {kind}. Found {value!r}.") from exc


# Keys of a real site's Flower node config (set by `fedtl client`, read once by the ClientApp).
NODE_DATA, NODE_STATE, NODE_NAME = "data", "state", "site-name"
NODE_BUDGET, NODE_DELTA, NODE_CACHE = "budget", "delta", "cache"
NODE_POLICY = "policy"  # path of the site's policy file (TOML), written by `fedtl client`
NODE_BASE_DTYPE = "base-dtype"  # the site's own choice of arithmetic for the base
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def valid_run_id(value: str) -> bool:
    """A run id that is safe as a file name at every site (it names ledger entries and folders)."""
    return bool(_RUN_ID.fullmatch(value)) and ".." not in value


@dataclass(frozen=True)
class SiteConfig:
    """What only a site decides: its data, its state folder, its name and its privacy budget."""

    name: str
    data: str
    state: Path
    budget: SiteBudget
    cache_dir: Path | None
    policy: SitePolicy = field(default_factory=SitePolicy)
    partition: int | None = None  # a simulated site trains on this share of ``data``
    base_dtype: str = ""  # the site's arithmetic for the base, over the run's ("": the run's)

    @classmethod
    def simulated(cls, run: RunConfig, index: int) -> SiteConfig:
        """Virtual site ``index`` of a simulation: a share of the run's dataset."""
        name = f"site-{index}"
        return cls(name=name, data=run.dataset, state=Path(run.out) / "sites" / name,
                   budget=SiteBudget(run.target_epsilon, run.delta, run.accountant),
                   cache_dir=run.site_cache_dir(name), policy=SitePolicy.unrestricted(),
                   partition=index)

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any], node_id: int) -> SiteConfig:
        """A real site's settings from its SuperNode's node config."""
        missing = [key for key in (NODE_DATA, NODE_STATE, NODE_BUDGET) if key not in node]
        if missing:
            raise ConfigError(
                f"this site's node config lacks {missing}: start it with `fedtl client "
                "--data DIR --state DIR --budget EPSILON ...` (or give flower-supernode "
                "--node-config \"data='<image folder>' state='<state folder>' budget=3.0\")")
        state = Path(str(node[NODE_STATE])).expanduser()
        try:
            budget = SiteBudget(float(node[NODE_BUDGET]), float(node.get(NODE_DELTA, 1e-5)))
            cache = _coerce("cache", node.get(NODE_CACHE, True), "bool")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"this site's node config is malformed: {exc}") from exc
        # No policy file: the safe defaults, never the run's wishes.
        policy = SitePolicy.load(Path(str(node[NODE_POLICY]))) if node.get(NODE_POLICY) \
            else SitePolicy()
        base_dtype = str(node.get(NODE_BASE_DTYPE, ""))
        if base_dtype and base_dtype not in BASE_DTYPES:
            raise ConfigError(f"this site's {NODE_BASE_DTYPE} must be one of {BASE_DTYPES}. "
                              f"Found {base_dtype!r}.")
        return cls(name=str(node.get(NODE_NAME) or f"node-{node_id}"), data=str(node[NODE_DATA]),
                   state=state, budget=budget, cache_dir=state / "features" if cache else None,
                   policy=policy, base_dtype=base_dtype)
