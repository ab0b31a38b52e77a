"""`fedtl simulate`: a whole federation in one process on Flower's simulation engine."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.data import list_dataset
from common.errors import ConfigError, FedtlError
from common.features import LazyBase
from common.site import base_spec, load_site, partition_listing, sgd_settings


def prepare_sites(cfg: RunConfig) -> tuple[RunConfig, float]:
    """Check the data and budget and warm every site's feature cache before Flower starts.

    Returns the config with the dataset's classes and the extraction seconds. Every data or
    budget error surfaces here, before any training.
    """
    listing = list_dataset(cfg.dataset, cfg.max_per_class)
    cfg = cfg.replace(classes=listing.classes)
    base = LazyBase.for_spec(base_spec(cfg))
    seconds = 0.0
    for index, share in enumerate(partition_listing(cfg, listing)):
        name = f"site-{index}"
        print(f"[prepare] {name}: {len(share)} images, extracting features...", end="",
              file=sys.stderr, flush=True)
        data = load_site(cfg, name, share, base, cfg.site_cache_dir(name),
                         holdout_seed=(cfg.seed, index), progress=_progress)
        note = "cached" if data.cache_hit else f"{data.extraction_seconds:.1f} s"
        print(f" {note}; {len(data.train_y)} train / {len(data.test_y)} held out",
              file=sys.stderr, flush=True)
        seconds += data.extraction_seconds
        if data.skipped:
            print(f"[prepare] {name}: skipped {len(data.skipped)} unreadable images: "
                  + ", ".join(data.skipped[:5]) + (" ..." if len(data.skipped) > 5 else ""),
                  file=sys.stderr, flush=True)
        settings = sgd_settings(cfg, len(data.train_y))  # raises if the budget is impossible
        if settings.private:
            print(f"[prepare] {name}: sampling rate {settings.sampling_rate:.3f}, "
                  f"{settings.steps} steps/round, noise multiplier "
                  f"{settings.noise_multiplier:.3f}", file=sys.stderr, flush=True)
    return cfg, seconds


def backend_config(cfg: RunConfig, verbose: bool) -> dict[str, Any]:
    """Flower's Ray backend settings: one CPU (and ``gpus_per_site`` GPUs) per site worker.

    With ``ray_address`` the simulation joins that running cluster instead of starting one;
    Ray then decides how many site workers run at once from the cluster's resources.
    """
    init_args: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": verbose}
    if cfg.ray_address:
        init_args["address"] = cfg.ray_address
    else:  # "local": a new instance even if `ray start` left a cluster running here
        init_args.update(address="local", num_cpus=os.cpu_count() or 1)
    return {"client_resources": {"num_cpus": 1, "num_gpus": cfg.gpus_per_site},
            "init_args": init_args}


def _progress(done: int, total: int) -> None:
    if total > 1024:
        print(f" {done}/{total}", end="", file=sys.stderr, flush=True)


def simulate(cfg: RunConfig, *, verbose: bool = False) -> dict[str, Any]:
    """Run the federation described by ``cfg``; return the report written to ``cfg.out``."""
    started = time.time()
    out = Path(cfg.out)
    if (out / "report.json").exists():
        raise ConfigError(f"{out} already holds a finished run; choose another --out")
    cfg, seconds = prepare_sites(cfg)

    from flwr.simulation import run_simulation

    from client.client_app import make_client_app
    from server.federation import PreRun
    from server.server_app import make_server_app

    failures: list[BaseException] = []
    server_app = make_server_app(
        cfg, PreRun(feature_extraction_seconds=seconds, started=started), failures)
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    # Keep Ray from touching accelerator visibility for CPU-only sites (and from warning
    # about its coming change of default on every start).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=server_app,
        client_app=make_client_app(cfg),
        num_supernodes=cfg.clients,
        backend_config=backend_config(cfg, verbose),
        verbose_logging=verbose,
    )
    if failures:
        raise failures[0]
    report_path = out / "report.json"
    if not report_path.exists():
        raise FedtlError("the simulation ended without a report; rerun with --verbose to see "
                         "Flower's log")
    report: dict[str, Any] = json.loads(report_path.read_text())
    return report
