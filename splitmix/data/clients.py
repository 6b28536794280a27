"""The federation as the engine sees it: per-client tensors already in memory.

Images stay uint8 NCHW (3 channels) until a batch is drawn; the engine converts a batch with
``x.float().div_(255)``. That keeps CIFAR-10 at 150 MB instead of 600 MB and costs one cheap
vectorised op per batch (no per-sample Python in the hot loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Client:
    index: int
    name: str  # e.g. "mnist-3" (domain-major naming, docs/paper.md#data)
    domain: str
    train_x: torch.Tensor  # (n, 3, H, W) uint8
    train_y: torch.Tensor  # (n,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    budget: float  # max width this client can train, e.g. 0.125 .. 1.0
    weight: float  # n_train_k / sum_j n_train_j
    classes: tuple[int, ...] | None = None  # class non-IID: classes this client holds


@dataclass
class Federation:
    dataset: str
    split: str
    domains: tuple[str, ...]
    num_classes: int
    input_shape: tuple[int, int, int]  # (3, H, W)
    clients: list[Client]

    @property
    def budgets(self) -> np.ndarray:
        return np.array([c.budget for c in self.clients], dtype=np.float64)

    @property
    def weights(self) -> np.ndarray:
        return np.array([c.weight for c in self.clients], dtype=np.float64)
