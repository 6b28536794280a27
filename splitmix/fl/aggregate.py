"""Masked weighted averaging: the server-side merge of every method (docs/paper.md#split-mix,
#heterofl, #fedavg, #pitfalls).

Each uploaded tensor covers either a whole server tensor or a block of it (HeteroFL's top-left
prefix block; a Split-Mix base is a whole tensor of one base). Every entry of the server state
becomes the weighted mean of the values the clients sent for THAT entry, with the clients' weights;
entries no client covered keep their value. This one rule gives FedAvg (every client covers every
entry), HeteroFL (outer channels are averaged only over the clients wide enough to hold them) and
Split-Mix (a base is averaged over the clients that trained it).

Integer buffers (BatchNorm's ``num_batches_tracked``) are counters, not estimates: they are copied
from the last client that uploaded them, never averaged (docs/paper.md#pitfalls). Unlike the
original code, a counter nobody uploaded this round keeps its value instead of being reset to 0
(docs/fidelity.md#num-batches-tracked).
"""

from __future__ import annotations

import torch

from splitmix.fl.algorithm import Update

Block = tuple[slice, ...]


def _extent(value: torch.Tensor, block: Block | None) -> tuple[tuple[int, ...], Block]:
    """The buffer extent needed to hold ``value`` placed at ``block`` and the concrete block.

    Slices are made concrete from the value's own shape (``slice(a, None)`` covers
    ``value.shape[d]`` entries from ``a``), so the full server shape need not be known until merge.
    """
    if block is None:
        return tuple(value.shape), tuple(slice(0, s) for s in value.shape)
    if len(block) > value.dim():
        raise ValueError(f"block {block} has more dimensions than the value {tuple(value.shape)}")
    full = tuple(block) + tuple(slice(None) for _ in range(value.dim() - len(block)))
    concrete = []
    for d, (sl, size) in enumerate(zip(full, value.shape, strict=True)):
        if sl.step not in (None, 1):
            raise ValueError(f"block slice {sl} on dim {d} has a step; only contiguous blocks")
        start = 0 if sl.start is None else int(sl.start)
        if sl.stop is not None and int(sl.stop) - start != size:
            raise ValueError(
                f"block slice {sl} on dim {d} spans {int(sl.stop) - start} entries "
                f"but the uploaded value has {size}"
            )
        concrete.append(slice(start, start + size))
    return tuple(s.stop for s in concrete), tuple(concrete)


class _Acc:
    """Numerator and per-entry weight sum of one key, grown to the largest extent seen."""

    __slots__ = ("num", "den")

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.num = torch.zeros(shape, dtype=dtype, device=device)
        self.den = torch.zeros(shape, dtype=dtype, device=device)

    def grow(self, shape: tuple[int, ...]) -> None:
        if all(a >= b for a, b in zip(self.num.shape, shape, strict=True)):
            return
        new = tuple(max(a, b) for a, b in zip(self.num.shape, shape, strict=True))
        old = tuple(slice(0, s) for s in self.num.shape)
        for name in ("num", "den"):
            t = getattr(self, name)
            bigger = torch.zeros(new, dtype=t.dtype, device=t.device)
            bigger[old] = t
            setattr(self, name, bigger)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # half-precision sums of many clients lose digits; accumulate in at least float32
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class MaskedAverage:
    """Per-entry weighted mean over the clients that covered each entry; entries nobody covered
    keep their value.

    Usage per round: ``add``/``add_update`` every client's upload, then
    ``merge_into(server_state)``. An instance accumulates until discarded (one per round).
    """

    def __init__(self) -> None:
        self._acc: dict[str, _Acc] = {}
        # integer buffers: (value, block) of the last uploader
        self._last: dict[str, tuple[torch.Tensor, Block | None]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._acc or key in self._last

    def keys(self) -> set[str]:
        return set(self._acc) | set(self._last)

    def add(self, key: str, value: torch.Tensor, weight: float, block: Block | None = None) -> None:
        """Add ``weight * value`` at ``block`` (None = whole tensor) of server tensor ``key``."""
        value = value.detach()
        if not (value.is_floating_point() or value.is_complex()):
            self._last[key] = (value, block)
            return
        w = float(weight)
        if w < 0:
            raise ValueError(f"aggregation weight must be >= 0, got {w} for {key!r}")
        extent, concrete = _extent(value, block)
        acc = self._acc.get(key)
        if acc is None:
            acc = self._acc[key] = _Acc(extent, _acc_dtype(value.dtype), value.device)
        else:
            acc.grow(extent)
        acc.num[concrete].add_(value.to(acc.num.dtype), alpha=w)
        acc.den[concrete].add_(w)

    def add_update(self, update: Update, weight: float) -> None:
        """Add every tensor of ``update`` with the client weight ``weight``."""
        for key, value in update.tensors.items():
            self.add(key, value, weight, update.blocks.get(key))

    def merge_into(self, state: dict[str, torch.Tensor]) -> None:
        """In place: covered entries <- sum(w*v)/sum(w); uncovered entries unchanged.

        ``state`` holds the server's tensors (e.g. ``module.state_dict()``, whose values share
        storage with the module, so the module is updated too).
        """
        for key in self.keys():
            if key not in state:
                raise KeyError(f"uploaded key {key!r} is not in the server state")
        with torch.no_grad():
            for key, acc in self._acc.items():
                target = state[key]
                if any(a > b for a, b in zip(acc.num.shape, target.shape, strict=True)):
                    raise ValueError(
                        f"uploads for {key!r} reach {tuple(acc.num.shape)}, beyond the server "
                        f"tensor {tuple(target.shape)}"
                    )
                region = target[tuple(slice(0, s) for s in acc.num.shape)]
                covered = acc.den > 0
                mean = acc.num / torch.where(covered, acc.den, torch.ones_like(acc.den))
                region.copy_(torch.where(covered, mean.to(region.dtype), region))
            for key, (value, block) in self._last.items():
                target = state[key]
                if block is None:
                    target.copy_(value)
                else:
                    target[block].copy_(value)
