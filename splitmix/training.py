"""Train a run from its config: build the federation and the method, hand both to the engine.

The engine (``splitmix.fl.engine``) knows no method and looks none up: it receives the built
algorithm. This module, above discovery (``splitmix.methods``), is where a config becomes one, so
the command line, the estimate, the benchmarks and the tests all start a run the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from splitmix.config import RunConfig
from splitmix.data.clients import Federation
from splitmix.fl import engine
from splitmix.methods import build_algorithm


def _federation(cfg: RunConfig, federation: Federation | None) -> Federation:
    if federation is not None:
        return federation
    from splitmix.data.federation import build_federation

    return build_federation(cfg)


def run_training(
    cfg: RunConfig,
    out_dir: Path,
    *,
    federation: Federation | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    restart: bool = False,
    discard_stale: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir`` (``federation``: the run's clients, built from ``cfg`` when
    None); the arguments and the summary are ``splitmix.fl.engine.train``'s."""
    fed = _federation(cfg, federation)
    return engine.train(
        build_algorithm(cfg, fed),
        fed,
        Path(out_dir),
        progress=progress,
        stop_after=stop_after,
        restart=restart,
        discard_stale=discard_stale,
    )


def training_run(
    cfg: RunConfig, out_dir: Path, federation: Federation | None = None, progress: bool = False
) -> engine.TrainingRun:
    """The engine's ``TrainingRun`` of ``cfg``, for tools that drive or time single rounds
    (``splitmix estimate``, the benchmarks)."""
    fed = _federation(cfg, federation)
    return engine.TrainingRun(build_algorithm(cfg, fed), Path(out_dir), fed, progress)
