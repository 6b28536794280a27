"""Accuracy of one assembled model on one client's test set, clean and (optionally) under PGD.

Batch size is part of the model's semantics where BN uses batch statistics at eval time (the
paper's default ``--no_track_stat``, our ``bn='batch'``, and HeteroFL's sliced BN): the output of
a sample depends on the other samples of its batch, so such models are evaluated in batches of the
run's ``test_batch_size`` (128 in the paper), last batch short, in stored order - exactly the
original test loader, except that a lone last sample joins the batch before it (the original
crashes on a one-sample batch). Split-Mix's base sorting reads validation data in the run's
validation batches (``RunConfig.val_batch``). Models whose every BN uses running statistics
compute each sample on its own, so they are evaluated in large batches (faster, same result).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from splitmix.config import AdvConfig
from splitmix.evaluate.robustness import adversarial_examples
from splitmix.fl.steps import batch_spans
from splitmix.models.fast import inference_model
from splitmix.models.serving import uses_batch_statistics

LARGE_BATCH = 1024


@dataclass
class ClientAccuracy:
    """Counts over one client's test set for one assembled model."""

    n: int = 0
    correct: int = 0
    robust: int | None = None  # None when no attack was run

    @property
    def acc(self) -> float:
        return self.correct / self.n

    @property
    def robust_acc(self) -> float | None:
        return None if self.robust is None else self.robust / self.n


def eval_batch_size(model: nn.Module, test_batch_size: int, large: int = LARGE_BATCH) -> int:
    """``test_batch_size`` for batch-statistics BN (paper semantics), else ``large``."""
    return int(test_batch_size) if uses_batch_statistics(model) else max(int(large), 1)


def _to_unit(x_u8: torch.Tensor) -> torch.Tensor:
    return x_u8.float().div_(255) if x_u8.dtype == torch.uint8 else x_u8.float()


def client_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    attack: AdvConfig | None = None,
) -> ClientAccuracy:
    """Clean accuracy of eval-mode ``model`` on ``(x, y)`` and, with ``attack``, the accuracy on
    PGD examples crafted against the same model, batch by batch (the attack sees the whole batch,
    as the clean pass does). ``x`` is uint8 NCHW (or float in [0, 1]).

    The passes run on ``inference_model(model)`` (channels-last, fused ensembles; see
    ``models.fast``): the same numbers up to float rounding, faster on a CPU."""
    model.eval()
    model = inference_model(model)
    res = ClientAccuracy(robust=0 if attack is not None else None)
    # a lone last sample joins the batch before it (batch-statistics BN cannot normalise one)
    for start, end in batch_spans(int(y.shape[0]), batch_size):
        xb = _to_unit(x[start:end])
        yb = y[start:end]
        with torch.inference_mode():
            res.correct += int((model(xb).argmax(1) == yb).sum())
        res.n += int(yb.shape[0])
        if attack is not None:
            x_adv = adversarial_examples(model, xb, yb, attack)
            with torch.inference_mode():
                res.robust += int((model(x_adv).argmax(1) == yb).sum())
    return res
