"""Build any model of this package by name; the one entry point methods and the CLI use."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from splitmix.errors import ConfigError
from splitmix.models.alexnet import AlexNet, SlimmableAlexNet
from splitmix.models.base import DEFAULT_WIDTHS
from splitmix.models.digit import DigitModel, SlimmableDigitModel
from splitmix.models.preresnet import PreResNet18, SlimmablePreResNet18
from splitmix.models.slimmable import prefix_blocks

ARCHS = ("digit", "alexnet", "preresnet18")
_DEFAULT_ARCH = {"digits": "digit", "cifar10": "preresnet18", "domainnet": "alexnet"}


def default_arch(dataset: str) -> str:
    """The paper's model for a dataset: digits* -> digit, cifar10* -> preresnet18, domainnet* ->
    alexnet (the ``-mini`` variants use their parent's model)."""
    for prefix, arch in _DEFAULT_ARCH.items():
        if dataset.startswith(prefix):
            return arch
    raise ConfigError(
        f"no default model for dataset {dataset!r}; set arch to one of {', '.join(ARCHS)}"
    )


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")


def seeded_init(seed: int | None, make: Callable[[], nn.Module]) -> nn.Module:
    """Run ``make`` with the global torch RNG seeded by ``seed`` and restored afterwards, so that
    parameter init is a function of the seed alone and the caller's RNG stream is untouched."""
    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return make()


def build_model(
    arch: str,
    *,
    width: float = 1.0,
    slimmable: bool = False,
    widths: tuple[float, ...] = DEFAULT_WIDTHS,
    norm: str = "batch",
    rescale_init: bool = False,
    rescale_layer: bool = False,
    num_classes: int = 10,
    input_size: int | None = None,
    seed: int | None = None,
) -> nn.Module:
    """A dense model of width ``width``, or (``slimmable=True``) a slimmable model.

    ``widths`` are the sub-network widths a slimmable model with tracked/local BN gets a private BN
    for (ignored by dense models); ``input_size`` is the square input side (AlexNet: any >= 63,
    256 in the paper; PreResNet: any; Digit: must be 28). ``seed``: see ``seeded_init``.
    """
    _check_arch(arch)
    if arch == "digit" and input_size not in (None, 28):
        raise ConfigError(f"digit model takes 28x28 inputs, got image size {input_size}; use 28")
    if slimmable:
        if rescale_init or rescale_layer:
            raise ConfigError(
                "rescale_init/rescale_layer apply to dense (Split-Mix base) models; slimmable "
                "layers already divide by the width in training - set both to false"
            )
        return seeded_init(seed, lambda: _build_slim(arch, widths, norm, num_classes, input_size))
    return seeded_init(
        seed,
        lambda: _build_dense(
            arch, width, norm, rescale_init, rescale_layer, num_classes, input_size
        ),
    )


def _build_dense(
    arch: str,
    width: float,
    norm: str,
    rescale_init: bool,
    rescale_layer: bool,
    num_classes: int,
    input_size: int | None,
) -> nn.Module:
    kw = dict(
        width=width,
        num_classes=num_classes,
        norm=norm,
        rescale_init=rescale_init,
        rescale_layer=rescale_layer,
    )
    if arch == "digit":
        return DigitModel(**kw)
    if arch == "alexnet":
        return AlexNet(**kw, input_size=input_size)
    return PreResNet18(**kw, input_size=input_size)


def _build_slim(
    arch: str, widths: tuple[float, ...], norm: str, num_classes: int, input_size: int | None
) -> nn.Module:
    kw = dict(num_classes=num_classes, norm=norm, widths=tuple(widths))
    if arch == "digit":
        return SlimmableDigitModel(**kw)
    if arch == "alexnet":
        return SlimmableAlexNet(**kw, input_size=input_size)
    return SlimmablePreResNet18(**kw, input_size=input_size)


def count_params(model: nn.Module, width: float | None = None) -> int:
    """Number of entries of the state_dict (parameters AND buffers, docs/paper.md#cost).

    With ``width``: entries of the width-``width`` model only, i.e. of a slimmable model's prefix
    sub-network.
    """
    if width is None:
        return sum(t.numel() for t in model.state_dict().values())
    state = model.state_dict()
    total = 0
    for key, block in prefix_blocks(model, width).items():
        total += state[key][block].numel()
    return total
