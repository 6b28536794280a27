"""Training/validation losses (docs/paper.md#federated-loop, #pitfalls)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from splitmix.fl.algorithm import LossFn


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy after zeroing the logits of classes absent from this batch's targets.

    The original (HeteroFL's ``LocalMaskCrossEntropyLoss``) multiplies those logits by 0 rather
    than setting them to -inf, so absent classes still take softmax mass at logit 0; we keep that
    exactly because it changes the loss value and the gradients of the present classes.
    """
    # a comparison, not an indexed write, so that it also runs under torch.func.vmap
    # (splitmix.fl.batched): the same mask
    classes = torch.arange(logits.shape[-1], device=logits.device)
    present = (target.unsqueeze(-1) == classes).any(0)
    return F.cross_entropy(logits * present, target)


def make_loss(masked: bool) -> LossFn:
    """The loss the engine hands to ``Algorithm.train_step`` and uses for validation loss."""
    return masked_cross_entropy if masked else F.cross_entropy


def use_masked_loss(masked_loss: bool | None, split_kind: str) -> bool:
    """``masked_loss=None`` means: on exactly for class non-IID splits (as the original)."""
    return split_kind == "class" if masked_loss is None else bool(masked_loss)
