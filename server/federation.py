"""The server's side of a run: FedAvg over the heads, then the Keras model and the report."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from common import protocol
from common.config import RunConfig
from common.errors import FedtlError
from common.model import PREPROCESSING, build_base, full_model, initial_head_weights
from common.report import versions, write_report
from common.site import base_spec
from server.checkpoint import Checkpoint, check_resumable, load_checkpoint, save_checkpoint
from server.run_registry import RunRegistry
from server.strategy import RoundRecord, ValidatingFedAvg


@dataclass(frozen=True)
class PreRun:
    """What happened before Flower started (a simulation extracts features up front)."""

    feature_extraction_seconds: float = 0.0
    started: float = 0.0


class RoundTable:
    """Prints one table row per round as the run goes."""

    HEADER = f"{'round':>5} | {'train loss':>10} | {'accuracy':>8} | {'max eps':>8} | sites"

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        print(self.HEADER, file=stream)
        print("-" * len(self.HEADER), file=stream, flush=True)

    def __call__(self, r: RoundRecord) -> None:
        def fmt(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        note = f"{len(r.sites_trained)} trained"
        if r.declined:
            note += f", {len(r.declined)} declined (budget)"
        if r.rejected:
            note += f", {len(r.rejected)} rejected"
        print(f"{r.round:>5} | {fmt(r.train_loss, '10.4f')} | {fmt(r.accuracy, '8.4f')} | "
              f"{fmt(r.epsilon_max, '8.3f')} | {note}", file=self.stream, flush=True)


def run_server(grid: Grid, cfg: RunConfig, prerun: PreRun | None = None,
               registry: RunRegistry | None = None) -> Path:
    """Run ``cfg.rounds`` rounds on ``grid``; write model.keras and report.json to ``cfg.out``.

    After every round the global head and the accounting state are checkpointed in
    ``cfg.out``; if a checkpoint of the same run is there, the run resumes after its last
    completed round. ``registry`` (the daemon's) learns of the run so that a restarted
    daemon can relaunch it.
    """
    prerun = prerun or PreRun(started=time.time())
    if not cfg.classes:
        raise FedtlError("the run config names no classes; set 'classes' (comma-separated)")
    out = Path(cfg.out)
    if (out / "report.json").exists():
        raise FedtlError(f"{out} already holds a finished run; choose another output folder")
    settings = cfg.to_flower()
    checkpoint = load_checkpoint(out)
    if checkpoint is not None:
        check_resumable(checkpoint, settings)
    run_id = checkpoint.run_id if checkpoint else uuid.uuid4().hex
    if registry is not None:
        registry.started(run_id, str(out.resolve()), settings)
    try:
        return _federate(grid, cfg, prerun, run_id, checkpoint, registry)
    except FedtlError:
        if registry is not None:
            registry.failed(run_id)
        raise


def _federate(grid: Grid, cfg: RunConfig, prerun: PreRun, run_id: str,
              checkpoint: Checkpoint | None, registry: RunRegistry | None) -> Path:
    out, settings = Path(cfg.out), cfg.to_flower()
    base = build_base(base_spec(cfg))
    strategy = ValidatingFedAvg(
        fingerprint=base.fingerprint, max_update_norm=cfg.max_update_norm,
        # Start a round once enough sites are connected; aggregate it with at least
        # --min-sites accepted updates (any one, if no minimum was set).
        min_available_nodes=cfg.required_sites, min_train_nodes=cfg.min_sites or 1,
        min_evaluate_nodes=1,
        weighted_by_key=protocol.NUM_EXAMPLES,
        arrayrecord_key=protocol.ARRAYS, configrecord_key=protocol.CONFIG,
    )
    elapsed_before = 0.0
    if checkpoint is None:
        initial = initial_head_weights(base.spec.feature_dim, len(cfg.classes), cfg.head_width,
                                       cfg.seed)
    else:
        initial = checkpoint.arrays
        strategy.resume(checkpoint.round, [RoundRecord(**r) for r in checkpoint.history],
                        checkpoint.epsilon_by_site, checkpoint.skipped_by_site,
                        checkpoint.extract_seconds)
        elapsed_before = checkpoint.elapsed_seconds
        print(f"resuming run {run_id} after round {checkpoint.round} of {cfg.rounds} "
              f"(checkpoint in {out})", flush=True)
    table = RoundTable()
    for record in strategy.history:
        table(record)

    def after_round(record: RoundRecord) -> None:
        table(record)
        save_checkpoint(out, Checkpoint(
            run_id=run_id, settings=settings, round=record.round, arrays=strategy.arrays,
            history=[asdict(r) for r in strategy.history],
            epsilon_by_site=strategy.epsilon_by_site, skipped_by_site=strategy.skipped_by_site,
            extract_seconds=strategy.extract_seconds,
            elapsed_seconds=elapsed_before + time.time() - prerun.started))

    strategy.on_round = after_round
    remaining = cfg.rounds - (checkpoint.round if checkpoint else 0)
    if remaining > 0:
        # The server is the authority on the class list; sites check theirs against it.
        federation = ConfigRecord({protocol.FINGERPRINT: base.fingerprint,
                                   protocol.CLASSES: list(cfg.classes),
                                   protocol.RUN_ID: run_id})
        strategy.start(grid, ArrayRecord(initial), num_rounds=remaining,
                       train_config=federation,
                       evaluate_config=ConfigRecord(dict(federation)),
                       timeout=cfg.round_timeout)
    if not any(r.sites_trained for r in strategy.history):
        raise FedtlError("no site contributed an accepted update in any round; nothing to save "
                         "(see the warnings above for why sites declined or were rejected)")
    weights = strategy.arrays or initial
    out.mkdir(parents=True, exist_ok=True)
    save_model(full_model(base, weights, len(cfg.classes), cfg.head_width), out / "model.keras")
    report = build_report(cfg, base.fingerprint, strategy, prerun, run_id, elapsed_before)
    path = write_report(out, report)
    if registry is not None:
        registry.finished(run_id)
    return path


def save_model(model: Any, path: Path) -> None:
    """Save a Keras model to ``path`` through a temporary file, so no half-written model stays."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_report(cfg: RunConfig, fingerprint: str, strategy: ValidatingFedAvg,
                 prerun: PreRun, run_id: str, elapsed_before: float = 0.0) -> dict[str, Any]:
    last = strategy.history[-1]
    return {
        "run_id": run_id,
        "settings": cfg.to_flower(),
        "base": {"weights": cfg.weights, "fingerprint": fingerprint,
                 "base_layer": cfg.base_layer, "image_size": cfg.image_size,
                 "preprocessing": PREPROCESSING},
        "versions": versions(),
        "rounds": [asdict(r) for r in strategy.history],
        "final": {
            "accuracy": last.accuracy,
            "per_site_accuracy": last.site_accuracy,
            "epsilon": strategy.epsilon_by_site if cfg.dp else {},
            "delta": cfg.delta,
            "target_epsilon": cfg.target_epsilon if cfg.dp else None,
            "private": cfg.dp,
        },
        "data": {"skipped_images": sum(strategy.skipped_by_site.values()),
                 "skipped_images_by_site": strategy.skipped_by_site},
        "timing": {
            "total_seconds": elapsed_before + time.time() - prerun.started,
            "feature_extraction_seconds": prerun.feature_extraction_seconds
            + strategy.extract_seconds,
        },
    }
