"""How `fedtl simulate` sets up Flower's Ray backend and where simulated sites keep state."""

from pathlib import Path

from common.cli import build_parser
from common.config import RunConfig
from simulations.simulate import backend_config


def test_without_an_address_a_private_local_ray_instance_is_started() -> None:
    config = backend_config(RunConfig(), verbose=False)
    assert config["init_args"]["address"] == "local"  # never a stray `ray start` cluster
    assert config["init_args"]["num_cpus"] >= 1
    assert config["client_resources"] == {"num_cpus": 1, "num_gpus": 0.0}


def test_with_an_address_the_existing_cluster_decides_the_resources() -> None:
    config = backend_config(RunConfig(ray_address="10.0.0.5:6379", gpus_per_site=0.5),
                            verbose=False)
    assert config["init_args"]["address"] == "10.0.0.5:6379"
    assert "num_cpus" not in config["init_args"]  # Ray refuses it when joining a cluster
    assert config["client_resources"]["num_gpus"] == 0.5


def _simulate_config(*argv: str) -> RunConfig:
    from common.cli.options import settings_from

    return settings_from(build_parser().parse_args(["simulate", *argv]), out="o")


def test_state_flag_places_each_simulated_sites_cache_under_it(tmp_path: Path) -> None:
    cfg = _simulate_config("--state", str(tmp_path))
    assert cfg.site_cache_dir("site-3") == tmp_path / "site-3" / "features"
    assert _simulate_config("--cache-dir", str(tmp_path)).state == str(tmp_path)  # old name


def test_no_cache_leaves_simulated_sites_without_a_cache(tmp_path: Path) -> None:
    cfg = _simulate_config("--state", str(tmp_path), "--no-cache")
    assert cfg.site_cache_dir("site-0") is None


def test_default_state_is_a_per_user_folder() -> None:
    assert Path(RunConfig().state) == Path("~/.cache/fedtl/sites").expanduser()


def test_an_impossible_budget_fails_before_any_feature_is_extracted(
        monkeypatch, tmp_path: Path) -> None:
    import pytest

    import simulations.simulate as simulate
    from common.errors import ConfigError

    def extract(*args, **kwargs):
        raise AssertionError("a site's features were loaded before the budget was checked")

    monkeypatch.setattr(simulate, "load_simulated_site", extract)
    impossible = ("--dataset", "digits", "--max-per-class", "20", "--clients", "2",
                  "--target-epsilon", "1e-6", "--delta", "1e-12", "--state", str(tmp_path))
    for head in ("sgd", "ridge+sgd", "ridge"):  # DP-SGD planned, the one-shot release, both
        with pytest.raises(ConfigError, match="target epsilon"):
            simulate.prepare_sites(_simulate_config(*impossible, "--head-method", head))
    assert not list(tmp_path.rglob("*.npz"))  # no site's features were written


def test_a_bad_public_folder_fails_before_any_feature_is_extracted(
        monkeypatch, tmp_path: Path) -> None:
    import pytest

    import simulations.simulate as simulate
    from common.errors import DataError

    def extract(*args, **kwargs):
        raise AssertionError("a site's features were loaded before the public folder was read")

    monkeypatch.setattr(simulate, "load_simulated_site", extract)
    for name in ("cats", "dogs"):  # two class folders, no image in either
        (tmp_path / "public" / name).mkdir(parents=True)
    with pytest.raises(DataError, match=r"^--public folder .*public: .*holds no image files"):
        simulate.prepare_sites(_simulate_config(
            "--dataset", "digits", "--clients", "2", "--head-method", "ridge",
            "--public", str(tmp_path / "public"), "--state", str(tmp_path / "state")))


def test_a_public_folder_that_sgd_alone_would_ignore_is_said_to_be_unread(
        monkeypatch, tmp_path: Path, capsys) -> None:
    import pytest

    import simulations.simulate as simulate

    class Stop(Exception):
        pass

    def extract(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(simulate, "load_simulated_site", extract)
    with pytest.raises(Stop):  # the folder is not read, so its absence stops nothing
        simulate.prepare_sites(_simulate_config(
            "--dataset", "digits", "--clients", "2", "--head-method", "sgd",
            "--public", str(tmp_path / "nowhere"), "--state", str(tmp_path / "state")))
    assert f"--public {tmp_path / 'nowhere'} is not read" in capsys.readouterr().err


def test_with_skipped_images_the_budget_is_checked_on_the_count_extraction_leaves(
        monkeypatch, tmp_path: Path) -> None:
    import simulations.simulate as simulate

    calls: list[int] = []
    monkeypatch.setattr(simulate, "sgd_settings", lambda cfg, n: calls.append(n))
    scenario = simulate.build_scenario(_simulate_config("--dataset", "digits", "--clients", "2"))
    simulate.check_budget_before_extraction(
        _simulate_config("--dataset", "digits", "--clients", "2", "--head-method", "sgd"),
        scenario)
    # Each site's listing less the held-out 20 %: what load_site trains on when no image is
    # skipped.
    assert calls == [round(len(s.listing) * 0.8) for s in scenario.sites]
    calls.clear()
    simulate.check_budget_before_extraction(
        _simulate_config("--dataset", "digits", "--clients", "2", "--head-method", "sgd",
                         "--skip-bad-images"), scenario)
    assert calls == []  # skipped images would change the count: checked after extraction
