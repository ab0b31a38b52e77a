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
5. scale: ``fedtl simulate`` with 10, 50 and 100 sites on a slice of CIFAR-10.
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
from common.data import Listing, list_dataset, load_images
from common.features import LazyBase, extract
from common.ledger import PrivacyLedger
from common.model import BaseSpec, initial_head_weights
from common.site import base_spec, load_site, sgd_settings, train_round

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

def bench_extraction(listing: Listing, plan: Plan, cfg: RunConfig) -> dict[str, float]:
    rates: dict[str, float] = {}
    for size, count in plan.extraction.items():
        base = LazyBase.for_spec(BaseSpec(cfg.weights, size, cfg.base_layer)).get()
        pixels = load_images(listing.subset(np.arange(count)), size).pixels
        extract(base, pixels[:64])  # first call builds the graph
        start = time.perf_counter()
        extract(base, pixels)
        rates[str(size)] = count / (time.perf_counter() - start)
        _log(f"extraction {size} px: {rates[str(size)]:.1f} images/s ({count} images)")
    return rates


# --- 2. head training -----------------------------------------------------------------------

def bench_head(plan: Plan, cfg: RunConfig) -> dict[str, Any]:
    from common.dp import SgdSettings, train_head

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

    from common.dp import microbatched_optimizer
    from common.model import head_layers

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
            result = train_round(cfg, data, weights, PrivacyLedger(work / "ledger" / str(i)),
                                 "bench", np.random.default_rng())
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
            for pid in _descendants(self.pid):
                rss += _status_kb(pid, "/proc/{}/status", "VmRSS:")
                pss += _status_kb(pid, "/proc/{}/smaps_rollup", "Pss:")
            self.peak_rss_mb = max(self.peak_rss_mb, rss / 1024)
            self.peak_pss_mb = max(self.peak_pss_mb, pss / 1024)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


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


# --- the table --------------------------------------------------------------------------------

def table(result: dict[str, Any]) -> str:
    r = result["round"]
    head = result["head_examples_per_s"]
    lines = ["| measurement | value |", "| --- | --- |"]
    for size, rate in result["extraction_images_per_s"].items():
        lines.append(f"| base extraction, {size} px ({result['settings']['base_layer']}) | "
                     f"{rate:,.1f} images/s |")
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
    args = parser.parse_args(argv)
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
    self_peak = _peak_self_mb()
    width = cfg.head_width
    result = {
        "quick": args.quick, "dataset": args.dataset,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": {"image_size": cfg.image_size, "base_layer": cfg.base_layer,
                     "batch_size": cfg.batch_size, "head_width": width},
        "extraction_images_per_s": extraction,
        "head_examples_per_s": head,
        "dp_over_nonprivate_ratio": head[f"width{width}_dp"] / head[f"width{width}_nonprivate"],
        "round": round_,
        "warm_round_speedup_vs_naive": round_["warm_round_speedup_vs_naive"],
        "peak_rss_self_mb": self_peak,
        "peak_rss_mb": max([self_peak, *(row["peak_rss_mb"] for row in scale)]),
        "scale": scale,
        "seconds": time.time() - started,
    }
    print(table(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    _log(f"written {args.json} after {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
