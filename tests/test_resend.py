"""A lost reply is answered again with the same update, free; anything else trains anew."""

from pathlib import Path

import numpy as np
import pytest

from common import resend
from common.errors import ConfigError

HEAD = [np.arange(6, dtype=np.float32).reshape(3, 2), np.zeros(2, np.float32)]


def test_the_same_request_recalls_the_update_with_its_figures_and_types(tmp_path: Path) -> None:
    key = resend.request_key(HEAD, 0.0)
    update = resend.KeptUpdate([w + 1 for w in HEAD], {"num-examples": 120, "epsilon": 1.5})
    resend.keep(tmp_path, "run-1", key, update)
    again = resend.recall(tmp_path, "run-1", key)
    assert again is not None
    assert all(np.array_equal(a, b) for a, b in zip(again.weights, update.weights))
    assert again.figures == update.figures and type(again.figures["num-examples"]) is int


def test_another_head_mu_or_run_is_not_answered_from_the_kept_update(tmp_path: Path) -> None:
    key = resend.request_key(HEAD, 0.0)
    resend.keep(tmp_path, "run-1", key, resend.KeptUpdate(HEAD, {"epsilon": 1.0}))
    moved = [HEAD[0] + 1e-3, HEAD[1]]
    assert resend.recall(tmp_path, "run-1", resend.request_key(moved, 0.0)) is None
    assert resend.recall(tmp_path, "run-1", resend.request_key(HEAD, 0.01)) is None
    assert resend.recall(tmp_path, "run-2", key) is None
    assert resend.request_key(HEAD, 0.0) != resend.request_key(
        [w.astype(np.float64) for w in HEAD], 0.0)


def test_a_damaged_kept_update_means_train_again_not_a_crash(tmp_path: Path) -> None:
    key = resend.request_key(HEAD, 0.0)
    resend.keep(tmp_path, "run-1", key, resend.KeptUpdate(HEAD, {"epsilon": 1.0}))
    (tmp_path / "runs" / "run-1" / resend.FILE).write_bytes(b"PK\x03\x04 truncated")
    assert resend.recall(tmp_path, "run-1", key) is None


def test_a_run_key_cannot_lead_out_of_the_state_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a plain name"):
        resend.keep(tmp_path, "../x", "k", resend.KeptUpdate(HEAD, {}))


def test_figures_are_kept_apart_from_the_update_and_recalled_only_as_their_kind(
        tmp_path: Path) -> None:
    key = resend.request_key(HEAD, 0.0)  # an evaluation of the head a round trained from
    update = resend.KeptUpdate([w + 1 for w in HEAD], {"num-examples": 120})
    resend.keep(tmp_path, "run-1", key, update)
    resend.keep(tmp_path, "run-1", key, resend.KeptUpdate([], {"accuracy": 0.5}),
                kind="evaluate")
    kept = resend.recall(tmp_path, "run-1", key)
    assert kept is not None and kept.figures == {"num-examples": 120}
    figures = resend.recall(tmp_path, "run-1", key, kind="evaluate")
    assert figures is not None and figures.weights == [] and figures.figures == {"accuracy": 0.5}
    assert resend.recall(tmp_path, "run-1", key, kind="personalize") is None
    # A kept file read as another kind (say, one copied over another) is not answered from.
    run = tmp_path / "runs" / "run-1"
    (run / resend.KINDS["personalize"]).write_bytes((run / resend.FILE).read_bytes())
    assert resend.recall(tmp_path, "run-1", key, kind="personalize") is None
