"""Models: DigitModel, AlexNet, pre-activation ResNet-18 (dense and slimmable), and every BN
regime (batch, tracked, local, dual). Method-specific models live with their method (Split-Mix's
ensemble of bases: ``splitmix.splitmix.ensemble``).

Start with ``build_model``; ``local_state_keys`` says which tensors are
normalisation state, ``prefix_blocks`` which block of each tensor a slimmable width uses, and
``set_bn_mode`` / ``bn_mode`` route dual BN.
"""

from splitmix.models.alexnet import AlexNet, SlimmableAlexNet
from splitmix.models.base import DEFAULT_WIDTHS
from splitmix.models.digit import DigitModel, SlimmableDigitModel
from splitmix.models.factory import (
    ARCHS,
    build_model,
    count_params,
    default_arch,
)
from splitmix.models.layers import (
    Scaler,
    SlimmableConv2d,
    SlimmableLinear,
    rescale_init_,
    scaled_channels,
    set_scalers,
    slim_channels,
)
from splitmix.models.norm import (
    NORM_KINDS,
    DualBatchNorm,
    SlimmableBatchNorm,
    SwitchableBatchNorm,
    bn_mode,
    is_norm_layer,
    local_state_keys,
    make_norm,
    norm_kind,
    set_bn_mode,
)
from splitmix.models.preresnet import PreResNet18, SlimmablePreResNet18
from splitmix.models.slimmable import dense_state, prefix_block, prefix_blocks, sliced_state

__all__ = [
    "ARCHS",
    "DEFAULT_WIDTHS",
    "NORM_KINDS",
    "AlexNet",
    "DigitModel",
    "DualBatchNorm",
    "PreResNet18",
    "Scaler",
    "SlimmableAlexNet",
    "SlimmableBatchNorm",
    "SlimmableConv2d",
    "SlimmableDigitModel",
    "SlimmableLinear",
    "SlimmablePreResNet18",
    "SwitchableBatchNorm",
    "bn_mode",
    "build_model",
    "count_params",
    "default_arch",
    "dense_state",
    "is_norm_layer",
    "local_state_keys",
    "make_norm",
    "norm_kind",
    "prefix_block",
    "prefix_blocks",
    "rescale_init_",
    "scaled_channels",
    "set_bn_mode",
    "set_scalers",
    "slim_channels",
    "sliced_state",
]
