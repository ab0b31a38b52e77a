"""Server checkpoints and the daemon's run registry: atomic, exact, and strict about settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import RunConfig
from common.errors import ConfigError
from server.checkpoint import Checkpoint, check_resumable, load_checkpoint, save_checkpoint
from server.run_registry import RunRegistry


def checkpoint(round_: int = 2) -> Checkpoint:
    return Checkpoint(run_id="abc", settings=RunConfig().to_flower(), round=round_,
                      arrays=[np.arange(6, dtype=np.float32).reshape(3, 2),
                              np.ones(2, np.float32)],
                      history=[{"round": 1, "accuracy": 0.5}, {"round": 2, "accuracy": 0.6}],
                      epsilon_by_site={"a": 1.5}, skipped_by_site={"a": 0},
                      extract_seconds=3.0, elapsed_seconds=12.0)


def test_a_checkpoint_reads_back_exactly(tmp_path: Path) -> None:
    saved = checkpoint()
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None
    for got, want in zip(loaded.arrays, saved.arrays, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert {k: v for k, v in vars(loaded).items() if k != "arrays"} == \
        {k: v for k, v in vars(saved).items() if k != "arrays"}


def test_no_checkpoint_is_none_and_a_damaged_one_is_named(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="checkpoint.npz"):
        load_checkpoint(tmp_path)


def test_a_newer_checkpoint_replaces_the_older_whole(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, checkpoint(1))
    save_checkpoint(tmp_path, checkpoint(2))
    assert load_checkpoint(tmp_path).round == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]  # no temporary left


def test_resuming_under_other_settings_is_refused_naming_them() -> None:
    saved = checkpoint()
    check_resumable(saved, RunConfig().to_flower())
    check_resumable(saved, RunConfig(state="/elsewhere", cache=False).to_flower())
    with pytest.raises(ConfigError, match="rounds: 10 -> 12"):
        check_resumable(saved, RunConfig(rounds=12).to_flower())


def test_the_registry_lists_only_runs_that_started_and_did_not_end(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path)
    assert registry.unfinished() == []
    for run in ("r1", "r2", "r3"):
        registry.started(run, f"/out/{run}", {"rounds": 3})
    registry.finished("r1")
    registry.failed("r3")
    assert [(r.run_id, r.out) for r in registry.unfinished()] == [("r2", "/out/r2")]
    assert RunRegistry(tmp_path).get("r1").status == "finished"


def test_the_server_optimizer_state_survives_a_checkpoint(tmp_path: Path) -> None:
    moments = [np.full((2, 2), 0.5, np.float32), np.ones(3, np.float32)]
    save_checkpoint(tmp_path, Checkpoint(run_id="r", settings={}, round=2,
                                         arrays=[np.zeros(2, np.float32)],
                                         server_state=moments))
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None and len(loaded.server_state) == 2
    assert all(np.array_equal(a, b) for a, b in zip(loaded.server_state, moments))
    assert len(loaded.arrays) == 1
