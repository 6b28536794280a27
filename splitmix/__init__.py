"""splitmix-bench: Split-Mix federated learning, reproduced and compared."""

__version__ = "0.1.0"
