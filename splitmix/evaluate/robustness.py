"""Robustness evaluation: L-inf PGD (torchattacks, via ``splitmix.fl.adversarial.pgd``) against the
assembled model end to end (docs/paper.md#adversarial: the lambda-mixed ensemble, white box).

The attack is the paper's: eps 8/255, 7 steps of (10/255)/7, uniform random start, inputs in
[0, 1] without normalisation (the run's ``adv`` settings, whose defaults are these). Its random
start draws from torch's global RNG, so the evaluation seeds that RNG per (width, lambda, client)
with ``attack_seed``: a result never depends on which other widths or clients were evaluated first.
"""

from __future__ import annotations

import torch
from torch import nn

from splitmix.config import AdvConfig
from splitmix.seeding import rng


def attack_seed(seed: int, width: float, lam: float | None, client: int) -> int:
    """The torch seed of PGD random starts for one (width, lambda, client) of run ``seed``."""
    name = f"evaluate/pgd/{width:g}/{'none' if lam is None else f'{lam:g}'}/{client}"
    return int(rng(seed, name).integers(0, 2**63 - 1))


def adversarial_examples(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: AdvConfig
) -> torch.Tensor:
    """PGD examples for eval-mode ``model`` (BN as assembled; lambda mixing stays in place)."""
    from splitmix.fl.adversarial import pgd  # torchattacks is imported only when attacking

    return pgd(model, x, y, adv)
