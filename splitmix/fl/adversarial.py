"""PGD adversarial examples and the adversarial-training loss (docs/paper.md#adversarial,
docs/fidelity.md#pgd).

The attack is torchattacks' L-inf PGD with the original advertorch settings (eps 8/255, 7 steps of
(10/255)/7, uniform random start, inputs in [0, 1] without normalisation). As in the original
``ctx_noparamgrad_and_eval``, the attacked model runs in eval mode with parameter gradients off:
the attack must neither update BN running statistics nor leave gradients the optimizer would apply.
torchattacks' mean-reduced CE gives the same sign-gradient steps as advertorch's summed CE.

Training loss (per base for Split-Mix, per model for FedAvg):
``L = (1 - lam) * CE(f_clean(x), y) + lam * CE(f_noise(x_adv), y)`` with ``x_adv`` crafted against
the noise-BN path. Without dual BN the two paths are the same network; the clean term is then
skipped when ``lam == 1``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from splitmix.config import AdvConfig
from splitmix.models.norm import DualBatchNorm, bn_mode

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def eval_no_param_grad(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter, both restored per module/param.

    Restoring per module (not ``model.train()``) keeps submodules a caller froze in eval frozen.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: AdvConfig) -> torch.Tensor:
    """L-inf PGD examples for ``model`` (inputs in [0, 1]); the model's state is left as found.

    The random start draws from torch's global RNG (torchattacks offers no generator).
    """
    if adv.steps < 1 or adv.eps < 0:
        raise ValueError(f"PGD needs steps >= 1 and eps >= 0, got steps={adv.steps} eps={adv.eps}")
    # imported here: torchattacks (and the scipy it pulls in) costs every job that imports a
    # method 0.7 s of start-up, and only adversarial runs and robust evaluation attack
    import torchattacks

    with eval_no_param_grad(model):
        attack = torchattacks.PGD(
            model, eps=adv.eps, alpha=adv.step_size, steps=adv.steps, random_start=True
        )
        x_adv = attack(x.detach(), y.detach())
    return x_adv.detach()


def has_dual_bn(model: nn.Module) -> bool:
    return any(isinstance(m, DualBatchNorm) for m in model.modules())


def adversarial_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adv: AdvConfig,
    loss_fn: LossFn,
    lam: float | None = None,
) -> torch.Tensor:
    """``(1 - lam) * loss(f_clean(x), y) + lam * loss(f_noise(x_adv), y)``
    (docs/paper.md#adversarial).

    ``model`` is the network being trained (one Split-Mix base, or FedAvg's model) in train mode;
    with dual BN, "clean"/"noise" route its DualBatchNorm layers, otherwise both paths are the same
    network. ``x_adv`` is crafted against the noise path in eval mode (running statistics of the
    noise BN when tracked, batch statistics otherwise). ``lam`` defaults to ``adv.lam``.
    """
    lam = adv.lam if lam is None else float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"adversarial lambda must lie in [0, 1], got {lam}")
    dual = has_dual_bn(model)
    loss: torch.Tensor | None = None
    # Clean forward first, as the original: with tracked single BN it updates the running
    # statistics the eval-mode attack then sees.
    if lam < 1.0 or dual:
        with bn_mode(model, "clean"):
            loss = (1.0 - lam) * loss_fn(model(x), y)
    if lam > 0.0:
        with bn_mode(model, "noise"):
            x_adv = pgd(model, x, y, adv)
            noise = lam * loss_fn(model(x_adv), y)
        loss = noise if loss is None else loss + noise
    assert loss is not None
    return loss
