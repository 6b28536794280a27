"""AlexNet for DomainNet (docs/paper.md#alexnet), no dropout, a BN after every conv/fc.

conv1 3->64w k11 s4 p2, conv2 ->192w k5 p2, conv3 ->384w k3 p1, conv4 ->256w k3 p1, conv5 ->256w k3
p1 (maxpool 3/2 after conv1, conv2, conv5); AdaptiveAvgPool(6, 6); fc1 256w*36 ->4096w, fc2
4096w->4096w, fc3 ->num_classes. A scaler after each conv, fc1 and fc2 (before BN). The adaptive
pool makes the input size a free choice: 256 in the paper, e.g. 64 for quick CPU runs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from splitmix.errors import ConfigError
from splitmix.models.base import DEFAULT_WIDTHS, record_dense, record_slim
from splitmix.models.kit import DenseKit, Kit, SlimKit
from splitmix.models.layers import apply_rescale_init
from splitmix.models.slimmable import SlimmableMixin

DEFAULT_INPUT_SIZE = 256
MIN_INPUT_SIZE = 63  # smallest side for which every pooling stage still has >= 1 pixel


def check_input_size(size: int | None) -> int:
    s = DEFAULT_INPUT_SIZE if size is None else int(size)
    if s < MIN_INPUT_SIZE:
        raise ConfigError(f"AlexNet input size {size} is too small; use at least {MIN_INPUT_SIZE}")
    return s


class _AlexNet(nn.Module):
    def __init__(self, kit: Kit, num_classes: int) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (kit.ch(c) for c in (64, 192, 384, 256, 256))
        f = kit.ch(4096)

        def stage(i: int, conv: nn.Module, c: int, pool: bool) -> list[tuple[str, nn.Module]]:
            layers = [
                (f"conv{i}", conv),
                (f"scaler{i}", kit.scaler()),
                (f"bn{i}", kit.norm(c, 2)),
                (f"relu{i}", nn.ReLU(inplace=True)),
            ]
            return layers + ([(f"maxpool{i}", nn.MaxPool2d(3, 2))] if pool else [])

        self.features = nn.Sequential(
            OrderedDict(
                stage(1, kit.conv(3, c1, 11, 4, 2, first=True), c1, True)
                + stage(2, kit.conv(c1, c2, 5, 1, 2), c2, True)
                + stage(3, kit.conv(c2, c3, 3, 1, 1), c3, False)
                + stage(4, kit.conv(c3, c4, 3, 1, 1), c4, False)
                + stage(5, kit.conv(c4, c5, 3, 1, 1), c5, True)
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", kit.linear(c5 * 36, f, in_group=36)),
                    ("scaler6", kit.scaler()),
                    ("bn6", kit.norm(f, 1)),
                    ("relu6", nn.ReLU(inplace=True)),
                    ("fc2", kit.linear(f, f)),
                    ("scaler7", kit.scaler()),
                    ("bn7", kit.norm(f, 1)),
                    ("relu7", nn.ReLU(inplace=True)),
                    ("fc3", kit.linear(f, num_classes, last=True)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class AlexNet(_AlexNet):
    """Dense AlexNet of width multiplier ``width``; ``input_size`` is the square input side."""

    arch = "alexnet"

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 10,
        norm: str = "batch",
        rescale_init: bool = False,
        rescale_layer: bool = False,
        input_size: int | None = None,
    ) -> None:
        size = check_input_size(input_size)
        super().__init__(DenseKit(width, norm, rescale_layer), num_classes)
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
            # As the original: rescale every layer, then give conv1 (fixed 3-channel input) its
            # default init back.
            apply_rescale_init(self, self.width)
            self.features.conv1.reset_parameters()


class SlimmableAlexNet(SlimmableMixin, _AlexNet):
    """AlexNet whose width-r sub-network is the prefix of every layer (HeteroFL)."""

    arch = "alexnet"

    def __init__(
        self,
        num_classes: int = 10,
        norm: str = "batch",
        widths: tuple[float, ...] = DEFAULT_WIDTHS,
        input_size: int | None = None,
    ) -> None:
        size = check_input_size(input_size)
        super().__init__(SlimKit(norm, tuple(widths)), num_classes)
        ws = record_slim(
            self, num_classes=num_classes, norm=norm, widths=widths, input_shape=(3, size, size)
        )
        self.set_width(ws[-1])
