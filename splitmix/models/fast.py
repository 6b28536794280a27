"""Inference-only speed-ups that keep the model's mathematics (evaluation and its PGD attack).

On a CPU the evaluated networks are small (a 1/8-width DigitModel base is ~1.2 M MACs per image),
so per-op overhead and memory layout, not arithmetic, set the time. Two changes, both exact up to
float summation order:

* **channels-last inputs**: oneDNN's convolutions (forward and input-gradient) and max-pooling are
  markedly faster in NHWC; the layout propagates through the network and ``flatten(1)`` restores
  (C, H, W) order, so every value is that of the NCHW computation.
* **method-specific fusion**: a method may return its own faster module through the
  ``Algorithm.inference_model`` hook; Split-Mix lays the r/atom independent bases of a width-r
  model side by side as one grouped network (``splitmix.splitmix.inference``), so one pass
  replaces r/atom.

Forward + input gradient at batch 125 on one core (benchmarks/bench_eval.py): 1.4x for one 1/8
DigitModel base (channels-last), 1.6-1.8x for fused ensembles of 2-8 bases.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ChannelsLast(nn.Module):
    """``model`` fed channels-last images. The conversion is inside the forward, so callers (and
    torchattacks' random start, which fills a tensor in memory order) still see NCHW tensors and
    draw the same random numbers as without it."""

    is_inference_model = True  # marks an already converted module (any method's own kind too)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # a copy: converting in place would change the layout of the algorithm's own tensors
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(inference_layout(x))


def inference_model(model: nn.Module) -> nn.Module:
    """An equivalent, faster module for inference and attacks on eval-mode ``model`` (a model in
    training mode is returned as it is). The result holds a copy of the tensors: rebuild it after
    ``model`` changes, and build it once for as many batches as it serves.
    """
    if model.training or getattr(model, "is_inference_model", False):
        return model  # already converted: converting again would only copy
    return ChannelsLast(model)


def inference_layout(x: torch.Tensor) -> torch.Tensor:
    """Images in channels-last layout (same values); other tensors unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
