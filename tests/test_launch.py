"""`fedtl run`'s checks before it contacts the server."""

from __future__ import annotations

import io

import pytest

from common.config import RunConfig
from common.deploy.control import ControlAddress
from common.errors import ConfigError, FedtlError
from server.launch import launch

# Nothing listens here: a check that lets a run through fails on connecting instead.
NOWHERE = ControlAddress("127.0.0.1:1", insecure=True)


@pytest.mark.parametrize("settings, message", [
    ({"out": "/srv/runs/a"}, "needs its class list"),
    ({"classes": ("a", "b"), "out": "runs/a"}, "--out must be an absolute path"),
    ({"classes": ("a", "b"), "out": "/srv/runs/a", "public": "public-images"},
     "--public must be an absolute path"),
])
def test_a_run_the_server_could_not_place_is_refused_before_submission(
        settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        launch(RunConfig(**settings), NOWHERE)


def test_a_public_folder_an_sgd_run_would_not_read_is_said_to_be_unread() -> None:
    out = io.StringIO()
    cfg = RunConfig(classes=("a", "b"), out="/srv/runs/a", public="/srv/public",
                    head_method="sgd")
    with pytest.raises(FedtlError, match="127.0.0.1:1"):  # said before submitting
        launch(cfg, NOWHERE, out=out)
    assert "fedtl run: --public /srv/public is not read" in out.getvalue()
    assert cfg.replace(head_method="ridge+sgd").unread_public is None
    assert cfg.replace(public="").unread_public is None
