"""Normalisation regimes (docs/paper.md#batch-norm, #dual-bn): batch-statistics BN, tracked BN,
local (FedBN) BN, dual BN for in-situ robustness customisation, and their slimmable counterparts.

Kinds accepted by ``make_norm``:

``batch``    BatchNorm with ``track_running_stats=False``: batch statistics in train AND eval (the
             paper's size-customisation default; test-time BN uses the test batch).
``tracked``  standard BN with running statistics (momentum 0.1); the server averages them.
``local``    the same module as ``tracked``; a method keeps its tensors per client (FedBN). Which
             tensors those are is answered by ``local_state_keys`` BY LAYER TYPE
             (docs/fidelity.md#local-bn).
``dual``     ``DualBatchNorm`` with tracked statistics (the paper's AT setting); ``dual-batch``,
             ``dual-tracked`` and ``dual-local`` choose the statistics of both branches explicitly.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from splitmix.errors import ConfigError
from splitmix.models.layers import WidthSwitchable, check_ratio, slim_channels

BASE_KINDS = ("batch", "tracked", "local")
NORM_KINDS = (*BASE_KINDS, "dual", "dual-batch", "dual-tracked", "dual-local")
MOMENTUM = 0.1

BnMode = str | float


def parse_norm(kind: str) -> tuple[str, bool]:
    """``kind`` -> (statistics regime in BASE_KINDS, is_dual); one-line ConfigError if unknown."""
    if kind not in NORM_KINDS:
        raise ConfigError(f"unknown norm {kind!r}; known: {', '.join(NORM_KINDS)}")
    if kind == "dual":
        return "tracked", True
    if kind.startswith("dual-"):
        return kind[len("dual-") :], True
    return kind, False


def norm_kind(bn: str, dual: bool) -> str:
    """Compose a run's BN regime (``cfg.bn``) with whether the method needs dual BN."""
    parse_norm(bn)
    if bn.startswith("dual"):
        raise ConfigError(
            f"bn {bn!r} is already dual; pass the statistics regime (batch|tracked|local)"
        )
    return f"dual-{bn}" if dual else bn


def _bn(num_features: int, dims: int, tracked: bool) -> nn.Module:
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 (BatchNorm1d) or 2 (BatchNorm2d), got {dims}")
    cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    return cls(num_features, momentum=MOMENTUM, track_running_stats=tracked)


class DualBatchNorm(nn.Module):
    """Two BNs, ``clean`` and ``noise``, each with its own affine parameters and statistics.

    ``mode`` routes the whole batch: ``"clean"`` or ``"noise"``; a float lambda in [0, 1] (eval
    only) outputs ``(1 - lambda) * clean(x) + lambda * noise(x)``, each after its own affine, at
    every dual layer ("deep mix", docs/paper.md#dual-bn). The original's ``clean_input`` c is
    1 - lambda.
    """

    def __init__(self, num_features: int, dims: int, tracked: bool) -> None:
        super().__init__()
        self.clean = _bn(num_features, dims, tracked)
        self.noise = _bn(num_features, dims, tracked)
        self.mode: BnMode = "clean"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if mode == "clean":
            return self.clean(x)
        if mode == "noise":
            return self.noise(x)
        lam = float(mode)
        if self.training:
            # Mixing would update both branches' running statistics with the same batch.
            raise RuntimeError("DualBatchNorm lambda-mixing is for eval only; call model.eval()")
        # The endpoints are exact (no 0 * other-branch arithmetic).
        if lam == 0.0:
            return self.clean(x)
        if lam == 1.0:
            return self.noise(x)
        return (1.0 - lam) * self.clean(x) + lam * self.noise(x)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class SlimmableBatchNorm(WidthSwitchable):
    """One BN for every width: affine params sliced ``[:ceil(r*C)]``, always batch statistics.

    This is HeteroFL's choice when statistics are not tracked: a single set of running statistics
    cannot serve sub-networks whose activations differ, so there are none (docs/paper.md#heterofl,
    #batch-norm).
    """

    def __init__(self, num_features: int, dims: int, eps: float = 1e-5) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims}")
        self.num_features, self.dims, self.eps = num_features, dims, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.width = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != (2 if self.dims == 1 else 4):
            raise ValueError(f"SlimmableBatchNorm(dims={self.dims}) got a {x.dim()}D input")
        c = slim_channels(self.num_features, self.width)
        return F.batch_norm(x, None, None, self.weight[:c], self.bias[:c], True, 0.0, self.eps)

    def block(self, name: str, ratio: float, shape: torch.Size) -> tuple[slice, ...]:
        return (slice(0, slim_channels(self.num_features, ratio)),)

    def extra_repr(self) -> str:
        return f"{self.num_features}, dims={self.dims}, width={self.width}"


class SwitchableBatchNorm(WidthSwitchable):
    """A private tracked BN per width ratio, ``ceil(r*C)`` features each (SwitchableLayer1D).

    With tracked statistics each width needs its own running mean/var (and affine), because the
    statistics of a 1/8-width prefix differ from those of the full net (docs/paper.md#batch-norm).
    """

    def __init__(self, num_features: int, dims: int, widths: tuple[float, ...]) -> None:
        super().__init__()
        if not widths:
            raise ConfigError("a slimmable model with tracked BN needs its widths, e.g. (0.125, 1)")
        self.widths = tuple(sorted({check_ratio(w) for w in widths}))
        self.num_features = num_features
        self.norms = nn.ModuleList(
            _bn(slim_channels(num_features, w), dims, tracked=True) for w in self.widths
        )
        self.width = self.widths[-1]

    def index(self, ratio: float) -> int:
        for i, w in enumerate(self.widths):
            if abs(w - ratio) < 1e-9:
                return i
        raise ConfigError(
            f"width {ratio} has no private BN (tracked BN was built for widths "
            f"{', '.join(f'{w:g}' for w in self.widths)}); add it to the model's widths"
        )

    def set_width(self, ratio: float) -> None:
        r = check_ratio(ratio)
        self.index(r)
        self.width = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.index(self.width)](x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, widths={self.widths}, width={self.width}"


def make_norm(kind: str, num_features: int, dims: int) -> nn.Module:
    """The dense normalisation layer for ``kind`` (see module docstring) over ``num_features``."""
    stats, dual = parse_norm(kind)
    tracked = stats != "batch"
    if dual:
        return DualBatchNorm(num_features, dims, tracked)
    return _bn(num_features, dims, tracked)


def make_slim_norm(kind: str, num_features: int, dims: int, widths: tuple[float, ...]) -> nn.Module:
    """The slimmable normalisation layer for ``kind``: sliced batch-stat BN or a BN per width."""
    stats, dual = parse_norm(kind)
    if dual:
        raise ConfigError(
            f"norm {kind!r} is not available for slimmable (HeteroFL-family) models; "
            "use batch, tracked or local"
        )
    if stats == "batch":
        return SlimmableBatchNorm(num_features, dims)
    return SwitchableBatchNorm(num_features, dims, widths)


# ---- dual-BN routing ---------------------------------------------------------------------------
def _check_mode(mode: BnMode) -> BnMode:
    if isinstance(mode, str):
        if mode in ("clean", "noise"):
            return mode
    elif isinstance(mode, numbers.Real) and not isinstance(mode, bool):
        lam = float(mode)
        if 0.0 <= lam <= 1.0:
            return lam
    raise ConfigError(f"BN mode {mode!r} is invalid; use 'clean', 'noise' or a lambda in [0, 1]")


def set_bn_mode(model: nn.Module, mode: BnMode) -> int:
    """Route every ``DualBatchNorm`` of ``model``: "clean", "noise" or eval mixing lambda.

    Returns the number of dual layers set (0 for a model without dual BN, where this is a no-op).
    """
    mode = _check_mode(mode)
    n = 0
    for m in model.modules():
        if isinstance(m, DualBatchNorm):
            m.mode = mode
            n += 1
    return n


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: BnMode) -> Iterator[nn.Module]:
    """Temporarily set the dual-BN mode (e.g. attack the noise path), restoring each layer after."""
    saved = [(m, m.mode) for m in model.modules() if isinstance(m, DualBatchNorm)]
    set_bn_mode(model, mode)
    try:
        yield model
    finally:
        for m, old in saved:
            m.mode = old


# ---- which tensors are "BN" --------------------------------------------------------------------
NORM_TYPES: tuple[type[nn.Module], ...] = (
    _NormBase,
    DualBatchNorm,
    SlimmableBatchNorm,
    SwitchableBatchNorm,
)


def is_norm_layer(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES)


def local_state_keys(model: nn.Module) -> set[str]:
    """Every state_dict key of ``model`` that belongs to a normalisation layer.

    Selected by layer type, never by a substring of the name (docs/fidelity.md#local-bn): the
    original matched 'bn' in the key, which silently missed layers named n1/n2 and would catch any
    'bn_proj' linear. These are the tensors a local-BN (FedBN) method keeps per client: affine
    params and statistics.
    """
    keys: set[str] = set()
    for name, m in model.named_modules():
        if is_norm_layer(m):
            prefix = f"{name}." if name else ""
            keys.update(prefix + k for k in m.state_dict())
    return keys
