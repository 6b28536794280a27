"""Blocks: which part of a server tensor a client exchanges.

A block is a tuple with one entry per leading dimension of a tensor (trailing dimensions are
whole). Each entry is either

* a ``slice`` - a contiguous range, e.g. HeteroFL's prefix ``[:ceil(r*C)]``; or
* a 1-D integer tensor of distinct indices in any order - a set that need not be contiguous, e.g.
  FedRolex's window that wraps around the channels, or Federated Dropout's random subset.

The sub-tensor a block names is the outer product of its per-dimension index sets (numpy's
``ix_``): ``read(t, (rows, cols))`` has shape ``(len(rows), len(cols))`` and holds
``t[rows[i], cols[j]]``. ``None`` means the whole tensor. Slices keep the fast view path; index
entries go through advanced indexing, which copies.

A block with tensor entries must keep its own index order between ``read`` and ``write_``: a
client's sub-model holds the elements in the block's order, and writes them back in that order.
"""

from __future__ import annotations

import torch

BlockEntry = slice | torch.Tensor
Block = tuple[BlockEntry, ...]


def _is_index(entry: BlockEntry) -> bool:
    return isinstance(entry, torch.Tensor)


def is_contiguous(block: Block | None) -> bool:
    """True when every entry is a slice (the block is a plain view)."""
    return block is None or not any(_is_index(e) for e in block)


def check_entry(entry: BlockEntry, size: int, dim: int) -> None:
    """Refuse an entry that is not a unit-step slice or a 1-D integer index set within ``size``."""
    if isinstance(entry, slice):
        if entry.step not in (None, 1):
            raise ValueError(f"block slice {entry} on dim {dim} has a step; use an index tensor")
        return
    if not _is_index(entry) or entry.dim() != 1 or entry.is_floating_point():
        raise ValueError(f"block entry on dim {dim} must be a slice or a 1-D integer tensor")
    if entry.numel() and (int(entry.min()) < 0 or int(entry.max()) >= size):
        raise ValueError(f"block indices on dim {dim} fall outside [0, {size})")


def _mesh(block: Block, device: torch.device) -> tuple[BlockEntry, ...]:
    """Indexing tuple for a block with index entries: every entry becomes an index tensor shaped
    to broadcast along its own dimension (``ix_``), slices become ``arange`` of their range."""
    n = len(block)
    out: list[torch.Tensor] = []
    for d, entry in enumerate(block):
        idx = entry if _is_index(entry) else None
        if idx is None:
            assert isinstance(entry, slice)
            idx = torch.arange(entry.start or 0, entry.stop)
        shape = [1] * n
        shape[d] = -1
        out.append(idx.to(device=device, dtype=torch.long).reshape(shape))
    return tuple(out)


def _concrete(t: torch.Tensor, block: Block) -> Block:
    """The block with open slice ends resolved against ``t``'s shape (index meshes need stops)."""
    out: list[BlockEntry] = []
    for d, entry in enumerate(block):
        if isinstance(entry, slice):
            start, stop, _ = entry.indices(t.shape[d])
            out.append(slice(start, stop))
        else:
            out.append(entry)
    return tuple(out)


def read(t: torch.Tensor, block: Block | None) -> torch.Tensor:
    """``t``'s sub-tensor at ``block`` (a view for slice-only blocks, a copy otherwise)."""
    if is_contiguous(block):
        return t if block is None else t[block]
    return t[_mesh(_concrete(t, block), t.device)]


def write_(t: torch.Tensor, block: Block | None, value: torch.Tensor) -> None:
    """Write ``value`` (shaped like ``read(t, block)``) into ``t`` at ``block``, in place."""
    if block is None:
        t.copy_(value)
    elif is_contiguous(block):
        t[block].copy_(value)
    else:
        t[_mesh(_concrete(t, block), t.device)] = value.to(t.dtype)


def add_(t: torch.Tensor, block: Block | None, value: torch.Tensor, alpha: float = 1.0) -> None:
    """``t[block] += alpha * value`` in place (indices of a block are distinct, so no element is
    hit twice)."""
    if block is None:
        t.add_(value, alpha=alpha)
    elif is_contiguous(block):
        t[block].add_(value, alpha=alpha)
    else:
        t.index_put_(_mesh(_concrete(t, block), t.device), value * alpha, accumulate=True)


def shape(t: torch.Tensor | torch.Size, block: Block | None) -> torch.Size:
    """Shape of ``read(t, block)`` without reading it."""
    full = t if isinstance(t, torch.Size) else t.shape
    if block is None:
        return torch.Size(full)
    dims = []
    for d, size in enumerate(full):
        if d >= len(block):
            dims.append(size)
            continue
        entry = block[d]
        if isinstance(entry, slice):
            start, stop, _ = entry.indices(size)
            dims.append(max(0, stop - start))
        else:
            dims.append(int(entry.numel()))
    return torch.Size(dims)
