"""In-situ customisation after training: models of any offered width (and robustness lambda) of a
finished run, as plain modules (``load_run``) or standalone files (``export``); docs/deploy.md."""

from splitmix.deploy.run import TrainedRun, load_run

__all__ = ["TrainedRun", "load_run"]
