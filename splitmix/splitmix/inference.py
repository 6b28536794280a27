"""Split-Mix's fast evaluation: an ensemble of k bases run as one grouped network.

A Split-Mix model of width r is the logit mean of r/atom independent bases; ``FusedBases`` lays
them side by side as one grouped network, so one pass replaces r/atom (1.6-1.8x for 2-8 bases at
batch 125 on one core, benchmarks/bench_eval.py). ``SplitMix.inference_model`` returns this for
every ensemble of more than one base and falls back to the generic channels-last conversion
otherwise. A model that cannot be fused (a layer type ``FusedBases`` refuses, or bases whose
dual-BN mixing differs) is evaluated as assembled; fusion is an optimisation, never a requirement.
"""

from __future__ import annotations

import torch
from torch import nn

from splitmix.models import DualBatchNorm
from splitmix.models.fast import inference_model as generic_inference_model
from splitmix.splitmix.ensemble import Ensemble
from splitmix.splitmix.fused import FusedBases


class FusedEnsemble(nn.Module):
    """The logit mean of k bases computed by one ``FusedBases`` pass (= ``Ensemble.forward``);
    ``FusedBases`` itself turns its input channels-last."""

    is_inference_model = True

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


def ensemble_inference_model(model: nn.Module) -> nn.Module:
    """A fused copy of an eval-mode ensemble of several bases, else the generic conversion."""
    if model.training or getattr(model, "is_inference_model", False):
        return model
    if isinstance(model, Ensemble) and model.num_active > 1:
        bases = list(model.bases)[: model.num_active]
        if _same_bn_modes(bases):
            try:
                return FusedEnsemble(bases)
            except ValueError:  # a layer FusedBases does not support: run the ensemble as is
                pass
    return generic_inference_model(model)
