"""Batch normalisation for serving: which layers normalise with the statistics of the batch they
are given, and how to turn them into layers with fixed statistics (docs/deploy.md#batch-norm).

The paper's size-customisation runs use batch-statistics BN (``bn: batch``, the original's
``--no_track_stat``): in evaluation every BN layer normalises with the mean and variance of the
test batch itself. Such a model is only meaningful on batches of many images. On ONE image a
``BatchNorm1d`` layer sees a variance of 0 and outputs its bias whatever the input, so every image
gets the same logits (a ``BatchNorm2d`` layer normalises over the image's own pixels instead).

``freeze_batch_norm`` gives such a model fixed statistics, so that it can serve one image at a
time: each batch-statistics BN becomes a BN with running statistics, estimated over calibration
batches as a cumulative average in an otherwise eval-mode network. The train-time ``Scaler`` then
stays off, which is what the original's test-time BN refresh had to switch off by hand. Without
calibration batches the statistics stay at their initial 0 and 1: a model for timing only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from splitmix.errors import ConfigError
from splitmix.models.norm import MOMENTUM, SlimmableBatchNorm


def batch_stat_norms(model: nn.Module) -> list[nn.Module]:
    """The layers of ``model`` that normalise with the batch's own statistics in eval mode."""
    return [
        m
        for m in model.modules()
        if isinstance(m, SlimmableBatchNorm)
        or (isinstance(m, _BatchNorm) and (not m.track_running_stats or m.running_mean is None))
    ]


def uses_batch_statistics(model: nn.Module) -> bool:
    """True if some normalisation layer normalises with the batch's statistics in eval mode:
    the model's output for one sample then depends on the rest of its batch."""
    return bool(batch_stat_norms(model))


def _track(bn: _BatchNorm) -> None:
    """Give a batch-statistics BN running statistics (mean 0, variance 1, no batches yet)."""
    c = bn.num_features
    device = bn.weight.device if bn.weight is not None else None
    bn.track_running_stats = True
    bn.register_buffer("running_mean", torch.zeros(c, device=device))
    bn.register_buffer("running_var", torch.ones(c, device=device))
    bn.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))


@torch.no_grad()
def freeze_batch_norm(
    model: nn.Module, batches: Iterable[torch.Tensor] | None = None
) -> tuple[nn.Module, int]:
    """In place: every batch-statistics BN of eval-mode ``model`` gets running statistics,
    estimated over ``batches`` (a cumulative average of the batches' statistics, the rest of the
    network in eval mode); returns ``(model, images seen)``. Without ``batches`` the statistics
    are 0 and 1: the model then times like the frozen one but does not predict like it."""
    norms = batch_stat_norms(model)
    sliced = [m for m in norms if isinstance(m, SlimmableBatchNorm)]
    if sliced:
        raise ConfigError(
            "this model's width runs through a slimmable BN whose statistics cannot be frozen; "
            "deploy a width with a dense stand-in (the budget widths) or keep --bn batch"
        )
    for bn in norms:
        _track(bn)
        bn.momentum = None  # cumulative average over the calibration batches
    seen = 0
    if batches is not None and norms:
        model.eval()
        for bn in norms:
            bn.train()  # batch statistics in, running statistics updated; nothing else trains
        try:
            for x in batches:
                model(x)
                seen += int(x.shape[0])
        finally:
            model.eval()
        if not seen:
            raise ConfigError("no calibration images to estimate BN statistics from")
    for bn in norms:
        # the estimate is done; a fixed momentum keeps the layer fusable (a cumulative average
        # weights by each base's own count) and has no effect in eval mode
        bn.momentum = MOMENTUM
    return model.eval(), seen
