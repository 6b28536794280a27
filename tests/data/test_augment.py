"""Batch augmentations: each output must be a transformed copy of its own input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from splitmix.data.augment import (
    crop_flip,
    default_augment,
    flip_rotate,
    get_augment,
    no_augment,
    rotate,
)
from splitmix.errors import ConfigError


def _batch(b: int = 16, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g)


def _crops(x: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """All (2p+1)^2 crops x 2 flips of one image: the per-sample reference."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (pad, pad, pad, pad))
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = xp[:, dy : dy + h, dx : dx + w]
            out += [crop, crop.flip(-1)]
    return out


@pytest.mark.parametrize("shape", [(16, 3, 32, 32), (5, 1, 12, 20)])
def test_crop_flip_matches_reference(shape: tuple[int, int, int, int]) -> None:
    x = _batch(*shape)
    y = crop_flip(x, torch.Generator().manual_seed(1), pad=4)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0.0 and y.max() <= 1.0
    for i in range(x.shape[0]):
        assert any(torch.equal(y[i], r) for r in _crops(x[i], 4))
    # it is not the identity for a batch this size (2 * 81 possible outcomes per sample)
    assert not torch.equal(x, y)


def test_crop_flip_uses_all_offsets_and_flips() -> None:
    # Mark each pixel with its own column index: the output's first column reveals the offset.
    b, h, w = 4000, 8, 8
    cols = torch.arange(w, dtype=torch.float32).expand(b, 1, h, w) + 1.0  # 1..8, 0 = padding
    y = crop_flip(cols, torch.Generator().manual_seed(0), pad=2)
    mid = y[:, 0, h // 2]  # a row inside the image vertically for any dy
    ascending = mid[:, 3] < mid[:, 4]  # not flipped
    assert 0.45 < ascending.float().mean() < 0.55  # flip with p = 0.5
    offsets = set()
    for row in mid[ascending][:200]:
        nz = torch.nonzero(row).flatten()
        offsets.add(int(row[nz[0]] - 1 - nz[0]) if len(nz) else None)
    assert offsets == {-2, -1, 0, 1, 2}


def test_crop_flip_identity_without_pad_and_flip() -> None:
    x = _batch()
    assert torch.equal(crop_flip(x, torch.Generator().manual_seed(0), pad=0, flip=False), x)


def test_crop_flip_deterministic_per_generator() -> None:
    x = _batch()
    a = crop_flip(x, torch.Generator().manual_seed(5))
    b = crop_flip(x, torch.Generator().manual_seed(5))
    c = crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rotate_zero_is_identity() -> None:
    x = _batch(h=28, w=20)
    zero = torch.zeros(x.shape[0])
    assert torch.allclose(rotate(x, zero), x)
    assert torch.allclose(rotate(x, zero, mode="bilinear"), x, atol=1e-4)
    y = flip_rotate(x, torch.Generator().manual_seed(0), degrees=0.0, flip=False)
    assert torch.allclose(y, x)


def test_rotate_90_matches_rot90() -> None:
    x = _batch(b=4, h=16, w=16)
    y = rotate(x, torch.full((4,), 90.0))
    # one of the two directions; the transform is symmetric in sign under U(-d, d)
    assert torch.equal(y, torch.rot90(x, 1, (-2, -1))) or torch.equal(
        y, torch.rot90(x, -1, (-2, -1))
    )
    back = rotate(y, torch.full((4,), -90.0))
    assert torch.equal(back, x)


def test_flip_rotate_flip_only_and_ranges() -> None:
    x = _batch(b=64)
    g = torch.Generator().manual_seed(2)
    y = flip_rotate(x, g, degrees=0.0)
    flipped = [torch.allclose(y[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.allclose(y[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54
    z = flip_rotate(x, torch.Generator().manual_seed(3), degrees=30.0)
    assert z.shape == x.shape and z.dtype == x.dtype
    assert z.min() >= 0.0 and z.max() <= 1.0
    # zero fill: rotated corners are empty for large enough angles, the centre is kept
    assert (z[:, :, 0, 0] == 0).float().mean() > 0.5
    assert torch.equal(
        flip_rotate(x, torch.Generator().manual_seed(3)),
        flip_rotate(x, torch.Generator().manual_seed(3)),
    )


def test_flip_rotate_pixels_come_from_input() -> None:
    # nearest interpolation moves pixels, never blends them
    x = _batch(b=8)
    y = flip_rotate(x, torch.Generator().manual_seed(4))
    for i in range(8):
        vals = set(x[i].flatten().tolist()) | {0.0}
        assert set(y[i].flatten().tolist()) <= vals


def test_registry_and_defaults() -> None:
    assert default_augment("digits") == "none"
    assert default_augment("digits-mini") == "none"
    assert default_augment("cifar10") == "crop_flip"
    assert default_augment("cifar10-mini") == "crop_flip"
    assert default_augment("domainnet") == "flip_rotate"
    assert get_augment(None, "cifar10") is crop_flip
    assert get_augment("flip_rotate") is flip_rotate
    x = _batch(b=2)
    assert get_augment("none")(x, torch.Generator()) is x
    assert no_augment(x, torch.Generator()) is x
    with pytest.raises(ConfigError, match="augment='blur'"):
        get_augment("blur")
    with pytest.raises(ConfigError, match="imagenet"):
        default_augment("imagenet")
