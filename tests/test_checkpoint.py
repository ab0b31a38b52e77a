"""Server checkpoints and the daemon's run registry: atomic, exact, and strict about settings."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from flwr.supercore.inflatable.inflatable_utils import ObjectPushError

from common.config import RunConfig
from common.errors import ConfigError
from server.checkpoint import Checkpoint, check_resumable, load_checkpoint, save_checkpoint
from server.run_registry import RunRegistry


def checkpoint(round_: int = 2) -> Checkpoint:
    return Checkpoint(run_id="abc", settings=RunConfig().to_flower(), round=round_,
                      arrays=[np.arange(6, dtype=np.float32).reshape(3, 2),
                              np.ones(2, np.float32)],
                      book={"rounds_done": round_,
                            "history": [{"round": 1, "accuracy": 0.5},
                                        {"round": 2, "accuracy": 0.6}],
                            "privacy": {"a": {"epsilon": 1.5, "sampling_rate": 0.5,
                                              "noise_multiplier": 2.0, "steps": 4}},
                            "skipped": {"a": 0}, "extract_seconds": 3.0},
                      elapsed_seconds=12.0)


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


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_a_truncated_checkpoint_is_a_clear_error_not_a_traceback(tmp_path: Path,
                                                                  keep: float) -> None:
    save_checkpoint(tmp_path, checkpoint())
    path = tmp_path / "checkpoint.npz"
    whole = path.read_bytes()
    path.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(ConfigError, match="checkpoint.npz is unreadable"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_of_the_first_format_still_resumes(tmp_path: Path) -> None:
    import json

    from server.runbook import RunBook

    state = {"run_id": "old", "settings": {}, "round": 1, "elapsed_seconds": 5.0,
             "history": [{"round": 1, "accuracy": 0.4}], "epsilon_by_site": {"a": 1.0},
             "skipped_by_site": {"a": 2}, "extract_seconds": 1.5,
             "privacy_by_site": {"a": {"epsilon": 1.0, "sampling_rate": 1.0,
                                       "noise_multiplier": 3.0, "steps": 1}},
             "server_state": [], "client_dp": {}}
    np.savez(tmp_path / "checkpoint.npz", array_0=np.zeros(2, np.float32),
             state=np.frombuffer(json.dumps(state).encode(), dtype=np.uint8))
    loaded = load_checkpoint(tmp_path)
    book = RunBook([])
    book.restore(loaded.book, loaded.arrays)
    assert book.round_offset == 1 and book.privacy["a"].noise_multiplier == 3.0
    assert book.skipped == {"a": 2} and book.history[0].accuracy == 0.4


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
    registry.failed("r3", "ValueError: bad")
    assert [(r.run_id, r.out) for r in registry.unfinished()] == [("r2", "/out/r2")]
    assert RunRegistry(tmp_path).get("r1").status == "finished"
    assert RunRegistry(tmp_path).get("r3").reason == "ValueError: bad"
    registry.interrupted("r2", "ObjectPushError: session expired")
    assert [(r.run_id, r.status) for r in registry.unfinished()] == [("r2", "interrupted")]


def _raising(exc: BaseException):  # noqa: ANN202
    def federate(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise exc
    return federate


def _chained() -> RuntimeError:
    try:
        try:
            raise httpx.ConnectError("connection refused")
        except httpx.ConnectError as inner:
            raise RuntimeError("pushing the round's messages failed") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(("exc", "status"), [
    (ObjectPushError("34d22c3b", 5692472858473512453, "7c411c96"), "interrupted"),
    (_chained(), "interrupted"),
    (ValueError("a site's reply has the wrong shape"), "failed"),
    (ConfigError("the run config names no classes"), "failed"),
])
def test_a_run_that_loses_its_superlink_is_interrupted_and_any_other_error_fails_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception, status: str) -> None:
    # A daemon killed mid-run takes its SuperLink with it; the run's process may live long
    # enough to see its link break. That must leave the run for the restarted daemon to
    # resume, while a fault of the run itself (which a relaunch would repeat) is final.
    from server import federation

    monkeypatch.setattr(federation, "_federate", _raising(exc))
    registry = RunRegistry(tmp_path / "state")
    cfg = RunConfig(classes=("a", "b"), out=str(tmp_path / "run"))
    with pytest.raises(type(exc)):
        federation.run_server(object(), cfg, registry=registry)  # type: ignore[arg-type]
    (run,) = registry.scan()[0]
    assert run.status == status and type(exc).__name__ in run.reason
    assert [r.run_id for r in registry.unfinished()] == ([run.run_id] if status == "interrupted"
                                                         else [])


def test_a_damaged_run_record_is_named_and_skipped_not_fatal(tmp_path: Path) -> None:
    registry = RunRegistry(tmp_path)
    registry.started("good", "/out/good", {"rounds": 3})
    (registry.folder / "broken.json").write_text('{"run_id": "broken", "out"')
    (registry.folder / "odd.json").write_text("[1, 2]")
    runs, damaged = registry.scan()
    assert [r.run_id for r in runs] == ["good"]
    assert len(damaged) == 2 and any("broken.json" in d for d in damaged)
    assert [r.run_id for r in registry.unfinished()] == ["good"]


def test_the_server_optimizer_state_survives_a_checkpoint(tmp_path: Path) -> None:
    moments = [np.full((2, 2), 0.5, np.float32), np.ones(3, np.float32)]
    save_checkpoint(tmp_path, Checkpoint(run_id="r", settings={}, round=2,
                                         arrays=[np.zeros(2, np.float32)],
                                         book={"rounds_done": 2}, optimizer=moments))
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None and len(loaded.optimizer) == 2
    assert all(np.array_equal(a, b) for a, b in zip(loaded.optimizer, moments))
    assert len(loaded.arrays) == 1
