"""fedtl's Flower ServerApp: parse the run config, then hand over to `server.federation`."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.data.images import list_dataset
from server.federation import PreRun, run_server
from server.prompt_grid import PromptGrid
from server.run_registry import SERVER_STATE_ENV, RunRegistry


def make_server_app(config: RunConfig | None = None, prerun: PreRun | None = None,
                    failures: list[BaseException] | None = None,
                    stopped: threading.Event | None = None) -> ServerApp:
    """A ServerApp using ``config``, or parsing Flower's run config when it is None.

    Exceptions are appended to ``failures`` (Flower's simulation only logs them) and raised.
    Once ``stopped`` is set (the simulation engine has ended) the app stops waiting for sites.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            cfg = config if config is not None else RunConfig.from_flower(context.run_config)
            if not cfg.classes:  # `flwr run` on a local dataset: take its class folders
                cfg = cfg.replace(classes=list_dataset(cfg.dataset).classes)
            # Set by `fedtl server` for the SuperLink it starts, whose ServerApps inherit it.
            state = os.environ.get(SERVER_STATE_ENV)
            run_server(PromptGrid(grid, stopped=stopped), cfg, prerun,
                       RunRegistry(Path(state)) if state else None)
        except BaseException as exc:
            if failures is not None:
                failures.append(exc)
            raise

    return app


app = make_server_app()
