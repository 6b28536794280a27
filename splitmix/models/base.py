"""What every model of this package shares: recorded construction facts and argument checks."""

from __future__ import annotations

from torch import nn

from splitmix.errors import ConfigError
from splitmix.models.layers import check_ratio
from splitmix.models.norm import parse_norm

DEFAULT_WIDTHS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)


def check_width(width: float) -> float:
    """A dense model's width multiplier must be a positive number."""
    w = float(width)
    if not w > 0.0:
        raise ConfigError(f"width {width!r} must be > 0 (e.g. 0.125 for a x1/8 model)")
    return w


def record_dense(
    model: nn.Module,
    *,
    width: float,
    num_classes: int,
    norm: str,
    rescale_init: bool,
    rescale_layer: bool,
    input_shape: tuple[int, int, int],
) -> None:
    """Store the facts other modules read (FLOPs input shape, width, norm regime) on ``model``."""
    parse_norm(norm)
    model.width = check_width(width)
    model.num_classes = int(num_classes)
    model.norm = norm
    model.rescale_init = bool(rescale_init)
    model.rescale_layer = bool(rescale_layer)
    model.input_shape = input_shape
    model.slimmable = False


def record_slim(
    model: nn.Module,
    *,
    num_classes: int,
    norm: str,
    widths: tuple[float, ...],
    input_shape: tuple[int, int, int],
) -> tuple[float, ...]:
    """Like ``record_dense`` for a slimmable model; returns the sorted, checked widths."""
    parse_norm(norm)
    ws = tuple(sorted({check_ratio(w) for w in widths}))
    if not ws:
        raise ConfigError("a slimmable model needs at least one width, e.g. widths=(0.125, 1.0)")
    model.widths = ws
    model.width = 1.0
    model.num_classes = int(num_classes)
    model.norm = norm
    model.input_shape = input_shape
    model.slimmable = True
    return ws
