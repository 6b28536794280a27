"""FedRolex (Alam et al., NeurIPS 2022) and Federated Dropout (Caldas et al., 2018): HeteroFL's
slimmable model, but the width-b sub-model of a client is a WINDOW of channel indices that need
not be the prefix (docs/methods.md#fedrolex-and-federated-dropout-baselinesfedrolexpy).

In round t every hidden layer with K output channels keeps ``n = ceil(b*K)`` of them:

* ``rolling`` (FedRolex): the first n entries of ``torch.roll(arange(K), t % K)``, i.e. the
  channels ``(j - t) mod K`` for ``j < n`` - a window that slides by one channel a round and wraps,
  so over K rounds every channel is trained equally often by clients of every width;
* ``static`` (HeteroFL's prefix): ``arange(n)`` every round - the comparison point of the paper;
* ``random`` (Federated Dropout): a fresh random n-subset per round and client.

A layer's input indices are the previous layer's output window; a linear layer after a flatten of
(C, H, W) maps channel c to features ``c*H*W .. c*H*W + H*W - 1`` (``in_group``); the first
layer's input and the classifier's output stay whole; a bias and the batch-norm after a layer
follow that layer's output window. Because a rolling (or static) window depends only on
(K, n, t), every layer of K channels of one client gets the same window, which is exactly the
official code's chaining of input to output indices (and keeps residual additions aligned).

Each server entry is averaged over the clients whose window covered it (``MaskedAverage`` with
index blocks). The window of a dimension is written as a sorted index tensor, or as a slice where
it is contiguous, so ``static`` gives HeteroFL's prefix blocks exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from baselines.heterofl import HeteroFL
from splitmix.config import RunConfig
from splitmix.errors import ConfigError
from splitmix.fl.algorithm import FederationInfo, Task, register
from splitmix.fl.blocks import Block, BlockEntry
from splitmix.models.layers import (
    SlimmableConv2d,
    SlimmableLinear,
    WidthSwitchable,
    check_ratio,
    slim_channels,
)
from splitmix.models.norm import SlimmableBatchNorm
from splitmix.models.slimmable import own_tensors

EXTRACTIONS = ("rolling", "static", "random")

#: (channels K, kept n) -> the n channel indices kept, in the window's own order.
WindowFn = Callable[[int, int], torch.Tensor]


# ---- windows of one channel dimension ----------------------------------------------------------
def rolling_window(channels: int, keep: int, round_idx: int) -> torch.Tensor:
    """FedRolex's window in round ``round_idx``: ``torch.roll(arange(K), t % K)[:n]``.

    As in the official ``split_model`` (``roll = rounds % output_size``): round 0 keeps the prefix,
    round t keeps channels ``(j - t) mod K`` for ``j = 0 .. n-1``, so the window starts at
    ``K - t`` and wraps round the end of the layer.
    """
    _check_keep(channels, keep)
    return torch.roll(torch.arange(channels, dtype=torch.int64), round_idx % channels)[:keep]


def static_window(channels: int, keep: int) -> torch.Tensor:
    """HeteroFL's window: the prefix ``arange(n)``, the same every round."""
    _check_keep(channels, keep)
    return torch.arange(keep, dtype=torch.int64)


def random_window(channels: int, keep: int, seed: int) -> torch.Tensor:
    """Federated Dropout's window: n of K channels drawn without replacement.

    Seeded by (``seed``, K) so that one client-round draws one subset per channel count: every
    layer of K channels keeps the same subset (required where a residual adds two such layers).
    """
    _check_keep(channels, keep)
    perm = np.random.default_rng([int(seed), int(channels)]).permutation(channels)
    return torch.from_numpy(perm[:keep].astype(np.int64))


def _check_keep(channels: int, keep: int) -> None:
    if not 0 < keep <= channels:
        raise ValueError(f"a window keeps 1..{channels} of {channels} channels, not {keep}")


def window_fn(extraction: str, round_idx: int, seed: int | None = None) -> WindowFn:
    """The window rule of ``extraction`` for one client-round (``seed``: random only)."""
    if extraction == "rolling":
        return lambda k, n: rolling_window(k, n, round_idx)
    if extraction == "static":
        return static_window
    if extraction == "random":
        if seed is None:
            raise ValueError("random extraction needs the client-round's seed")
        return lambda k, n: random_window(k, n, seed)
    raise ConfigError(f"extraction={extraction!r} is not one of {', '.join(EXTRACTIONS)}")


# ---- from windows to the blocks of every state tensor ------------------------------------------
def as_entry(index: torch.Tensor) -> BlockEntry:
    """The canonical block entry of a set of indices: sorted, and a slice where contiguous.

    The order of channels inside a client's sub-model is a relabelling of hidden units that
    changes neither the function nor the training (every layer sees the same relabelling), so the
    set is all that matters; sorting makes a full window the plain whole dimension and a prefix
    the slice HeteroFL uses.
    """
    idx = torch.sort(index.to(torch.int64)).values
    n = idx.numel()
    if n == 0:
        raise ValueError("a window must keep at least one index")
    lo, hi = int(idx[0]), int(idx[-1])
    if hi - lo + 1 == n:  # distinct and sorted: contiguous exactly when the span is n
        return slice(lo, hi + 1)
    return idx


def expand_group(channels: torch.Tensor, group: int) -> torch.Tensor:
    """Feature indices of ``channels`` in a channel-major flatten with ``group`` features per
    channel (the H*W of a flattened feature map): ``c*group + s`` for ``s < group``."""
    offsets = torch.arange(group, dtype=torch.int64)
    return (channels.to(torch.int64)[:, None] * group + offsets[None, :]).reshape(-1)


def _whole(size: int) -> slice:
    return slice(0, size)


def _layer_block(
    layer: SlimmableConv2d | SlimmableLinear,
    name: str,
    shape: torch.Size,
    ratio: float,
    window: WindowFn,
) -> Block:
    units_in, units_out = layer.units(ratio)
    if layer.fixed_out:  # the classifier keeps every output
        out: BlockEntry = _whole(layer.max_out)
    else:
        out = as_entry(window(layer.max_out, units_out))
    if name != "weight":  # the bias follows the output window
        return (out,)
    if layer.fixed_in:  # the first layer reads every input channel
        inp: BlockEntry = _whole(layer.max_in)
    else:
        group = layer.in_group
        channels = window(layer.max_in // group, units_in // group)
        inp = as_entry(expand_group(channels, group))
    return (out, inp) + tuple(_whole(s) for s in shape[2:])


def window_blocks(model: nn.Module, ratio: float, window: WindowFn) -> dict[str, Block]:
    """State key -> the block of that tensor a width-``ratio`` client trains under ``window``.

    The same keys as ``prefix_blocks(model, ratio)``; with ``static_window`` the same blocks too.
    Only batch-statistics BN (one ``SlimmableBatchNorm`` sliced by channel) is supported: a
    private BN per width (tracked or local statistics) would attach its statistics to window
    positions, which move every round.
    """
    r = check_ratio(ratio)
    blocks: dict[str, Block] = {}
    for mname, module in model.named_modules():
        known = (SlimmableConv2d, SlimmableLinear, SlimmableBatchNorm)
        if isinstance(module, WidthSwitchable) and not isinstance(module, known):
            # e.g. SwitchableBatchNorm: its tensors live in per-width child BNs
            raise ConfigError(
                f"layer {mname or 'model'} ({type(module).__name__}) cannot be windowed: "
                "FedRolex / Federated Dropout need bn: batch (one BN sliced by channel)"
            )
        prefix = f"{mname}." if mname else ""
        for name, tensor in own_tensors(module):
            if isinstance(module, SlimmableConv2d | SlimmableLinear):
                block = _layer_block(module, name, tensor.shape, r, window)
            elif isinstance(module, SlimmableBatchNorm):
                c = module.num_features
                block = (as_entry(window(c, slim_channels(c, r))),)
            else:
                block = tuple(_whole(s) for s in tensor.shape)
            blocks[prefix + name] = block
    return blocks


# ---- the method ----------------------------------------------------------------------------------
@register
class FedRolex(HeteroFL):
    """HeteroFL with a moving (``rolling``), fixed (``static``) or random (``random``) window of
    channels per client-round instead of the prefix (see module docstring)."""

    name = "fedrolex"
    params: ClassVar[dict[str, Any]] = {"extraction": "rolling"}
    param_rules: ClassVar[dict[str, dict[str, Any]]] = {
        "extraction": {
            "description": "rolling (FedRolex), static (HeteroFL's prefix) or random "
            "(Federated Dropout)",
            "enum": list(EXTRACTIONS),
        }
    }
    default_extraction: ClassVar[str] = "rolling"

    def __init__(self, cfg: RunConfig, info: FederationInfo) -> None:
        super().__init__(cfg, info)
        if cfg.bn != "batch":
            raise ConfigError(
                f"method {cfg.method!r} ({self.name}) needs bn: batch, got bn: {cfg.bn}; a "
                "private BN per width would tie its statistics to window positions that move "
                "every round (the official code trains with track_running_stats=False)"
            )
        extraction = self.p.get("extraction", self.default_extraction)
        if extraction not in EXTRACTIONS:
            raise ConfigError(
                f"method {cfg.method!r}: extraction={extraction!r} is not one of "
                f"{', '.join(EXTRACTIONS)}"
            )
        self.extraction: str = str(extraction)
        self._windows: dict[tuple[float, int, int | None], dict[str, Block]] = {}

    def plan(self, round_idx: int, clients: list[int], rng: np.random.Generator) -> list[Task]:
        """Each client trains its budget width; a random window's seed is drawn here, from the
        round's stream, so that the draw is part of the plan and a resumed run repeats it."""
        self._windows.clear()  # one round's windows at a time
        tasks = []
        for k in clients:
            payload: dict[str, Any] = {}
            if self.extraction == "random":
                payload["seed"] = int(rng.integers(0, 2**63 - 1))
            tasks.append(
                Task(client=int(k), widths=self.client_widths[k], round=round_idx, payload=payload)
            )
        return tasks

    def exchange_blocks(self, task: Task) -> dict[str, Block]:
        width = task.widths[0]
        seed = task.payload.get("seed")
        key = (width, task.round if self.extraction == "rolling" else 0, seed)
        blocks = self._windows.get(key)
        if blocks is None:
            window = window_fn(self.extraction, task.round, seed)
            blocks = self._windows[key] = window_blocks(self.server, width, window)
        return blocks

    def running_model(self, task: Task) -> nn.Module:
        """The dense model of the client's width: it holds exactly the window's blocks. Unlike
        HeteroFL there is no slimmable fall-back: a slimmable layer computes with the prefix."""
        (width,) = task.widths
        stand_in = self.dense_for(width)
        if stand_in is None:
            raise ConfigError(
                f"method {self.cfg.method!r} ({self.name}): width {width:g} has no dense "
                "sub-model of the window's shape (int(w*c) differs from ceil(w*c) in some layer); "
                "use budgets whose widths divide the channel counts, e.g. 8-4-2-1"
            )
        return stand_in.model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "extraction": self.extraction}


@register
class FederatedDropout(FedRolex):
    """Federated Dropout: a fresh random channel subset per client and round."""

    name = "feddropout"
    params: ClassVar[dict[str, Any]] = {}
    param_rules: ClassVar[dict[str, dict[str, Any]]] = {}
    default_extraction = "random"
