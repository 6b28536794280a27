"""FedAvg (docs/paper.md#fedavg): one dense model of a fixed width, averaged over participating
clients.

Each width is a separate run. Only the smallest width (x1/8 on 8-4-2-1) respects every client's
budget; a wider FedAvg trains clients beyond their budget and is a budget-VIOLATING reference
(greyed out in the paper's Table 1) - ``describe()`` records which clients it violates.
FedAvg never uses dual BN: adversarial training (``adv.lam > 0``) runs on the single BN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from splitmix.config import RunConfig
from splitmix.errors import ConfigError
from splitmix.fl.adversarial import adversarial_loss
from splitmix.fl.algorithm import FederationInfo, LossFn, Task, register
from splitmix.fl.base import ServerModelAlgorithm
from splitmix.models import build_model

_TOL = 1e-9


def check_bn(bn: str) -> str:
    if bn not in ("batch", "tracked", "local"):
        raise ConfigError(f"bn={bn!r} is invalid for this method; allowed: batch | tracked | local")
    return bn


@register
class FedAvg(ServerModelAlgorithm):
    """Dense model of width ``width``; every non-local state tensor is uploaded and averaged."""

    name = "fedavg"
    params = {"width": 1.0}
    one_run_per_width = True  # each width is a separate run
    param_rules = {
        "width": {
            "description": "width of the dense model",
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
        }
    }

    def __init__(self, cfg: RunConfig, info: FederationInfo) -> None:
        super().__init__(cfg, info)
        self.width = float(self.p["width"])
        if not 0.0 < self.width <= 1.0:
            raise ConfigError(f"fedavg width {self.p['width']!r} must lie in (0, 1], e.g. 0.125")
        check_bn(cfg.bn)

    def build_model(self) -> nn.Module:
        # No rescale_init / rescale_layer: FedAvg is a plain dense model (docs/paper.md#fedavg).
        return build_model(
            self.info.arch,
            width=self.width,
            slimmable=False,
            norm=self.cfg.bn,
            rescale_init=False,
            rescale_layer=False,
            num_classes=self.info.num_classes,
            input_size=self.info.input_shape[-1],
        )

    def plan(self, round_idx: int, clients: list[int], rng: np.random.Generator) -> list[Task]:
        return [Task(client=int(k), widths=(self.width,)) for k in clients]

    def train_step(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> float:
        if self.cfg.adv.lam > 0.0:
            loss = adversarial_loss(model, x, y, self.cfg.adv, loss_fn)
        else:
            loss = loss_fn(model(x), y)
        loss.backward()
        return float(loss.detach())

    def batchable(self, task: Task) -> bool:
        # the clean step is plain; PGD draws random starts and adds its own forward passes
        return self.cfg.adv.lam == 0.0

    def eval_widths(self) -> list[float]:
        return [self.width]

    def assemble(
        self, width: float, lam: float | None = None, client: int | None = None
    ) -> nn.Module:
        # ``lam`` mixes dual BN; FedAvg has a single BN, so every lambda is the same model.
        if abs(width - self.width) > _TOL:
            raise ConfigError(
                f"fedavg was trained at width {self.width:g}, cannot assemble width {width:g}; "
                "run a separate fedavg with that width"
            )
        return self.eval_model(client)

    def violated_clients(self) -> list[int]:
        """Clients whose budget is below this width (they could not train this model)."""
        budgets = np.asarray(self.info.budgets, dtype=float)
        return [int(k) for k in np.flatnonzero(budgets < self.width - _TOL)]

    def describe(self) -> dict[str, Any]:
        violated = self.violated_clients()
        return {
            **super().describe(),
            "width": self.width,
            "budget_violating": bool(violated),
            "violated_clients": violated,
            "num_violated_clients": len(violated),
        }
