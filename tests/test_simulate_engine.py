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
