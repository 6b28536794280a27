"""Split-Mix's model: independent narrow bases whose logits are averaged (docs/paper.md#split-mix).

A model of width r is the mean of the logits (not probabilities) of the first ``r / atom`` bases;
bases share nothing, so each can be trained, sent and averaged on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from splitmix.errors import ConfigError
from splitmix.models.factory import build_model, seeded_init


def bases_for_width(width: float, atom: float) -> int:
    """Number of atom-width bases that make a model of ``width`` (e.g. 0.5 / 0.125 -> 4)."""
    n = round(width / atom)
    if n < 1 or abs(n * atom - width) > 1e-9:
        raise ConfigError(
            f"width {width} is not a positive multiple of the atom width {atom}; "
            f"use one of {atom:g}, {2 * atom:g}, ..."
        )
    return n


class Ensemble(nn.Module):
    """Mean of the logits of selected bases; state keys are ``bases.<i>.<base key>``.

    ``forward(x)`` uses the first ``num_active`` bases (all by default; ``set_width`` picks
    ``width / atom`` of them); ``forward(x, idxs)`` uses exactly ``idxs``, in that order.
    """

    def __init__(self, bases: nn.ModuleList, atom: float | None = None) -> None:
        super().__init__()
        if len(bases) == 0:
            raise ValueError("an Ensemble needs at least one base")
        self.bases = bases
        self.atom = float(atom if atom is not None else getattr(bases[0], "width", 1.0))
        self.num_active = len(bases)

    @property
    def width(self) -> float:
        return self.num_active * self.atom

    def set_width(self, width: float) -> Ensemble:
        """Use the first ``width / atom`` bases in ``forward(x)``."""
        n = bases_for_width(float(width), self.atom)
        if n > len(self.bases):
            raise ConfigError(
                f"width {width} needs {n} bases of width {self.atom:g} but the model has "
                f"{len(self.bases)}; use a width of at most {len(self.bases) * self.atom:g}"
            )
        self.num_active = n
        return self

    def forward(self, x: torch.Tensor, idxs: Sequence[int] | None = None) -> torch.Tensor:
        chosen = range(self.num_active) if idxs is None else idxs
        logits = [self.bases[i](x) for i in chosen]
        if not logits:
            raise ValueError("Ensemble.forward got an empty set of bases")
        if len(logits) == 1:
            return logits[0]
        return torch.stack(logits).mean(0)

    def select(self, idxs: Sequence[int]) -> Ensemble:
        """An Ensemble over the given bases (shared modules, no copy), e.g. to count its FLOPs."""
        return Ensemble(nn.ModuleList(self.bases[i] for i in idxs), atom=self.atom)

    def base_prefix(self, idx: int) -> str:
        """State-key prefix of base ``idx`` (``bases.<idx>.``) for uploading one base's tensors."""
        return f"bases.{int(idx)}."


def build_ensemble(
    arch: str,
    *,
    atom: float = 0.125,
    max_width: float = 1.0,
    norm: str = "batch",
    rescale_init: bool = True,
    rescale_layer: bool = True,
    num_classes: int = 10,
    input_size: int | None = None,
    seed: int | None = None,
) -> Ensemble:
    """Split-Mix's model: ``max_width / atom`` independent dense bases of width ``atom``.

    rescale_init/rescale_layer default to True as in the paper's Split-Mix runs
    (docs/paper.md#hyperparameters).
    """
    n = bases_for_width(max_width, atom)

    def make() -> Ensemble:
        bases = [
            build_model(
                arch,
                width=atom,
                norm=norm,
                rescale_init=rescale_init,
                rescale_layer=rescale_layer,
                num_classes=num_classes,
                input_size=input_size,
            )
            for _ in range(n)
        ]
        return Ensemble(nn.ModuleList(bases), atom=atom)

    model = seeded_init(seed, make)
    assert isinstance(model, Ensemble)
    return model
