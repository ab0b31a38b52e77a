"""A site's own policy: what it grants any run, whatever the server asks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from common.config import RunConfig
from common.errors import ConfigError
from common.privacy.ledger import SiteBudget
from common.privacy.policy import ADMITTED, REFUSED, TIGHTENED, SitePolicy, admit

BUDGET = SiteBudget(10.0, 1e-5)


def decide(run: RunConfig, policy: SitePolicy = SitePolicy(), **kwargs):  # noqa: ANN201
    return admit(run, policy, BUDGET, run_id=kwargs.pop("run_id", "r1"), **kwargs)


def test_the_defaults_refuse_a_run_without_dp() -> None:
    decision = decide(RunConfig(dp=False))
    assert decision.decision == REFUSED and decision.cfg is None
    assert "allow-no-dp" in decision.reason


def test_the_defaults_tighten_a_loose_run_to_the_safe_settings() -> None:
    asked = RunConfig(target_epsilon=8.0, example_counts="exact", site_metrics="exact",
                      noise_multiplier=0.1, delta=1e-3)
    decision = decide(asked)
    assert decision.decision == TIGHTENED
    cfg = decision.cfg
    assert (cfg.target_epsilon, cfg.example_counts, cfg.site_metrics, cfg.noise_multiplier,
            cfg.delta) == (3.0, "noised", "noised", 0.5, BUDGET.delta)
    assert "target-epsilon 8.0 -> 3.0" in decision.changes
    assert len(decision.changes) == 5


def test_a_run_within_the_policy_is_admitted_unchanged() -> None:
    asked = RunConfig(target_epsilon=2.0, site_metrics="none")
    decision = decide(asked)
    assert decision.decision == ADMITTED and decision.cfg == asked and decision.changes == ()


def test_a_policy_that_refuses_looser_runs_says_why_only_to_the_site() -> None:
    decision = decide(RunConfig(target_epsilon=8.0),
                      SitePolicy(on_violation="refuse", site_metrics="exact"))
    assert decision.decision == REFUSED and "target-epsilon 8.0 -> 3.0" in decision.reason


@pytest.mark.parametrize(("setting", "value", "bound"), [
    ("image_size", 512, "max_image_size"), ("head_width", 4096, "max_head_width"),
    ("local_epochs", 50, "max_local_epochs"), ("batch_size", 100_000, "max_batch_size"),
    ("rounds", 5000, "max_rounds"), ("augment_views", 8, "max_augment_views")])
def test_resource_bounds_refuse_the_run_naming_the_setting(setting: str, value: int,
                                                           bound: str) -> None:
    policy = SitePolicy(**{bound: value - 1})
    decision = decide(RunConfig(head_method="sgd", **{setting: value}), policy)
    assert decision.decision == REFUSED
    assert setting.replace("_", "-") in decision.reason and str(value - 1) in decision.reason


def test_personal_epochs_count_only_when_the_run_personalizes() -> None:
    policy = SitePolicy(max_personal_epochs=2)
    assert decide(RunConfig(personal_epochs=5), policy).decision != REFUSED
    assert decide(RunConfig(personal_epochs=5, personalize=True), policy).decision == REFUSED


def test_a_site_that_demands_secure_aggregation_refuses_runs_without_it() -> None:
    policy = SitePolicy(require_secure_aggregation=True, site_metrics="exact")
    assert decide(RunConfig(), policy).decision == REFUSED
    assert decide(RunConfig(secure_aggregation=True), policy).decision != REFUSED


def test_approval_by_an_operator_or_by_a_pattern() -> None:
    policy = SitePolicy(require_approval=True, approved_runs=("cardio-*",))
    assert decide(RunConfig(), policy, run_id="x1").decision == REFUSED
    assert decide(RunConfig(), policy, run_id="x1", approved=True).decision != REFUSED
    assert decide(RunConfig(), policy, run_id="cardio-2027").decision != REFUSED


def test_a_site_allowing_runs_without_dp_still_withholds_figures_if_it_says_so() -> None:
    decision = decide(RunConfig(dp=False, site_metrics="exact"),
                      SitePolicy(allow_no_dp=True, site_metrics="none"))
    assert decision.decision == TIGHTENED and decision.cfg.site_metrics == "none"
    assert not decision.cfg.dp


def test_a_simulated_site_follows_the_command_line() -> None:
    for asked in (RunConfig(dp=False), RunConfig(target_epsilon=50.0, site_metrics="exact",
                                                 example_counts="exact", image_size=512)):
        decision = decide(asked, SitePolicy.unrestricted())
        assert decision.decision == ADMITTED and decision.cfg == asked


def test_a_policy_file_is_parsed_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('max-run-epsilon = 1\nsite-metrics = "none"\napproved-runs = ["a-*"]\n'
                    "max-run-epsilon-typo = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'max-run-epsilon-typo'"):
        SitePolicy.load(path)
    path.write_text('max-run-epsilon = 1\nsite-metrics = "none"\napproved-runs = ["a-*"]\n')
    policy = SitePolicy.load(path)
    assert (policy.max_run_epsilon, policy.site_metrics, policy.approved_runs) == \
        (1.0, "none", ("a-*",))
    path.write_text('allow-no-dp = "yes"\n')
    with pytest.raises(ConfigError, match="allow-no-dp must be a bool"):
        SitePolicy.load(path)
    path.write_text("max-run-epsilon = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SitePolicy.load(path)
    with pytest.raises(ConfigError, match="max-sampling-rate"):
        SitePolicy(max_sampling_rate=1.5)


def test_a_policy_survives_its_file_round_trip(tmp_path: Path) -> None:
    from client.daemon import write_policy

    policy = SitePolicy(max_run_epsilon=math.inf, approved_runs=("x-*", "y"),
                        on_violation="refuse")
    write_policy(policy, tmp_path / "p.toml")
    assert SitePolicy.load(tmp_path / "p.toml") == policy
    assert (tmp_path / "p.toml").stat().st_mode & 0o777 == 0o600


def test_command_line_flags_override_the_policy_file(tmp_path: Path) -> None:
    from common.cli.main import _site_policy, build_parser

    (tmp_path / "p.toml").write_text('site-metrics = "none"\nmax-run-epsilon = 1.0\n')
    args = build_parser().parse_args([
        "client", "--server", "s:1", "--data", "d", "--state", "st", "--budget", "3",
        "--policy", str(tmp_path / "p.toml"), "--max-run-epsilon", "2.5", "--allow-no-dp",
        "--allow-joint-personal-heads"])
    policy = _site_policy(args)
    assert (policy.site_metrics, policy.max_run_epsilon, policy.allow_no_dp,
            policy.allow_joint_personal_heads) == ("none", 2.5, True, True)
    bare_args = build_parser().parse_args(
        ["client", "--server", "s:1", "--data", "d", "--state", "st", "--budget", "3"])
    assert _site_policy(bare_args) == SitePolicy() and bare_args.accountant == "rdp"
    assert build_parser().parse_args(
        ["client", "--server", "s:1", "--data", "d", "--state", "st", "--budget", "3",
         "--accountant", "pld"]).accountant == "pld"


def test_the_report_states_what_each_site_released_as_it_played_the_run() -> None:
    from server.client_dp import ClientLevelState
    from server.federation import guarantees

    cfg = RunConfig(site_metrics="exact", example_counts="exact")
    tightened = {"a": ["site-metrics exact -> noised", "example-counts exact -> noised"]}
    both = guarantees(cfg, ClientLevelState(), tightened, ["a", "b"]).record_level
    assert "held-out accuracy" in both.released_outside_guarantee  # site b, as asked
    assert "noised held-out accuracy" in both.covers  # site a, tightened
    only_a = guarantees(cfg, ClientLevelState(), tightened, ["a"]).record_level
    assert only_a.released_outside_guarantee == []
    assert only_a.tightened_by_sites == tightened


def test_the_readme_hospital_policy_parses_as_written(tmp_path: Path) -> None:
    from .conftest import PROJECT

    readme = (PROJECT / "README.md").read_text()
    block = readme.split("# hospital-policy.toml")[1].split("```")[0]
    (tmp_path / "hospital.toml").write_text(block.split("\n", 1)[1])
    policy = SitePolicy.load(tmp_path / "hospital.toml")
    assert policy.require_approval and policy.site_metrics == "none"
    assert policy.approves("cardiology-2027-01") and not policy.approves("other")


def test_a_joint_personal_head_needs_the_sites_leave_and_gets_the_dp_one_without() -> None:
    asked = RunConfig(personalize=True, personal_tuning="joint", site_metrics="noised")
    decision = decide(asked)
    assert decision.decision == TIGHTENED
    assert decision.changes == ("personal-tuning joint -> ridge",)
    played = decision.cfg
    assert not played.personal_joint and played.personal_from_release
    assert not played.personal_sgd  # no new DP step: the same budget plan, post-processing
    assert decide(asked, SitePolicy(allow_joint_personal_heads=True)).cfg == asked
    assert decide(asked, SitePolicy.unrestricted()).decision == ADMITTED
    assert decide(asked, SitePolicy(on_violation="refuse")).decision == REFUSED


def test_the_start_up_line_says_when_joint_personal_heads_are_allowed() -> None:
    from client.daemon import describe

    assert "without noise" not in describe(SitePolicy())
    assert "personal heads may be fitted here without noise" in describe(
        SitePolicy(allow_joint_personal_heads=True))
