"""Pre-activation ResNet-18 of HeteroFL / Split-Mix (docs/paper.md#preresnet-18), CIFAR input
3x32x32.

Hidden sizes [64, 128, 256, 512]*w; stem conv 3->64w k3 s1 p1 without bias, followed by the scaler;
4 stages x 2 blocks with strides 1, 2, 2, 2; final ReLU(BN) -> global average pool -> linear. In a
block: out = ReLU(BN1(x)); shortcut = scaler(conv1x1(out)) when the shape changes, else x;
out = scaler(conv3x3(out)); out = scaler(conv3x3(ReLU(BN2(out)))); out + shortcut.
Init (HeteroFL ``init_param``): every BN weight 1 and bias 0, the linear bias 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from splitmix.models.base import DEFAULT_WIDTHS, record_dense, record_slim
from splitmix.models.kit import DenseKit, Kit, SlimKit
from splitmix.models.layers import SlimmableLinear, apply_rescale_init
from splitmix.models.norm import SlimmableBatchNorm
from splitmix.models.slimmable import SlimmableMixin

HIDDEN = (64, 128, 256, 512)
BLOCKS = (2, 2, 2, 2)
STRIDES = (1, 2, 2, 2)
DEFAULT_INPUT_SIZE = 32


class Block(nn.Module):
    """Pre-activation basic block; scaler placement as docs/paper.md#preresnet-18."""

    def __init__(self, kit: Kit, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = kit.norm(cin, 2)
        self.conv1 = kit.conv(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = kit.norm(cout, 2)
        self.conv2 = kit.conv(cout, cout, 3, 1, 1, bias=False)
        self.scaler = kit.scaler()
        self.shortcut = (
            kit.conv(cin, cout, 1, stride, 0, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.scaler(self.shortcut(out)) if self.shortcut is not None else x
        out = self.scaler(self.conv1(out))
        out = self.scaler(self.conv2(F.relu(self.bn2(out))))
        return out + shortcut


class _PreResNet(nn.Module):
    def __init__(self, kit: Kit, num_classes: int) -> None:
        super().__init__()
        hidden = [kit.ch(h) for h in HIDDEN]
        self.conv1 = kit.conv(3, hidden[0], 3, 1, 1, bias=False, first=True)
        self.scaler = kit.scaler()
        cin = hidden[0]
        for i, (h, n, stride) in enumerate(zip(hidden, BLOCKS, STRIDES, strict=True), start=1):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(Block(kit, cin, h, s))
                cin = h
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.bn4 = kit.norm(cin, 2)
        self.linear = kit.linear(cin, num_classes, last=True)
        _init_param(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scaler(self.conv1(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn4(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _init_param(model: nn.Module) -> None:
    """HeteroFL's ResNet init: BN weight 1, bias 0; linear bias 0 (conv weights keep torch's)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm | SlimmableBatchNorm) and m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear | SlimmableLinear) and m.bias is not None:
                m.bias.zero_()


class PreResNet18(_PreResNet):
    """Dense pre-activation ResNet-18 of width multiplier ``width``."""

    arch = "preresnet18"

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 10,
        norm: str = "batch",
        rescale_init: bool = False,
        rescale_layer: bool = False,
        input_size: int | None = None,
    ) -> None:
        super().__init__(DenseKit(width, norm, rescale_layer), num_classes)
        size = DEFAULT_INPUT_SIZE if input_size is None else int(input_size)
        record_dense(
            self,
            width=width,
            num_classes=num_classes,
            norm=norm,
            rescale_init=rescale_init,
            rescale_layer=rescale_layer,
            input_shape=(3, size, size),
        )
        if rescale_init and self.width != 1.0:
            apply_rescale_init(self, self.width, skip=(self.conv1,))
            _init_param(self)  # the original applies init_param after construction: bias 0 wins


class SlimmablePreResNet18(SlimmableMixin, _PreResNet):
    """Pre-activation ResNet-18 whose width-r sub-network is the prefix of every layer."""

    arch = "preresnet18"

    def __init__(
        self,
        num_classes: int = 10,
        norm: str = "batch",
        widths: tuple[float, ...] = DEFAULT_WIDTHS,
        input_size: int | None = None,
    ) -> None:
        super().__init__(SlimKit(norm, tuple(widths)), num_classes)
        size = DEFAULT_INPUT_SIZE if input_size is None else int(input_size)
        ws = record_slim(
            self, num_classes=num_classes, norm=norm, widths=widths, input_shape=(3, size, size)
        )
        self.set_width(ws[-1])
