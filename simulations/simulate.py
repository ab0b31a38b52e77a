"""`fedtl simulate`: a whole federation in one process on Flower's simulation engine."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.config import RunConfig
from common.errors import ConfigError, RunFailedError
from common.features.extraction import LazyBase, site_features
from common.features.model import predict_classes
from common.features.public_basis import public_listing
from common.privacy.centring import centred_on_own_mean
from common.report import Report
from common.data.scenario import Scenario, build_scenario, site_folders
from common.privacy.release import sums_noise
from common.progress import ProgressCallback
from common.site import base_spec, load_simulated_site, sgd_settings
from simulations.ray_startup import (RAY_START_SECONDS, end_process, not_started_message,
                                     start_ray, watch_start)


def prepare_sites(cfg: RunConfig, *, plan: bool = True) -> tuple[RunConfig, float, Scenario]:
    """Check the data and budget and warm every site's feature cache before Flower starts.

    Returns the config with the dataset's classes (and, for ``--partition folders``, its
    site count), the extraction seconds and the scenario. Every data or budget error
    surfaces here, before any training. ``plan`` prints each site's DP plan (a non-private
    reference checks the same budget but has no plan of its own to print).
    """
    if cfg.partition == "folders":  # one site per folder, less the one kept unseen
        cfg = cfg.replace(clients=len(site_folders(cfg.dataset)) - bool(cfg.unseen_site))
    scenario = build_scenario(cfg)
    cfg = cfg.replace(classes=scenario.classes)
    check_budget_before_extraction(cfg, scenario)
    if cfg.one_shot and cfg.public:
        public_listing(cfg.public)  # a bad public folder stops the run before any extraction
    elif cfg.unread_public:
        print(f"[prepare] {cfg.unread_public}", file=sys.stderr, flush=True)
    base = LazyBase.shared(base_spec(cfg), cfg.stats_cache)
    seconds = 0.0
    for site in scenario.sites:
        seen = f" seen through {site.shift.kind} (severity {site.shift.severity})" \
            if site.shift else ""
        with ProgressCallback(f"[prepare] {site.name}: extracting features",
                              "images" if not cfg.augment_views else "views") as progress:
            data = load_simulated_site(cfg, site, base, progress=progress)
        note = "features cached" if data.cache_hit else "features extracted"
        print(f"[prepare] {site.name}: {len(site.listing)} images{seen}, {note}; "
              f"{len(data.train_y)} train / {len(data.test_y)} held out",
              file=sys.stderr, flush=True)
        seconds += data.extraction_seconds
        if data.skipped:
            print(f"[prepare] {site.name}: skipped {len(data.skipped)} unreadable images: "
                  + ", ".join(data.skipped[:5]) + (" ..." if len(data.skipped) > 5 else ""),
                  file=sys.stderr, flush=True)
        if not (cfg.sgd_rounds or cfg.personal_sgd):
            continue  # a ridge head alone: one release, no DP-SGD to plan
        settings = sgd_settings(cfg, len(data.train_y))  # raises if the budget is impossible
        if plan and settings.private:
            # The site computes its own from the count it releases (noised by default).
            print(f"[prepare] {site.name}: sampling rate ~{settings.sampling_rate:.3f}, "
                  f"{settings.steps} steps/round, noise multiplier "
                  f"~{settings.noise_multiplier:.3f}", file=sys.stderr, flush=True)
        if plan and settings.noise_swamps:
            print(f"[prepare] {site.name}: warning: {settings.noise_swamps}", file=sys.stderr,
                  flush=True)
    if plan and cfg.one_shot and cfg.dp:
        print(f"[prepare] one-shot class sums: noise multiplier {sums_noise(cfg):.3f} "
              f"({'all' if cfg.head_method == 'ridge' else f'{cfg.ridge_share:.0%}'} of "
              f"epsilon {cfg.target_epsilon}), {cfg.public_components} public components",
              file=sys.stderr, flush=True)
    return cfg, seconds, scenario


def check_budget_before_extraction(cfg: RunConfig, scenario: Scenario) -> None:
    """Raise if the budget cannot pay for the run, before any feature is extracted.

    Without --skip-bad-images every image is read or the run stops, so each site's training
    count is its listing's, less the held-out split `load_site` makes; a budget that fails
    here would fail after extraction too (minutes on a large folder). With skipping, the
    count is known only after extraction, where the same checks run again.
    """
    if not cfg.dp or cfg.skip_bad_images:
        return
    if cfg.one_shot:
        sums_noise(cfg)
    if cfg.sgd_rounds or cfg.personal_sgd:
        for site in scenario.sites:
            sgd_settings(cfg, len(site.training_images(cfg.holdout)))


def unseen_evaluator(cfg: RunConfig, scenario: Scenario
                     ) -> Callable[[list[np.ndarray]], float] | None:
    """Accuracy of a head on the scenario's unseen-domain site (all its images), if it has one.

    It runs in the simulation's server process: a simulated evaluation site, not a real one.
    With ``--feature-centring site`` its features are centred on their own mean, as a new
    site would centre its own images before using the head (nothing of it is released).
    """
    unseen = scenario.unseen
    if unseen is None:
        return None
    seen = f" seen through {unseen.shift.kind}" if unseen.shift else ""
    with ProgressCallback(f"[prepare] {unseen.name}: extracting features") as progress:
        feats = site_features(LazyBase.shared(base_spec(cfg), cfg.stats_cache), unseen.listing,
                              cfg.site_cache_dir(unseen.name), skip_bad=cfg.skip_bad_images,
                              shift=unseen.shift, progress=progress,
                              dicom_window=cfg.window)
    print(f"[prepare] {unseen.name}: {len(unseen.listing)} images{seen}, evaluation only "
          f"(unseen site), features {'cached' if feats.cache_hit else 'extracted'}",
          file=sys.stderr, flush=True)

    features = centred_on_own_mean(feats.features) if cfg.site_centred else feats.features

    def accuracy(weights: list[np.ndarray]) -> float:
        predicted = predict_classes(features, weights, num_classes=len(cfg.classes),
                                    head_width=cfg.head_width)
        return float(np.mean(predicted == feats.labels))

    return accuracy


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


def simulate(cfg: RunConfig, *, verbose: bool = False) -> Report:
    """Run the federation described by ``cfg``; return the report written to ``cfg.out``."""
    started = time.time()
    out = Path(cfg.out)
    if (out / "report.json").exists():
        raise ConfigError(f"{out} already holds a finished run; choose another --out")
    cfg, seconds, scenario = prepare_sites(cfg)
    unseen = unseen_evaluator(cfg, scenario)

    from flwr.simulation import run_simulation

    from client.client_app import make_client_app
    from server.federation import PreRun
    from server.server_app import make_server_app

    failures: list[BaseException] = []
    engine_ended = threading.Event()
    server_app = make_server_app(
        cfg, PreRun(feature_extraction_seconds=seconds, started=started,
                    sites=scenario.describe(), unseen_accuracy=unseen), failures, engine_ended)
    if not verbose:  # Flower's deprecation banner for run_simulation among them
        logging.getLogger("flwr").setLevel(logging.ERROR)
    # Keep Ray from touching accelerator visibility for CPU-only sites (and from warning
    # about its coming change of default on every start).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    backend = backend_config(cfg, verbose)
    stop_watching = threading.Event()
    watch_start(ray.is_initialized, RAY_START_SECONDS, lambda: end_process(
        not_started_message(cfg.ray_address, RAY_START_SECONDS)), stop_watching)
    try:
        start_ray(ray.init, ray.shutdown, backend["init_args"])  # Flower's backend reuses it
        run_simulation(
            server_app=server_app,
            client_app=make_client_app(cfg),
            num_supernodes=cfg.clients,
            backend_config=backend,
            verbose_logging=verbose,
        )
    except RuntimeError as exc:  # Flower's "An error was encountered. Ending simulation."
        if not failures:  # else the server's own error, raised below, says more
            raise RunFailedError(f"Flower's simulation engine stopped: {exc.__cause__ or exc}; "
                                 "rerun with --verbose to see Flower's log") from exc
    finally:
        stop_watching.set()
        engine_ended.set()  # a server still waiting for sites would keep the process alive
    if failures:
        raise failures[0]
    report_path = out / "report.json"
    if not report_path.exists():
        raise RunFailedError("the simulation ended without a report; rerun with --verbose to "
                             "see Flower's log")
    return Report.read(report_path)
