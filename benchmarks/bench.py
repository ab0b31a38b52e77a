"""fedtl's speed and memory benchmark: one command, a table on stdout, the figures as JSON.

    uv run python benchmarks/bench.py [--quick] [--json PATH] [--dataset DIR]

It measures, in one run and on this machine:
1. frozen-base feature extraction, images/s, at 32, 64 and 224 px;
2. head training examples/s, DP-SGD against non-private (same loop, same settings);
3. one simulated round of every site's work, the naive way (Keras ``model.fit`` through the
   frozen VGG16 with tensorflow-privacy's microbatched DP optimizer, the model already built)
   against fedtl with a cold and with a warm feature cache;
4. peak memory (resident set of this process and, for the scale runs, of the whole process
   tree: Flower's driver, Ray and every site worker);
5. scale: ``fedtl simulate`` with 10, 50 and 100 sites on a slice of CIFAR-10;
6. deployment: a loopback federation (``fedtl server``, 3 ``fedtl client`` sites with TLS and
   keys, the bundled digits) with features cached: a 5-round ``fedtl run``, its first round
   and the median of rounds 2-5, and the share of a round spent in the sites' workers.
Targets (README, "Performance"): warm round >= 50x the naive one, DP >= 0.5x non-private
speed, 100 sites x 5 rounds x 10,000 images under 8 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import common  # noqa: F401  (TensorFlow settings before TensorFlow is imported)
from common.config import RunConfig
from common.data.images import Listing, list_dataset, load_images
from common.features.extraction import LazyBase, extract
from common.process_tree import descendants
from common.features.model import BaseSpec, cpu_has_bfloat16, initial_head_weights
from common.site import SiteAccount, base_spec, load_site, train_round

PROJECT = Path(__file__).resolve().parent.parent
SHARED_CIFAR = PROJECT.parent / "shared" / "datasets" / "cifar10" / "train"


@dataclass(frozen=True)
class Plan:
    """How much of each measurement a run does."""

    extraction: dict[int, int]  # image size -> images timed
    head_examples: int
    head_steps: int
    round_sites: int
    round_images: int  # per site
    scale: tuple[tuple[int, int, int], ...]  # (sites, rounds, images)


QUICK = Plan(extraction={32: 512, 64: 256, 224: 32}, head_examples=10_000, head_steps=40,
             round_sites=2, round_images=600, scale=((10, 2, 2_000),))
FULL = Plan(extraction={32: 2048, 64: 512, 224: 96}, head_examples=20_000, head_steps=80,
            round_sites=4, round_images=1_000,
            scale=((10, 5, 10_000), (50, 5, 10_000), (100, 5, 10_000)))


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _peak_self_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- 1. extraction --------------------------------------------------------------------------

def bench_extraction(listing: Listing, plan: Plan, cfg: RunConfig,
                     dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict[str, float]:
    """Images/s of the frozen base per image size, in each compute dtype (key "64" is
    float32, "64-bfloat16" bfloat16)."""
    rates: dict[str, float] = {}
    for size, count in plan.extraction.items():
        pixels = load_images(listing.subset(np.arange(count)), size).pixels
        for dtype in dtypes:
            spec = BaseSpec(cfg.weights, size, cfg.base_layer, compute_dtype=dtype)
            base = LazyBase.for_spec(spec).get()
            extract(base, pixels[:64])  # first call builds the graph
            start = time.perf_counter()
            extract(base, pixels)
            key = str(size) if dtype == "float32" else f"{size}-{dtype}"
            rates[key] = count / (time.perf_counter() - start)
            _log(f"extraction {size} px, {dtype}: {rates[key]:.1f} images/s ({count} images)")
    return rates


# --- 2. head training -----------------------------------------------------------------------

def bench_head(plan: Plan, cfg: RunConfig) -> dict[str, Any]:
    from common.privacy.dp import SgdSettings, train_head

    rng = np.random.default_rng(0)
    n, dim = plan.head_examples, 512
    x = (rng.normal(size=(n, dim)) / np.sqrt(dim)).astype(np.float32)
    y = rng.integers(0, 10, n)
    rows: dict[str, Any] = {}
    for width in (cfg.head_width, 256):
        weights = initial_head_weights(dim, 10, width, seed=0)
        for private in (False, True):
            settings = SgdSettings(sampling_rate=cfg.batch_size / n, steps=plan.head_steps,
                                   learning_rate=0.1, momentum=cfg.momentum, private=private,
                                   clip_norm=cfg.clip_norm, noise_multiplier=1.0)
            times = []
            for _ in range(5):  # the first two calls trace and warm the graph
                start = time.perf_counter()
                train_head(x, y, weights, num_classes=10, head_width=width, settings=settings,
                           rng=rng)
                times.append(time.perf_counter() - start)
            steady = statistics.median(times[2:])
            rate = plan.head_steps * cfg.batch_size / steady
            rows[f"width{width}_{'dp' if private else 'nonprivate'}"] = rate
            _log(f"head width {width} {'DP' if private else 'non-private'}: {rate:,.0f} "
                 f"examples/s (first call {times[0]:.2f} s)")
    return rows


# --- 3. one round, naive against fedtl --------------------------------------------------------

def _naive_model(cfg: RunConfig, base: Any, settings: Any, batch: int) -> Any:
    import tensorflow as tf

    from common.privacy.dp import microbatched_optimizer
    from common.features.model import head_layers

    inputs = tf.keras.Input((cfg.image_size, cfg.image_size, 3))
    x = base.model(inputs)
    for layer in head_layers(len(cfg.classes), cfg.head_width, seed=0):
        x = layer(x)
    model = tf.keras.Model(inputs, x)
    model.compile(optimizer=microbatched_optimizer(settings, batch),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True, reduction=tf.keras.losses.Reduction.NONE))
    return model


def _naive_fit(model: Any, pixels: np.ndarray, labels: np.ndarray, batch: int,
               steps: int) -> None:
    import tensorflow as tf

    data = (tf.data.Dataset.from_tensor_slices((pixels.astype(np.float32), labels))
            .shuffle(len(labels)).repeat().batch(batch, drop_remainder=True).take(steps))
    model.fit(data, epochs=1, verbose=0)


def bench_round(listing: Listing, plan: Plan, cfg: RunConfig, work: Path) -> dict[str, Any]:
    """Every site's work in one round; sites run one after another, as on one core each."""
    shares = [listing.subset(np.arange(i * plan.round_images, (i + 1) * plan.round_images))
              for i in range(plan.round_sites)]
    cfg = cfg.replace(classes=listing.classes)
    weights = initial_head_weights(512, len(cfg.classes), cfg.head_width, seed=0)

    # fedtl: cold (nothing cached, nothing compiled, base not built), then warm rounds.
    fedtl_rounds: list[float] = []
    base = LazyBase.for_spec(base_spec(cfg))
    site_settings = []
    for round_index in range(4):
        start = time.perf_counter()
        for i, share in enumerate(shares):
            data = load_site(cfg, f"site-{i}", share, base, work / "state" / f"site-{i}",
                             holdout_seed=(cfg.seed, i))
            account = SiteAccount.for_run(cfg, work / "ledger" / str(i), "bench")
            result = train_round(cfg, data, weights, account, np.random.default_rng())
            if round_index == 0:
                site_settings.append((len(data.train_y), result.settings))
        fedtl_rounds.append(time.perf_counter() - start)
        _log(f"fedtl round {round_index + 1} "
             f"({'cold' if round_index == 0 else 'warm'}): {fedtl_rounds[-1]:.3f} s")

    # naive: the same sites, images, settings and expected examples per round.
    models, inputs = [], []
    for i, share in enumerate(shares):
        n, settings = site_settings[i]
        images = load_images(share, cfg.image_size)
        batch = max(1, round(settings.sampling_rate * n))
        models.append((_naive_model(cfg, base.get(), settings, batch), batch, settings.steps))
        inputs.append((images.pixels[:n], images.labels[:n]))
    naive_rounds: list[float] = []
    for round_index in range(2):
        start = time.perf_counter()
        for (model, batch, steps), (pixels, labels) in zip(models, inputs):
            _naive_fit(model, pixels, labels, batch, steps)
        naive_rounds.append(time.perf_counter() - start)
        _log(f"naive round {round_index + 1}: {naive_rounds[-1]:.3f} s")
    warm = statistics.median(fedtl_rounds[1:])
    naive = naive_rounds[-1]  # the model already built and traced: the naive way at its best
    return {
        "sites": plan.round_sites, "images_per_site": plan.round_images,
        "image_size": cfg.image_size, "base_layer": cfg.base_layer,
        "batch_size": cfg.batch_size, "local_epochs": cfg.local_epochs,
        "noise_multiplier": site_settings[0][1].noise_multiplier,
        "naive_round_s": naive, "naive_first_round_s": naive_rounds[0],
        "cold_round_s": fedtl_rounds[0], "warm_round_s": warm,
        "warm_rounds_s": fedtl_rounds[1:],
        "warm_round_speedup_vs_naive": naive / warm,
        "cold_round_speedup_vs_naive": naive / fedtl_rounds[0],
    }


# --- 4./5. memory of a process tree, and scale -------------------------------------------------

class TreeMemory:
    """Peak summed RSS and PSS of a process and all its descendants, sampled twice a second.

    RSS counts shared libraries once per process (an overestimate); PSS shares them out.
    """

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_rss_mb, self.peak_pss_mb = pid, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            rss = pss = 0.0
            for pid in descendants(self.pid):
                rss += _status_kb(pid, "/proc/{}/status", "VmRSS:")
                pss += _status_kb(pid, "/proc/{}/smaps_rollup", "Pss:")
            self.peak_rss_mb = max(self.peak_rss_mb, rss / 1024)
            self.peak_pss_mb = max(self.peak_pss_mb, pss / 1024)


def _status_kb(pid: int, pattern: str, key: str) -> float:
    try:
        for line in Path(pattern.format(pid)).read_text().splitlines():
            if line.startswith(key):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def bench_scale(dataset: str, plan: Plan, work: Path) -> list[dict[str, Any]]:
    rows = []
    classes = len(list_dataset(dataset).classes) if dataset != "digits" else 10
    for sites, rounds, images in plan.scale:
        out = work / f"scale-{sites}"
        args = [sys.executable, "-m", "common.cli", "simulate", "--dataset", dataset,
                "--max-per-class", str(images // classes), "--clients", str(sites),
                "--rounds", str(rounds), "--out", str(out), "--state", str(work / "scale-state")]
        _log(f"scale: {sites} sites, {rounds} rounds, {images} images ...")
        start = time.perf_counter()
        with open(work / f"scale-{sites}.log", "w") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT)
            with TreeMemory(proc.pid) as memory:
                code = proc.wait()
        seconds = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"scale run with {sites} sites failed; see {work}/scale-{sites}.log")
        report = json.loads((out / "report.json").read_text())
        round_seconds = [r["seconds"] for r in report["rounds"] if r.get("seconds") is not None]
        rows.append({
            "sites": sites, "rounds": rounds, "images": images, "seconds": seconds,
            "extraction_seconds": report["timing"]["feature_extraction_seconds"],
            "mean_round_seconds": statistics.mean(round_seconds) if round_seconds else None,
            "peak_rss_mb": memory.peak_rss_mb, "peak_pss_mb": memory.peak_pss_mb,
            "accuracy": report["final"]["accuracy"],
            "epsilon_max": max(report["final"]["epsilon"].values(), default=0.0),
        })
        _log(f"scale: {sites} sites: {seconds:.0f} s, peak RSS {memory.peak_rss_mb:,.0f} MB "
             f"(PSS {memory.peak_pss_mb:,.0f} MB), accuracy {rows[-1]['accuracy']:.3f}")
    return rows


# --- 6. deployment ---------------------------------------------------------------------------

DEPLOY_SITES = ("site-1", "site-2", "site-3")
_ANSWERED = "message answered in "


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_deployment(work: Path, project: Path = PROJECT, rounds: int = 5) -> dict[str, Any]:
    """A server daemon and three TLS sites on loopback; a warm-up run fills the feature
    caches, then a ``rounds``-round run is timed from its report. ``project``: the checkout
    (with its .venv) to measure."""
    python = str(project / ".venv" / "bin" / "python") if project != PROJECT else sys.executable

    def fedtl(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "common.cli", *args], cwd=project,
                              capture_output=True, text=True, timeout=timeout)

    root = work / "deploy"
    root.mkdir()
    fedtl("certs", "--out", str(root / "certs"))
    (root / "sites").mkdir()
    for name in DEPLOY_SITES:
        fedtl("keys", "--out", str(root / "keys"), "--name", name)
        (root / "sites" / f"{name}.pub").write_bytes((root / "keys" / f"{name}.pub").read_bytes())
    fedtl("demo-data", "--out", str(root / "data"), "--sites", str(len(DEPLOY_SITES)))
    fleet, control = f"127.0.0.1:{_free_port()}", _free_port()
    procs: list[subprocess.Popen] = []
    logs = {name: root / f"{name}.log" for name in ("server", *DEPLOY_SITES)}

    def start(name: str, *args: str) -> None:
        handle = open(logs[name], "w")  # noqa: SIM115 (kept open while it runs)
        procs.append(subprocess.Popen([python, "-m", "common.cli", *args], cwd=project,
                                      stdout=handle, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    def wait_for(name: str, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in logs[name].read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise SystemExit(f"deployment: {name} did not say {text!r}; see {logs[name]}")
            time.sleep(1)

    walls: dict[str, float] = {}

    def run(out: str, rounds_: int) -> dict[str, Any]:
        began = time.monotonic()
        done = fedtl("run", "--server", f"127.0.0.1:{control}", "--ca",
                     str(root / "certs" / "ca.crt"), "--classes-from",
                     str(root / "data" / "site-1"), "--min-sites", str(len(DEPLOY_SITES)),
                     "--rounds", str(rounds_), "--out", str(root / out))
        if done.returncode != 0 or not (root / out / "report.json").exists():
            raise SystemExit(f"deployment run {out} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        walls[out] = time.monotonic() - began
        return json.loads((root / out / "report.json").read_text())

    try:
        start("server", "server", "--state", str(root / "server-state"), "--certs",
              str(root / "certs"), "--sites", str(root / "sites"), "--address", fleet,
              "--control-port", str(control))
        wait_for("server", "fedtl server: ready")
        for name in DEPLOY_SITES:
            start(name, "client", "--server", fleet, "--data", str(root / "data" / name),
                  "--state", str(root / "state" / name), "--budget", "100",
                  "--key", str(root / "keys" / f"{name}.key"),
                  "--ca", str(root / "certs" / "ca.crt"), "--name", name,
                  "--site-metrics", "exact")
            wait_for(name, "SuperNode ID")
        _log("deployment: warm-up run (extracts and caches the sites' features) ...")
        run("warm-up", 1)
        marks = {name: len(logs[name].read_text(errors="replace")) for name in DEPLOY_SITES}
        _log(f"deployment: timed run of {rounds} rounds ...")
        report = run("timed", rounds)
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
    seconds = [r["seconds"] for r in report["rounds"]]
    worker = []  # per site: seconds its worker spent answering the timed run's messages
    parts: dict[str, list[float]] = {"pull": [], "work": [], "push": []}
    for name in DEPLOY_SITES:
        text = logs[name].read_text(errors="replace")[marks[name]:]
        answered = [line.split(_ANSWERED)[1] for line in text.splitlines() if _ANSWERED in line]
        worker.append(sum(float(line.split()[0]) for line in answered))
        for line in answered:  # "1.23 s (pull 0.50, work 0.10, push 0.60)"
            for part in parts:
                if f"{part} " in line:
                    parts[part].append(float(line.split(f"{part} ")[1].split(",")[0]
                                             .rstrip(")")))
    per_round_worker = statistics.mean(worker) / rounds if any(worker) else None
    warm = statistics.median(seconds[1:])
    return {"sites": len(DEPLOY_SITES), "rounds": rounds, "round_seconds": seconds,
            "deployed_first_round_seconds": seconds[0], "deployed_round_seconds": warm,
            "worker_seconds_per_round": per_round_worker,
            "worker_seconds_per_message": {k: statistics.mean(v) for k, v in parts.items() if v},
            "rest_seconds_per_round": (statistics.mean(seconds) - per_round_worker
                                       if per_round_worker is not None else None),
            "accuracy": report["final"]["accuracy"],
            # `fedtl run` from launch to its exit, and what of it no round accounts for
            # (submitting the app, starting the ServerApp, saving the model)
            "run_wall_seconds": walls["timed"],
            "run_outside_rounds_seconds": walls["timed"] - sum(seconds)}


# --- the table --------------------------------------------------------------------------------

def table(result: dict[str, Any]) -> str:
    r = result["round"]
    head = result["head_examples_per_s"]
    lines = ["| measurement | value |", "| --- | --- |"]
    for key, rate in result["extraction_images_per_s"].items():
        size, _, dtype = key.partition("-")
        lines.append(f"| base extraction, {size} px ({result['settings']['base_layer']}, "
                     f"{dtype or 'float32'}) | {rate:,.1f} images/s |")
    for key, rate in head.items():
        lines.append(f"| head training, {key.replace('_', ', ')} | {rate:,.0f} examples/s |")
    lines += [
        f"| DP / non-private head speed (default head) | {result['dp_over_nonprivate_ratio']:.2f} |",
        f"| naive round ({r['sites']} sites x {r['images_per_site']} images, {r['image_size']} px)"
        f" | {r['naive_round_s']:.2f} s |",
        f"| fedtl round, cold cache | {r['cold_round_s']:.2f} s "
        f"({r['cold_round_speedup_vs_naive']:.1f}x naive) |",
        f"| fedtl round, warm cache | {r['warm_round_s']:.3f} s "
        f"({r['warm_round_speedup_vs_naive']:.0f}x naive) |",
        f"| peak RSS of the benchmark process | {result['peak_rss_self_mb']:,.0f} MB |",
    ]
    deployed = result.get("deployment")
    if deployed:
        split = ("" if deployed["worker_seconds_per_round"] is None else
                 f"; per round {deployed['worker_seconds_per_round']:.2f} s in each site's "
                 f"worker, {deployed['rest_seconds_per_round']:.2f} s waiting and relaying")
        lines += [
            f"| deployed round, warm ({deployed['sites']} TLS sites on loopback, median of "
            f"rounds 2-{deployed['rounds']}) | {deployed['deployed_round_seconds']:.2f} s{split} |",
            f"| deployed first round (features cached) | "
            f"{deployed['deployed_first_round_seconds']:.2f} s |",
            f"| `fedtl run` of {deployed['rounds']} rounds, launch to exit | "
            f"{deployed['run_wall_seconds']:.1f} s ({deployed['run_outside_rounds_seconds']:.1f}"
            " s outside the rounds) |"]
    for row in result["scale"]:
        per_round = (f"{row['mean_round_seconds']:.1f} s/round"
                     if row["mean_round_seconds"] is not None else "")
        lines.append(
            f"| scale: {row['sites']} sites, {row['rounds']} rounds, {row['images']:,} images | "
            f"{row['seconds']:.0f} s ({per_round}), peak RSS {row['peak_rss_mb']:,.0f} MB / "
            f"PSS {row['peak_pss_mb']:,.0f} MB, accuracy {row['accuracy']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer images, 2 sites per round, one small scale run")
    parser.add_argument("--json", default="benchmarks/results.json", help="where to write JSON")
    parser.add_argument("--dataset", default=str(SHARED_CIFAR) if SHARED_CIFAR.is_dir()
                        else "digits", help="class-folder dataset (default: shared CIFAR-10)")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale runs")
    parser.add_argument("--only-deployment", action="store_true",
                        help="measure only the deployed round")
    parser.add_argument("--project", default=None,
                        help="measure the deployment of another checkout (its .venv)")
    args = parser.parse_args(argv)
    project = Path(args.project).resolve() if args.project else PROJECT
    if args.only_deployment:
        with tempfile.TemporaryDirectory(prefix="fedtl-bench-") as tmp:
            deployed = bench_deployment(Path(tmp), project)
        result = {"deployment": deployed, "project": args.project or str(PROJECT)}
        d = deployed
        print(f"| deployed round, warm (median of rounds 2-{d['rounds']}) | "
              f"{d['deployed_round_seconds']:.2f} s |\n| deployed first round | "
              f"{d['deployed_first_round_seconds']:.2f} s |\n| worker s/round | "
              f"{d['worker_seconds_per_round']} |\n| `fedtl run`, launch to exit | "
              f"{d['run_wall_seconds']:.1f} s ({d['run_outside_rounds_seconds']:.1f} s outside "
              "the rounds) |")
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    plan = QUICK if args.quick else FULL
    cfg = RunConfig(dataset=args.dataset)
    listing = list_dataset(args.dataset)
    # Interleave the classes so any prefix of the listing has all of them.
    per_class = [np.flatnonzero(listing.labels == c) for c in range(len(listing.classes))]
    order = np.stack([p[: min(map(len, per_class))] for p in per_class], axis=1).ravel()
    listing = listing.subset(order)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fedtl-bench-") as tmp:
        work = Path(tmp)
        extraction = bench_extraction(listing, plan, cfg)
        head = bench_head(plan, cfg)
        round_ = bench_round(listing, plan, cfg, work)
        scale = [] if args.no_scale else bench_scale(args.dataset, plan, work)
        deployment = bench_deployment(work, project)
    self_peak = _peak_self_mb()
    width = cfg.head_width
    result = {
        "quick": args.quick, "dataset": args.dataset,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": {"image_size": cfg.image_size, "base_layer": cfg.base_layer,
                     "batch_size": cfg.batch_size, "head_width": width},
        "cpu_has_bfloat16": cpu_has_bfloat16(),
        "extraction_images_per_s": extraction,
        "head_examples_per_s": head,
        "dp_over_nonprivate_ratio": head[f"width{width}_dp"] / head[f"width{width}_nonprivate"],
        "round": round_,
        "warm_round_speedup_vs_naive": round_["warm_round_speedup_vs_naive"],
        "peak_rss_self_mb": self_peak,
        "peak_rss_mb": max([self_peak, *(row["peak_rss_mb"] for row in scale)]),
        "scale": scale,
        "deployment": deployment,
        "deployed_round_seconds": deployment["deployed_round_seconds"],
        "simulated_warm_round_seconds": round_["warm_round_s"],
        "seconds": time.time() - started,
    }
    print(table(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    _log(f"written {args.json} after {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
