"""splitmix-bench: Split-Mix federated learning, reproduced and compared.

``splitmix.load_run(path)`` restores a finished training run and hands out a model of any width
(and dual-BN lambda) it offers (``splitmix.deploy``, docs/deploy.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitmix.version import __version__

__all__ = ["__version__", "load_run"]

if TYPE_CHECKING:
    from splitmix.deploy.run import TrainedRun


def load_run(path, *, device: str | None = None) -> TrainedRun:
    """The finished run in folder ``path``, ready to deploy (``splitmix.deploy.load_run``).

    Imported on call: ``import splitmix`` stays free of torch, because the workflow imports the
    package while it parses the Snakefile."""
    from splitmix.deploy.run import load_run as _load_run

    return _load_run(path, device=device)
