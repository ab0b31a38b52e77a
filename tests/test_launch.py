"""`fedtl run`'s checks before it contacts the server."""

from __future__ import annotations

import pytest

from common.config import RunConfig
from common.deploy.control import ControlAddress
from common.errors import ConfigError
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
