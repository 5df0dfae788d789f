"""The Flower ServerApp (``edgekit.federated.server.app:app``): the run config -> the async loop."""
from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..config import FedConfig
from .loop import AsyncServer, log

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    cfg = FedConfig.from_run_config(context.run_config)
    result = AsyncServer(grid, cfg).run()
    log.info("finished: method %s, version %d, final accuracy %.4f", result["method"],
             result["version"], result["final_acc"])
