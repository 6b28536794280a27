"""Layer kits: one architecture description, built dense or slimmable.

Each architecture is written once against a kit. ``DenseKit`` gives ``int(w*c)`` channels, plain
Conv2d/Linear, the chosen norm and (optionally) a Scaler after every hidden conv/linear;
``SlimKit`` gives full channel counts, slimmable layers (the first conv's input and the classifier's
output fixed) and slimmable norms. Because both builds share the same code, the dense model and the
slimmable model have the same module names, so their state keys line up by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from splitmix.models.base import check_width
from splitmix.models.layers import Scaler, SlimmableConv2d, SlimmableLinear, scaled_channels
from splitmix.models.norm import make_norm, make_slim_norm


@dataclass(frozen=True)
class DenseKit:
    width: float
    norm_kind: str
    rescale_layer: bool

    def __post_init__(self) -> None:
        check_width(self.width)

    def ch(self, c: int) -> int:
        return scaled_channels(c, self.width)

    def conv(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        padding: int = 0,
        *,
        bias: bool = True,
        first: bool = False,
    ) -> nn.Module:
        return nn.Conv2d(cin, cout, k, stride, padding, bias=bias)

    def linear(self, fin: int, fout: int, *, last: bool = False, in_group: int = 1) -> nn.Module:
        return nn.Linear(fin, fout)

    def norm(self, c: int, dims: int) -> nn.Module:
        return make_norm(self.norm_kind, c, dims)

    def scaler(self) -> nn.Module:
        return Scaler(self.width) if self.rescale_layer else nn.Identity()


@dataclass(frozen=True)
class SlimKit:
    norm_kind: str
    widths: tuple[float, ...]

    def ch(self, c: int) -> int:
        return c

    def conv(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        padding: int = 0,
        *,
        bias: bool = True,
        first: bool = False,
    ) -> nn.Module:
        return SlimmableConv2d(cin, cout, k, stride, padding, bias=bias, fixed_in=first)

    def linear(self, fin: int, fout: int, *, last: bool = False, in_group: int = 1) -> nn.Module:
        return SlimmableLinear(fin, fout, fixed_out=last, in_group=in_group)

    def norm(self, c: int, dims: int) -> nn.Module:
        return make_slim_norm(self.norm_kind, c, dims, self.widths)

    def scaler(self) -> nn.Module:
        # Slimmable layers divide by the width themselves (HeteroFL); no separate scaler.
        return nn.Identity()


Kit = DenseKit | SlimKit
