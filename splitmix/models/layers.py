"""Building blocks shared by every architecture: the train-time Scaler, width arithmetic,
Split-Mix's rescaled initialisation, and the slimmable (prefix-sliced) Conv2d / Linear.

Width arithmetic (docs/paper.md#digitmodel, #heterofl): a dense model of width ``w`` has
``int(w * c)`` channels where the full model has ``c``; a slimmable layer at ratio ``r`` uses the
first ``ceil(r * C)`` channels. Both add or subtract a tiny epsilon before rounding so that float
noise such as ``0.29 * 100 = 28.999999999999996`` cannot drop a channel; for the paper's widths
(1/8 .. 1) and channel counts the results are exactly those of plain ``int`` / ``ceil``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from splitmix.errors import ConfigError

_EPS = 1e-9


def scaled_channels(c: int, width: float) -> int:
    """Hidden channels of a dense model of width ``width``: ``int(width * c)``
    (docs/paper.md#digitmodel)."""
    n = int(width * c + _EPS)
    if n < 1:
        raise ConfigError(
            f"width {width} leaves 0 of {c} channels; use a width of at least {1.0 / c:g}"
        )
    return n


def slim_channels(c: int, ratio: float) -> int:
    """Channels of a slimmable layer at ratio ``ratio``: ``ceil(ratio * c)``
    (docs/paper.md#heterofl)."""
    return max(1, math.ceil(ratio * c - _EPS))


def check_ratio(ratio: float) -> float:
    """A sub-network width must lie in (0, 1]; anything else is a user error."""
    r = float(ratio)
    if not 0.0 < r <= 1.0 + _EPS:
        raise ConfigError(
            f"width ratio {ratio!r} is outside (0, 1]; use e.g. 0.125, 0.25, 0.5 or 1"
        )
    return min(r, 1.0)


# ---- Split-Mix base-net rescaling (docs/paper.md#rescaling) -------------------------------------
class Scaler(nn.Module):
    """Divide by the width in training mode only (HeteroFL's static scaler).

    A narrow net's pre-activations are ~``width`` times smaller than a slice of the full net would
    see from a full input; dividing during training keeps the scale of a slice so that bases trained
    at width 1/8 behave like parts of a width-1 model. At eval the division is dropped, as in the
    original code. ``active`` lets evaluation code switch it off (test-time BN refresh).
    """

    def __init__(self, width: float) -> None:
        super().__init__()
        self.width = float(width)
        self.active = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.width if (self.training and self.active) else x

    def extra_repr(self) -> str:
        return f"width={self.width}"


def set_scalers(model: nn.Module, active: bool) -> int:
    """Switch every ``Scaler`` of ``model`` on or off; returns how many were found."""
    n = 0
    for m in model.modules():
        if isinstance(m, Scaler):
            m.active = active
            n += 1
    return n


def rescale_init_bound(module: nn.Module, width: float) -> float:
    """Weight bound of ``rescale_init_``: gain*sqrt(3)/sqrt(fan_in/w), gain = sqrt(2/(1+5))."""
    fan_in = module.weight[0].numel() / width
    return math.sqrt(2.0 / (1.0 + 5.0)) * math.sqrt(3.0) / math.sqrt(fan_in)


def rescale_init_(module: nn.Module, width: float) -> None:
    """Re-initialise one Conv/Linear as a slice of the full-width layer would be initialised.

    torch's default is kaiming-uniform with a=sqrt(5) over the layer's own fan_in; a base of width
    ``w`` has a fan_in ``w`` times that of the full layer, so its default init would be 1/sqrt(w)
    too large. Using fan_in/w gives bound_w = gain*sqrt(3)/sqrt(fan_in/w) with gain = sqrt(2/(1+5)),
    and bias ~ U(+-1/sqrt(fan_in/w)) (docs/paper.md#rescaling).
    """
    bound = rescale_init_bound(module, width)
    with torch.no_grad():
        module.weight.uniform_(-bound, bound)
        bias = getattr(module, "bias", None)
        if bias is not None:
            b = 1.0 / math.sqrt(module.weight[0].numel() / width)
            bias.uniform_(-b, b)


def apply_rescale_init(model: nn.Module, width: float, skip: tuple[nn.Module, ...] = ()) -> None:
    """``rescale_init_`` every Conv/Linear of ``model`` except those in ``skip`` (input layer)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear) and not any(m is s for s in skip):
            rescale_init_(m, width)


# ---- slimmable layers (HeteroFL / SHeteroFL, docs/paper.md#heterofl) ----------------------------
class WidthSwitchable(nn.Module):
    """A layer that runs at a width ratio chosen with ``set_width``; shared plumbing."""

    width: float

    def set_width(self, ratio: float) -> None:
        self.width = check_ratio(ratio)

    def block(self, name: str, ratio: float, shape: torch.Size) -> tuple[slice, ...] | None:
        """The block of own tensor ``name`` (full shape ``shape``) the width-``ratio`` net uses."""
        raise NotImplementedError


class _SlimmableWeightLayer(WidthSwitchable):
    """Common slicing logic of SlimmableConv2d and SlimmableLinear.

    The width-r sub-layer uses ``weight[:ceil(r*out), :ceil(r*in)]`` (a view, no copy) and divides
    its output by r in training mode (HeteroFL's Scaler folded into the layer), except that a layer
    with a fixed output (the classifier) is neither sliced on its output nor divided.
    """

    def __init__(
        self, in_units: int, out_units: int, fixed_in: bool, fixed_out: bool, in_group: int
    ) -> None:
        super().__init__()
        if in_units % in_group:
            raise ValueError(f"in_units {in_units} is not a multiple of in_group {in_group}")
        self.max_in, self.max_out = in_units, out_units
        self.fixed_in, self.fixed_out = fixed_in, fixed_out
        # A flattened (C, H, W) input is sliced per channel: ceil(r*C)*H*W, not ceil(r*C*H*W).
        self.in_group = in_group
        self.width = 1.0

    def units(self, ratio: float) -> tuple[int, int]:
        """(in, out) units used at ``ratio``."""
        i = self.max_in
        if not self.fixed_in:
            i = slim_channels(self.max_in // self.in_group, ratio) * self.in_group
        o = self.max_out if self.fixed_out else slim_channels(self.max_out, ratio)
        return i, o

    def block(self, name: str, ratio: float, shape: torch.Size) -> tuple[slice, ...]:
        i, o = self.units(ratio)
        if name == "weight":
            return (slice(0, o), slice(0, i)) + tuple(slice(0, s) for s in shape[2:])
        return (slice(0, o),)

    def _rescale(self, y: torch.Tensor) -> torch.Tensor:
        if self.training and not self.fixed_out and self.width != 1.0:
            return y / self.width
        return y


class SlimmableConv2d(_SlimmableWeightLayer):
    """Conv2d whose width-r sub-layer is the top-left block of its weight (see base class)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        *,
        fixed_in: bool = False,
        fixed_out: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, fixed_in, fixed_out, 1)
        # Borrow nn.Conv2d's parameter shapes and default init so that a slimmable model at width 1
        # is initialised exactly like the dense one.
        ref = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.weight = ref.weight
        self.bias = ref.bias
        self.stride, self.padding = ref.stride, ref.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i, o = self.units(self.width)
        b = self.bias[:o] if self.bias is not None else None
        y = F.conv2d(x, self.weight[:o, :i], b, self.stride, self.padding)
        return self._rescale(y)

    def extra_repr(self) -> str:
        return (
            f"{self.max_in}, {self.max_out}, kernel_size={tuple(self.weight.shape[2:])}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
            f"fixed_in={self.fixed_in}, fixed_out={self.fixed_out}, width={self.width}"
        )


class SlimmableLinear(_SlimmableWeightLayer):
    """Linear whose width-r sub-layer is the top-left block of its weight (see base class)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        fixed_in: bool = False,
        fixed_out: bool = False,
        in_group: int = 1,
    ) -> None:
        super().__init__(in_features, out_features, fixed_in, fixed_out, in_group)
        ref = nn.Linear(in_features, out_features, bias=bias)
        self.weight = ref.weight
        self.bias = ref.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i, o = self.units(self.width)
        b = self.bias[:o] if self.bias is not None else None
        return self._rescale(F.linear(x, self.weight[:o, :i], b))

    def extra_repr(self) -> str:
        return (
            f"{self.max_in}, {self.max_out}, bias={self.bias is not None}, "
            f"fixed_in={self.fixed_in}, fixed_out={self.fixed_out}, in_group={self.in_group}, "
            f"width={self.width}"
        )
