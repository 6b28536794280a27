"""DigitModel: the Digits CNN of FedBN / Split-Mix (docs/paper.md#digitmodel), input 3x28x28.

conv1 3->64w k5 p2 -> [scaler] -> BN -> ReLU -> maxpool2; conv2 64w->64w k5 p2 (same);
conv3 64w->128w k5 p2 -> [scaler] -> BN -> ReLU; flatten 128w*7*7; fc1 ->2048w and fc2 ->512w,
each -> [scaler] -> BN1d -> ReLU; fc3 ->num_classes. All conv/linear layers have a bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from splitmix.models.base import DEFAULT_WIDTHS, record_dense, record_slim
from splitmix.models.kit import DenseKit, Kit, SlimKit
from splitmix.models.layers import apply_rescale_init
from splitmix.models.slimmable import SlimmableMixin

INPUT_SHAPE = (3, 28, 28)


class _DigitNet(nn.Module):
    def __init__(self, kit: Kit, num_classes: int) -> None:
        super().__init__()
        c1, c2, c3 = kit.ch(64), kit.ch(64), kit.ch(128)
        f1, f2 = kit.ch(2048), kit.ch(512)
        self.conv1 = kit.conv(3, c1, 5, 1, 2, first=True)
        self.bn1 = kit.norm(c1, 2)
        self.conv2 = kit.conv(c1, c2, 5, 1, 2)
        self.bn2 = kit.norm(c2, 2)
        self.conv3 = kit.conv(c2, c3, 5, 1, 2)
        self.bn3 = kit.norm(c3, 2)
        self.fc1 = kit.linear(c3 * 7 * 7, f1, in_group=7 * 7)
        self.bn4 = kit.norm(f1, 1)
        self.fc2 = kit.linear(f1, f2)
        self.bn5 = kit.norm(f2, 1)
        self.fc3 = kit.linear(f2, num_classes, last=True)
        self.scaler = kit.scaler()  # stateless, so one instance serves every position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scaler
        x = F.max_pool2d(F.relu(self.bn1(s(self.conv1(x)))), 2)
        x = F.max_pool2d(F.relu(self.bn2(s(self.conv2(x)))), 2)
        x = F.relu(self.bn3(s(self.conv3(x))))
        x = x.flatten(1)
        x = F.relu(self.bn4(s(self.fc1(x))))
        x = F.relu(self.bn5(s(self.fc2(x))))
        return self.fc3(x)


class DigitModel(_DigitNet):
    """Dense DigitModel of width multiplier ``width`` (``int(width*c)`` hidden channels)."""

    arch = "digit"

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 10,
        norm: str = "batch",
        rescale_init: bool = False,
        rescale_layer: bool = False,
    ) -> None:
        super().__init__(DenseKit(width, norm, rescale_layer), num_classes)
        record_dense(
            self,
            width=width,
            num_classes=num_classes,
            norm=norm,
            rescale_init=rescale_init,
            rescale_layer=rescale_layer,
            input_shape=INPUT_SHAPE,
        )
        if rescale_init and self.width != 1.0:
            apply_rescale_init(self, self.width, skip=(self.conv1,))


class SlimmableDigitModel(SlimmableMixin, _DigitNet):
    """DigitModel whose width-r sub-network is the prefix of every layer (HeteroFL)."""

    arch = "digit"

    def __init__(
        self,
        num_classes: int = 10,
        norm: str = "batch",
        widths: tuple[float, ...] = DEFAULT_WIDTHS,
    ) -> None:
        ws = tuple(sorted(widths))
        super().__init__(SlimKit(norm, ws), num_classes)
        ws = record_slim(
            self, num_classes=num_classes, norm=norm, widths=widths, input_shape=INPUT_SHAPE
        )
        self.set_width(ws[-1])
