"""Inference-only speed-ups that keep the model's mathematics (evaluation and its PGD attack).

On a CPU the evaluated networks are small (a 1/8-width DigitModel base is ~1.2 M MACs per image),
so per-op overhead and memory layout, not arithmetic, set the time. Two changes, both exact up to
float summation order:

* **channels-last inputs**: oneDNN's convolutions (forward and input-gradient) and max-pooling are
  markedly faster in NHWC; the layout propagates through the network and ``flatten(1)`` restores
  (C, H, W) order, so every value is that of the NCHW computation.
* **fused ensembles**: a Split-Mix model of width r is the logit mean of r/atom independent bases;
  ``FusedBases`` lays them side by side as one grouped network, so one pass replaces r/atom.

Forward + input gradient at batch 125 on one core (benchmarks/bench_eval.py): 1.4x for one 1/8
DigitModel base (channels-last), 1.6-1.8x for fused ensembles of 2-8 bases.

A model that cannot be fused (a layer type ``FusedBases`` refuses, or bases whose dual-BN mixing
differs) is evaluated as assembled; fusion is an optimisation, never a requirement.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from splitmix.fl.fused import FusedBases
from splitmix.models import DualBatchNorm
from splitmix.models.ensemble import Ensemble


class ChannelsLast(nn.Module):
    """``model`` fed channels-last images. The conversion is inside the forward, so callers (and
    torchattacks' random start, which fills a tensor in memory order) still see NCHW tensors and
    draw the same random numbers as without it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # a copy: converting in place would change the layout of the algorithm's own tensors
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(inference_layout(x))


class FusedEnsemble(nn.Module):
    """The logit mean of k bases computed by one ``FusedBases`` pass (= ``Ensemble.forward``);
    ``FusedBases`` itself turns its input channels-last."""

    def __init__(self, bases: list[nn.Module]) -> None:
        super().__init__()
        # channels-last weights too: with NCHW weights oneDNN hands back gradients in NCHW and
        # the element-wise backward ops then run on mixed layouts, ~20% slower
        self.fused = FusedBases(bases).to(memory_format=torch.channels_last)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x).mean(1)


def _same_bn_modes(bases: list[nn.Module]) -> bool:
    """True if every dual-BN layer is mixed alike in all bases (the fused copy keeps base 0's)."""
    return not any(
        isinstance(mod, DualBatchNorm)
        and any(b.get_submodule(name).mode != mod.mode for b in bases[1:])
        for name, mod in bases[0].named_modules()
    )


def inference_model(model: nn.Module) -> nn.Module:
    """An equivalent, faster module for inference and attacks on eval-mode ``model`` (a model in
    training mode is returned as it is). The result holds a copy of the tensors: rebuild it after
    ``model`` changes, and build it once for as many batches as it serves.
    """
    if model.training or isinstance(model, ChannelsLast | FusedEnsemble):
        return model  # already converted: converting again would only copy
    if isinstance(model, Ensemble) and model.num_active > 1:
        bases = list(model.bases)[: model.num_active]
        if _same_bn_modes(bases):
            try:
                return FusedEnsemble(bases)
            except ValueError:  # a layer FusedBases does not support: run the ensemble as is
                pass
    return ChannelsLast(model)


def inference_layout(x: torch.Tensor) -> torch.Tensor:
    """Images in channels-last layout (same values); other tensors unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
