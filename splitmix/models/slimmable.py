"""Nested prefix sub-networks (HeteroFL / SHeteroFL, docs/paper.md#heterofl): width switching and
the map from a width to the block of every state tensor that width uses.

A method uploads ``state[key][block]`` for ``key, block in prefix_blocks(model, r).items()`` and
the server averages each into the same block of its tensor. Keys absent from the map (another
width's private BN) are not used by the width-r network and must not be sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from splitmix.models.layers import WidthSwitchable, check_ratio
from splitmix.models.norm import SwitchableBatchNorm

Block = tuple[slice, ...]


def _full(shape: torch.Size) -> Block:
    return tuple(slice(0, s) for s in shape)


def own_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors ``module`` itself puts in a state_dict: its parameters and persistent buffers,
    not its children's."""
    own = list(module.named_parameters(recurse=False))
    own += [
        (n, b)
        for n, b in module.named_buffers(recurse=False)
        if n not in module._non_persistent_buffers_set
    ]
    return own


def _walk(
    module: nn.Module, prefix: str, dense_prefix: str, ratio: float
) -> Iterator[tuple[str, str, Block]]:
    """Yield (state key, key in the dense model of the same arch, block used at ``ratio``)."""
    if isinstance(module, SwitchableBatchNorm):
        i = module.index(ratio)
        for k, t in module.norms[i].state_dict(keep_vars=True).items():
            yield f"{prefix}norms.{i}.{k}", f"{dense_prefix}{k}", _full(t.shape)
        return
    for name, t in own_tensors(module):
        if isinstance(module, WidthSwitchable):
            block = module.block(name, ratio, t.shape)
        else:
            block = _full(t.shape)
        yield prefix + name, dense_prefix + name, block
    for cname, child in module.named_children():
        yield from _walk(child, f"{prefix}{cname}.", f"{dense_prefix}{cname}.", ratio)


def prefix_blocks(model: nn.Module, ratio: float) -> dict[str, Block]:
    """State key -> the block of that tensor the width-``ratio`` sub-network uses.

    First conv: all input channels; classifier: all output rows; every other weight
    ``[:ceil(r*out), :ceil(r*in)]``; 1-D bias / BN affine ``[:ceil(r*C)]``; a per-width private BN:
    the whole of that width's tensors and none of the other widths'.
    """
    r = check_ratio(ratio)
    return {key: block for key, _, block in _walk(model, "", "", r)}


def prefix_block(model: nn.Module, key: str, ratio: float) -> Block | None:
    """The block of ``key`` used at ``ratio``, or None when that width does not use the tensor."""
    return prefix_blocks(model, ratio).get(key)


def sliced_state(model: nn.Module, ratio: float) -> dict[str, torch.Tensor]:
    """The width-``ratio`` sub-network's tensors (views of the model's state), model keys."""
    state = model.state_dict()
    return {k: state[k][b] for k, b in prefix_blocks(model, ratio).items()}


def dense_state(model: nn.Module, ratio: float) -> dict[str, torch.Tensor]:
    """The width-``ratio`` sub-network as a state_dict of the DENSE model of the same arch.

    Load it into ``build_model(arch, width=ratio, norm=..., rescale_layer=False)`` to evaluate a
    HeteroFL sub-network as a plain model (cheaper, and FLOPs are counted on real shapes). Only
    valid where ``int(r*c) == ceil(r*c)`` for every layer, which holds for the paper's widths.
    """
    r = check_ratio(ratio)
    state = model.state_dict()
    return {dk: state[k][b] for k, dk, b in _walk(model, "", "", r)}


class SlimmableMixin:
    """Methods of a slimmable model; the model must also be an ``nn.Module``."""

    width: float
    widths: tuple[float, ...]

    def set_width(self, ratio: float) -> nn.Module:
        """Run every slimmable layer at ``ratio`` (also checks tracked BN has that width)."""
        r = check_ratio(ratio)
        assert isinstance(self, nn.Module)
        switchable = [m for m in self.modules() if isinstance(m, WidthSwitchable)]
        for m in switchable:  # validate first so that a bad width leaves the model unchanged
            if isinstance(m, SwitchableBatchNorm):
                m.index(r)
        for m in switchable:
            m.set_width(r)
        self.width = r
        return self

    def prefix_blocks(self, ratio: float) -> dict[str, Block]:
        assert isinstance(self, nn.Module)
        return prefix_blocks(self, ratio)

    def prefix_block(self, key: str, ratio: float) -> Block | None:
        assert isinstance(self, nn.Module)
        return prefix_block(self, key, ratio)
