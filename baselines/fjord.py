"""FjORD (Horvath et al., NeurIPS 2021): ordered dropout with self-distillation
(docs/methods.md#fjord).

The nested sub-networks are HeteroFL's: the width-p network is the prefix ``[:ceil(p*C)]`` of every
layer of one slimmable model (``splitmix.models.prefix_blocks``). Client k with budget R_k trains,
on every local batch,

* the teacher, its widest sub-network (width R_k), with cross-entropy on the labels, and
* a student of width p drawn uniformly from the allowed widths ``{w in widths : w <= R_k}``
  (ordered dropout), with ``(1 - kd_alpha) * CE(student, y) + kd_alpha * KD(student, teacher)``,
  KD the distillation loss at temperature T against the DETACHED teacher output,

both in one backward, then the engine takes one optimiser step. With ``kd: false`` only the
student is trained, with CE. With the defaults ``kd_alpha = 1``, ``T = 1`` this is the update of
Flower's ``baselines/fjord`` (contributed by two of the paper's authors).

Upload and aggregation are HeteroFL's with per-client weights: the width-R_k prefix of every tensor
(with tracked/local BN also the private BN of every width <= R_k), averaged per entry over the
clients that covered it (``MaskedAverage``). Evaluation: the prefix sub-network of each budget
width.

Speed: a client trains a model SIZED TO ITS BUDGET - a copy of the slimmable model whose tensors are
cut to the width-R_k prefix block (``budget_model``). Its layers keep their full-width channel
arithmetic, so at every width p <= R_k it computes exactly the global model's width-p function
(checked once per budget), while gradients and optimiser steps touch only the R_k-sized tensors:
training width 1/8 through the full slimmable model costs ~8x the dense step on a CPU. A client
with a single allowed width trains HeteroFL's verified dense stand-in.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from baselines.heterofl import HeteroFL
from splitmix.config import RunConfig
from splitmix.errors import ConfigError
from splitmix.fl.algorithm import FederationInfo, LossFn, Task, register

_TOL = 1e-9


def draw_width(widths: tuple[float, ...]) -> float:
    """One width, uniformly from ``widths``, drawn from torch's GLOBAL generator.

    The engine seeds that generator per (round, client) before ``download``, so the sequence of
    draws of a client-round is a function of the seed alone and a resumed run redraws it exactly.
    A single width is returned without a draw: such a step touches no RNG, so it may be batched
    (``FjORD.batchable``).
    """
    if not widths:
        raise ValueError("no width to draw from")
    if len(widths) == 1:
        return widths[0]
    return widths[int(torch.randint(len(widths), (1,)).item())]


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over the batch.

    The teacher is detached: distillation moves the student only. At ``T = 1`` its gradient in the
    student logits is that of the reference code's cross-entropy against the teacher's soft labels
    (the two differ by the teacher's entropy, a constant); KL is exactly 0 when student equals
    teacher. ``T^2`` keeps gradient magnitudes comparable across temperatures (Hinton et al.).
    """
    t = float(temperature)
    log_p = F.log_softmax(student / t, dim=1)
    log_q = F.log_softmax(teacher.detach() / t, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


@register
class FjORD(HeteroFL):
    """FjORD: per-batch ordered dropout up to the budget width, self-distilled from it."""

    name = "fjord"
    params: ClassVar[dict[str, Any]] = {"kd": True, "kd_alpha": 1.0, "kd_temperature": 1.0}
    # checked with every config before any job starts (types follow ``params``)
    param_rules: ClassVar[dict[str, dict[str, Any]]] = {
        "kd_alpha": {
            "description": "weight of the KD term in the student's loss, in [0, 1]",
            "type": "number",
            "minimum": 0,
            "maximum": 1,
        },
        "kd_temperature": {
            "description": "distillation temperature, > 0",
            "type": "number",
            "exclusiveMinimum": 0,
        },
    }
    train_all_widths = True  # a task lists every width <= the budget: the ones it may draw

    def __init__(self, cfg: RunConfig, info: FederationInfo) -> None:
        super().__init__(cfg, info)
        self.kd, self.kd_alpha, self.kd_temperature = self._check_params()
        if cfg.adv.lam > 0.0:
            raise ConfigError(
                f"method {cfg.method!r} (fjord) has no adversarial training; set adv.lam to 0"
            )

    def _check_params(self) -> tuple[bool, float, float]:
        kd, alpha, temp = self.p["kd"], self.p["kd_alpha"], self.p["kd_temperature"]
        where = f"method {self.cfg.method!r} (fjord)"
        if not isinstance(kd, bool):
            raise ConfigError(f"{where}: kd={kd!r} must be true or false")
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
            raise ConfigError(f"{where}: kd_alpha={alpha!r} must be a number in [0, 1]")
        if isinstance(temp, bool) or not isinstance(temp, int | float) or not temp > 0:
            raise ConfigError(f"{where}: kd_temperature={temp!r} must be a number > 0")
        return kd, float(alpha), float(temp)

    # ---- local training ---------------------------------------------------------------------
    def train_step(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> float:
        """One batch: draw the student width, then teacher CE + student loss, one backward
        (gradients of both add up in the shared weights, as the reference's two backwards)."""
        top = max(task.widths)
        p = draw_width(task.widths)
        slimmable = getattr(model, "slimmable", False)

        def forward(width: float) -> torch.Tensor:
            if slimmable:
                model.set_width(width)
            return model(x)

        if not self.kd:
            loss = loss_fn(forward(p), y)
        else:
            teacher = forward(top)
            loss = loss_fn(teacher, y)
            # p == top: the student IS the teacher (same weights, same batch), so its KD term and
            # gradient are exactly 0; reuse the output instead of a second identical pass
            student = teacher if abs(p - top) < _TOL else forward(p)
            if self.kd_alpha < 1.0:
                loss = loss + (1.0 - self.kd_alpha) * loss_fn(student, y)
            if self.kd_alpha > 0.0 and student is not teacher:
                kd = distillation_loss(student, teacher, self.kd_temperature)
                loss = loss + self.kd_alpha * kd
        loss.backward()
        return float(loss.detach())

    def batchable(self, task: Task) -> bool:
        """HeteroFL's rule (one width, on its dense stand-in), where the step is then plain CE:
        the only width is both teacher and student, so with ``kd_alpha = 1`` (or ``kd: false``)
        the loss is ``CE(model(x), y)`` and nothing is drawn; ``kd_alpha < 1`` adds a second
        ``(1 - kd_alpha) * CE`` term."""
        if self.kd and self.kd_alpha < 1.0:
            return False
        return super().batchable(task)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "kd": self.kd,
            "kd_alpha": self.kd_alpha,
            "kd_temperature": self.kd_temperature,
            "budget_models": sorted(w for w, m in self._budget_models.items() if m is not None),
        }
