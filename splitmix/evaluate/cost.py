"""Model cost of an assembled model: MACs and FLOPs per sample, parameters, state size and bytes.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on the model as assembled for
evaluation (docs/design.md#honest-costs: counted from the code that runs, never from a formula
that can drift). FlopCounterMode counts 2 FLOPs per multiply-add of the matrix ops
(``aten.mm/addmm/bmm/baddbmm``: linear layers) and of ``aten.convolution`` (conv layers); it does
not count bias additions, BN, ReLU, pooling or the ensemble's logit mean, consistent with thop's
defaults the paper used (docs/paper.md#cost). MACs = FLOPs / 2, reported per sample.

Sizes (docs/paper.md#cost, docs/fidelity.md#units): ``params`` = sum of numel of the parameters the
assembled model uses; ``state_numel`` = the same over its state_dict (parameters and buffers: BN
running statistics and ``num_batches_tracked`` when tracked), i.e. the paper's "model size (MB)"
which is a count; and ``model_bytes`` = sum of numel x element size over that state. A slimmable
(HeteroFL) model run at a width counts only the prefix block of every tensor that width uses; a
model whose tensors are element-masked (``parameter_masks``) counts the kept elements
only, while its MACs are the dense count of the computation that runs (the zeros are multiplied).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from splitmix.models import prefix_blocks

COST_BATCH = 2  # >1 so batch-statistics BN (and BatchNorm1d) can run; docs/paper.md#cost uses 2


@dataclass(frozen=True)
class ModelCost:
    macs: float  # per sample
    flops: float  # per sample
    params: int
    state_numel: int
    model_bytes: int


def count_flops(model: nn.Module, input_shape: tuple[int, ...], batch: int = COST_BATCH) -> float:
    """FLOPs per sample of one eval forward of ``model`` (see module docstring for what counts).

    The model is run in eval mode on ``batch`` inputs in [0, 1] from a fixed generator (the count
    does not depend on the values) and put back in the mode it was in.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *input_shape), generator=g).to(device)
    was_training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for m, mode in was_training:
            m.training = mode
    return counter.get_total_flops() / batch


def _dedup(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each storage once (a module may reach the same tensor twice, e.g. a shared scaler)."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out = []
    for t in tensors:
        key = (t.data_ptr(), t.numel(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _used_state(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(parameters, whole state) the model uses as it will run: prefix blocks if slimmable, the
    kept elements of a masked tensor (``parameter_masks``: state key -> bool mask, element-wise
    sub-models), else every tensor."""
    state = model.state_dict(keep_vars=True)
    names = {n for n, _ in model.named_parameters()}
    if getattr(model, "slimmable", False):
        blocks = prefix_blocks(model, float(model.width))
        used = {k: state[k][b] for k, b in blocks.items()}
        return [t for k, t in used.items() if k in names], list(used.values())
    masks = getattr(model, "parameter_masks", None)
    if masks:
        used = {k: (t[masks[k]] if k in masks else t) for k, t in state.items()}
        return [t for k, t in used.items() if k in names], list(used.values())
    return _dedup(list(model.parameters())), _dedup(list(state.values()))


def model_cost(model: nn.Module, input_shape: tuple[int, ...]) -> ModelCost:
    """MACs/FLOPs per sample and sizes of ``model`` as assembled for evaluation."""
    flops = count_flops(model, input_shape)
    params, state = _used_state(model)
    return ModelCost(
        macs=flops / 2.0,
        flops=flops,
        params=sum(t.numel() for t in params),
        state_numel=sum(t.numel() for t in state),
        model_bytes=sum(t.numel() * t.element_size() for t in state),
    )
