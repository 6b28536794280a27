"""Masked weighted averaging: the server-side merge of every method (docs/paper.md#split-mix,
#heterofl, #fedavg, #pitfalls).

Each uploaded tensor covers either a whole server tensor, a block of it (``fl.blocks``: HeteroFL's
top-left prefix block, FedRolex's wrapping window, a random channel subset; a Split-Mix base is a
whole tensor of one base), or any set of its elements named by a bool mask (element-wise sub-
models; the running weight sum of such a key is then kept as a tensor). Every entry of the server
state becomes the weighted mean of the values the clients sent for THAT entry, with the clients'
weights; entries no client covered keep their value. This one rule gives FedAvg (every client
covers every entry), HeteroFL (outer channels are averaged only over the clients wide enough to
hold them), Split-Mix (a base is averaged over the clients that trained it) and element-wise masks
(an element over the clients whose mask kept it).

Integer buffers (BatchNorm's ``num_batches_tracked``) are counters, not estimates: they are copied
from the last client that uploaded them, never averaged (docs/paper.md#pitfalls). Unlike the
original code, a counter nobody uploaded this round keeps its value instead of being reset to 0
(docs/fidelity.md#num-batches-tracked).

Memory: the merge folds one upload at a time into running sums allocated once per key at the
server tensor's shape, so a round costs the server one numerator per touched tensor (at most the
global state) plus the upload being added, however many clients take part. The per-entry weight
sums are not kept as tensors: each key records the (block, weight) of its uploads and replays
them at merge time, one key at a time, which adds the same numbers in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from splitmix.fl import blocks
from splitmix.fl.algorithm import Update
from splitmix.fl.blocks import Block, BlockEntry


def _extent(value: torch.Tensor, block: Block | None, target: torch.Tensor) -> Block:
    """The concrete block ``value`` covers at ``block`` of ``target``: every slice gets its start
    and stop, every index set is checked against the value's length and the target's size.

    Slices are made concrete from the value's own shape: ``slice(a, None)`` covers
    ``value.shape[d]`` entries from ``a``.
    """
    if block is None:
        return tuple(slice(0, s) for s in value.shape)
    if len(block) > value.dim():
        raise ValueError(f"block {block} has more dimensions than the value {tuple(value.shape)}")
    full = tuple(block) + tuple(slice(None) for _ in range(value.dim() - len(block)))
    concrete: list[BlockEntry] = []
    for d, (entry, size) in enumerate(zip(full, value.shape, strict=True)):
        limit = target.shape[d] if d < target.dim() else size
        blocks.check_entry(entry, limit, d)
        if not isinstance(entry, slice):
            if entry.numel() != size:
                raise ValueError(
                    f"block index set on dim {d} has {entry.numel()} entries "
                    f"but the uploaded value has {size}"
                )
            if torch.unique(entry).numel() != size:
                raise ValueError(f"block index set on dim {d} repeats an index")
            concrete.append(entry)
            continue
        start = 0 if entry.start is None else int(entry.start)
        if entry.stop is not None and int(entry.stop) - start != size:
            raise ValueError(
                f"block slice {entry} on dim {d} spans {int(entry.stop) - start} entries "
                f"but the uploaded value has {size}"
            )
        concrete.append(slice(start, start + size))
    return tuple(concrete)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # half-precision sums of many clients lose digits; accumulate in at least float32
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class MaskedAverage:
    """Per-entry weighted mean over the clients that covered each entry; entries nobody covered
    keep their value.

    Usage per round: ``MaskedAverage(server_state)``, ``add``/``add_update`` every client's upload
    as it arrives (the caller may drop it right after), then ``merge()``. One instance per round.
    """

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        # ``state`` holds the server's tensors (e.g. ``module.state_dict()``, whose values share
        # storage with the module, so ``merge`` updates the module too)
        self.state = state
        self._num: dict[str, torch.Tensor] = {}
        # per key, in upload order: (concrete block, weight) of every float upload
        self._cover: dict[str, list[tuple[Block, float]]] = {}
        # integer buffers: (value, block) of the last uploader
        self._last: dict[str, tuple[torch.Tensor, Block | None]] = {}
        # per key with element-mask uploads: the running per-element weight sum
        self._den: dict[str, torch.Tensor] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._num or key in self._last

    def keys(self) -> set[str]:
        return set(self._num) | set(self._last)

    def add(
        self,
        key: str,
        value: torch.Tensor,
        weight: float,
        block: Block | None = None,
        mask: torch.Tensor | None = None,
    ) -> None:
        """Add ``weight * value`` at ``block`` (None = whole tensor) of server tensor ``key``, or
        at the elements of the bool ``mask`` (``value`` then holds ``t[mask]``)."""
        target = self.state.get(key)
        if target is None:
            raise KeyError(f"uploaded key {key!r} is not in the server state")
        value = value.detach()
        if mask is not None:
            self._add_masked(key, target, value, float(weight), mask)
            return
        if value.dim() != target.dim():
            raise ValueError(
                f"upload for {key!r} of shape {tuple(value.shape)} at {block} reaches beyond the "
                f"server tensor {tuple(target.shape)} (another number of dimensions)"
            )
        concrete = _extent(value, block, target)
        if any(
            isinstance(sl, slice) and sl.stop > size
            for sl, size in zip(concrete, target.shape, strict=True)
        ):
            raise ValueError(
                f"upload for {key!r} of shape {tuple(value.shape)} at {block} reaches beyond the "
                f"server tensor {tuple(target.shape)}"
            )
        if not (value.is_floating_point() or value.is_complex()):
            self._last[key] = (value, block)
            return
        w = float(weight)
        if w < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {w} for {key!r}")
        num = self._num.get(key)
        if num is None:  # once per key and round, at the server's shape: never regrown
            num = torch.zeros(target.shape, dtype=_acc_dtype(target.dtype), device=target.device)
            self._num[key] = num
            self._cover[key] = []
        blocks.add_(num, concrete, value.to(num.dtype), alpha=w)
        self._cover[key].append((concrete, w))

    def _add_masked(
        self, key: str, target: torch.Tensor, value: torch.Tensor, w: float, mask: torch.Tensor
    ) -> None:
        if mask.dtype != torch.bool or mask.shape != target.shape:
            raise ValueError(
                f"mask for {key!r} must be a bool tensor of the server shape "
                f"{tuple(target.shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        if not value.is_floating_point():
            raise ValueError(f"an element mask covers float tensors only, {key!r} is {value.dtype}")
        if value.dim() != 1 or value.numel() != int(mask.sum()):
            raise ValueError(
                f"upload for {key!r} holds {value.numel()} values for a mask of "
                f"{int(mask.sum())} elements"
            )
        if w < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {w} for {key!r}")
        mask = mask.to(target.device)
        num = self._num.get(key)
        if num is None:
            num = torch.zeros(target.shape, dtype=_acc_dtype(target.dtype), device=target.device)
            self._num[key] = num
            self._cover[key] = []
        den = self._den.get(key)
        if den is None:
            den = self._den[key] = torch.zeros_like(num)
        num[mask] += w * value.to(num.dtype)
        den.add_(mask.to(den.dtype), alpha=w)

    def add_update(self, update: Update, weight: float) -> None:
        """Add every tensor of ``update`` with the client weight ``weight``."""
        for key, value in update.tensors.items():
            self.add(key, value, weight, update.blocks.get(key), update.masks.get(key))

    def _weight_sum(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """Per-entry sum of the weights of the uploads covering each entry of ``key``."""
        den = self._den.pop(key, None)
        den = torch.zeros_like(like) if den is None else den
        for concrete, w in self._cover.pop(key):
            if blocks.is_contiguous(concrete):
                den[concrete].add_(w)
            else:
                blocks.add_(den, concrete, den.new_full(blocks.shape(den, concrete), w))
        return den

    def merge(self) -> None:
        """In place in the server state: covered entries <- sum(w*v)/sum(w), uncovered entries
        unchanged. Frees each key's sums as soon as it is written."""
        with torch.no_grad():
            for key in list(self._num):
                num = self._num.pop(key)
                target = self.state[key]
                den = self._weight_sum(key, num)
                covered = den > 0
                num.div_(torch.where(covered, den, torch.ones_like(den)))
                del den
                target.copy_(torch.where(covered, num.to(target.dtype), target))
            for key, (value, block) in self._last.items():
                blocks.write_(self.state[key], block, value)
            self._last.clear()
