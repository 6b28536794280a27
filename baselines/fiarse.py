"""FIARSE (Wu et al., NeurIPS 2024; docs/methods.md#fiarse-baselinesfiarsepy): importance-aware
sub-model extraction. A client's sub-model is an element-wise mask of the full model that keeps
the parameters of largest magnitude, not a channel prefix.

Budget: a client of budget width r keeps the fraction ``f(r)`` of the maskable parameters:
``fractions`` (one per distinct budget width, ascending), by default ``r^2``, the parameter share
of the width-r dense model, so 8-4-2-1 gives FIARSE's own sizes 1/64, 1/16, 1/4, 1.

Extraction (the authors' ``generate_mask``): the maskable parameters are the weights and biases of
every convolution and linear layer, the first and last included; BN is never masked. Their
magnitudes in the GLOBAL model, all layers together, give one threshold per budget: ``theta_f``
is the k-th largest ``|w|`` with ``k = int(f * N)`` (f = 1 keeps all), and an element is kept
where ``|w| >= theta_f``. One threshold of one ranking makes the masks of smaller budgets subsets
of those of larger ones.

Local training: the forward uses ``w * 1[|w| >= theta]`` with the round's threshold, re-evaluated
on the CURRENT local weights at every step (a kept weight that falls below theta drops out). The
gradient is the paper's straight-through treatment of the threshold (``gradient: surrogate``): the
mask is given the derivative ``2 theta / (|w| + theta)^2``, so a kept weight receives
``g * (1 + 2 theta |w| / (|w| + theta)^2)`` and a masked one nothing; ``gradient: hard`` gives
``g * mask``, which is what the authors' released code computes (its mask Function returns a bool
tensor, so autograd never calls the surrogate backward).

Upload and aggregation: a client sends the values it kept at the end of the round and its mask
(one bit per element; ``Update.masks``) plus its BN tensors; the server averages every element
over the clients whose mask covered it, weighted by client weight (``MaskedAverage``); elements
nobody covered keep their value.

Evaluation: the model of budget width r is the global model masked by its own threshold at
``f(r)``; it runs densely (the zeros are multiplied), so its MACs are the dense model's, while
its parameters, state and bytes count the kept elements only (``parameter_masks``,
``splitmix.evaluate.cost``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from splitmix.config import RunConfig
from splitmix.data.budgets import BudgetWidths, parse_widths
from splitmix.errors import ConfigError
from splitmix.fl.algorithm import FederationInfo, LossFn, Task, Update, mask_nbytes, register
from splitmix.fl.base import ServerModelAlgorithm
from splitmix.models import build_model

GRADIENTS = ("surrogate", "hard")


# ---- masks ---------------------------------------------------------------------------------
def maskable_keys(model: nn.Module) -> list[str]:
    """State keys of the weights and biases of every Conv2d and Linear layer, in model order."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            prefix = f"{name}." if name else ""
            keys += [prefix + n for n, _ in module.named_parameters(recurse=False)]
    return keys


def threshold(tensors: list[torch.Tensor], fraction: float) -> float:
    """The magnitude of the k-th largest element, ``k = int(fraction * N)``, over all ``tensors``
    together (0 when every element is kept)."""
    scores = torch.cat([t.detach().abs().flatten() for t in tensors])
    n = scores.numel()
    k = max(1, int(float(fraction) * n))
    if k >= n:
        return 0.0
    return float(torch.kthvalue(scores.float().cpu(), n - k + 1).values)


def keep_mask(w: torch.Tensor, theta: float) -> torch.Tensor:
    """Elements of ``w`` that a threshold ``theta`` keeps: ``|w| >= theta``."""
    return w.detach().abs() >= theta


class ThresholdMask(torch.autograd.Function):
    """``w * 1[|w| >= theta]`` with the straight-through gradient of the module docstring."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, theta: float, surrogate: bool) -> torch.Tensor:
        mask = keep_mask(w, theta)
        ctx.save_for_backward(w, mask)
        ctx.theta, ctx.surrogate = float(theta), bool(surrogate)
        return w * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        w, mask = ctx.saved_tensors
        out = grad * mask
        if ctx.surrogate and ctx.theta > 0.0:
            a = w.abs()
            out = out * (1.0 + 2.0 * ctx.theta * a / (a + ctx.theta) ** 2)
        return out, None, None


def default_fractions(widths: list[float]) -> list[float]:
    """FIARSE's sizes for budget widths: the parameter share r^2 of a width-r dense model."""
    return [float(w) ** 2 for w in widths]


# ---- the method ----------------------------------------------------------------------------------
@register
class FIARSE(ServerModelAlgorithm):
    """FIARSE: each client trains the global model's largest-magnitude elements (module
    docstring)."""

    name = "fiarse"
    params: ClassVar[dict[str, Any]] = {
        "fractions": None,  # kept fraction per distinct budget width; None: width^2
        "gradient": "surrogate",  # the paper's straight-through rule, or hard (the code's)
    }
    param_rules: ClassVar[dict[str, dict[str, Any]]] = {
        "fractions": {
            "description": "null (width squared) or one fraction of parameters kept in (0, 1] "
            "per distinct budget width, ascending",
            "oneOf": [
                {"type": "null"},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                },
            ],
        },
        "gradient": {"description": "surrogate (the paper's) or hard", "enum": list(GRADIENTS)},
    }

    @classmethod
    def check_config(cls, cfg: RunConfig) -> str | None:
        fractions = cls.resolved_params(cfg.method_params)["fractions"]
        if fractions is None:
            return None
        try:
            widths = sorted(set(parse_widths(cfg.budgets)))
        except ConfigError:
            return None  # the budget string's own check names it
        if len(fractions) != len(widths):
            return (
                f"fractions has {len(fractions)} entries but budgets {cfg.budgets!r} have "
                f"{len(widths)} distinct widths; give one fraction per width, ascending"
            )
        if any(b < a for a, b in zip(fractions, fractions[1:], strict=False)):
            return f"fractions {list(fractions)} must not decrease with the budget width"
        return None

    def __init__(self, cfg: RunConfig, info: FederationInfo) -> None:
        super().__init__(cfg, info)
        if cfg.bn not in ("batch", "tracked"):
            raise ConfigError(f"fiarse supports bn batch or tracked, got {cfg.bn!r}")
        if cfg.adv.lam > 0.0:
            raise ConfigError("fiarse has no adversarial training; set adv.lam to 0")
        problem = self.check_config(cfg)
        if problem:
            raise ConfigError(f"methods.{cfg.method}.params: {problem}")
        if self.p["gradient"] not in GRADIENTS:
            raise ConfigError(f"fiarse gradient {self.p['gradient']!r}; use one of {GRADIENTS}")
        self.budget = BudgetWidths(cfg.budgets, "fiarse")
        self.widths: list[float] = self.budget.widths
        given = self.p["fractions"]
        fractions = default_fractions(self.widths) if given is None else [float(f) for f in given]
        self.fraction_of: dict[float, float] = dict(zip(self.widths, fractions, strict=True))
        self.client_widths = [
            self.budget.of_client(k, float(b)) for k, b in enumerate(info.budgets)
        ]
        self.surrogate = self.p["gradient"] == "surrogate"

    def fraction(self, width: float) -> float:
        """The fraction of parameters the model of budget width ``width`` keeps."""
        return self.fraction_of[self.budget.label(width, "fractions of parameters kept")]

    # ---- model and thresholds ------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_model(
            self.info.arch,
            width=1.0,
            norm=self.cfg.bn,
            num_classes=self.info.num_classes,
            input_size=self.info.input_shape[-1],
        )

    def _set_server(self, model: nn.Module) -> None:
        super()._set_server(model)
        self.maskable: list[str] = maskable_keys(model)
        self._thetas: dict[float, float] = {}

    def threshold(self, fraction: float) -> float:
        """The global model's threshold at ``fraction`` (cached until the server changes)."""
        theta = self._thetas.get(fraction)
        if theta is None:
            tensors = [self._server_state[k] for k in self.maskable]
            theta = self._thetas[fraction] = threshold(tensors, fraction)
        return theta

    def masks(self, fraction: float) -> dict[str, torch.Tensor]:
        """Key -> the global model's mask at ``fraction``."""
        theta = self.threshold(fraction)
        return {k: keep_mask(self._server_state[k], theta) for k in self.maskable}

    def end_aggregate(self) -> None:
        super().end_aggregate()
        self._thetas = {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._thetas = {}

    # ---- the verbs -----------------------------------------------------------------------------
    def plan(self, round_idx: int, clients: list[int], rng: np.random.Generator) -> list[Task]:
        return [Task(client=int(k), widths=(self.client_widths[k],)) for k in clients]

    def _theta(self, task: Task) -> float:
        return self.threshold(self.fraction(task.widths[0]))

    def download_bytes(self, task: Task, model: nn.Module | None = None) -> int:
        """The sub-model: the kept values with one bit of mask per maskable element, and every
        other (BN) tensor whole."""
        del model
        masks = self.masks(self.fraction(task.widths[0]))
        total = 0
        for key, t in self._server_state.items():
            if key in masks:
                total += int(masks[key].sum()) * t.element_size() + mask_nbytes(masks[key])
            else:
                total += t.numel() * t.element_size()
        return total

    def download(self, task: Task) -> nn.Module:
        """The global model with the elements below the round's threshold set to zero: the
        forward then computes ``w * mask`` as a plain model (and ``train_step`` keeps it so)."""
        model = super().download(task)
        self._keep(model, self._theta(task))
        return model

    def _keep(self, model: nn.Module, theta: float) -> dict[str, torch.Tensor]:
        """Zero, in place, every maskable element of ``model`` below ``theta``; the masks."""
        params = dict(model.named_parameters())
        masks = {}
        with torch.no_grad():
            for key in self.maskable:
                w = params[key]
                masks[key] = mask = keep_mask(w, theta)
                if theta > 0.0:
                    w.mul_(mask)
        return masks

    def train_step(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> float:
        """One batch through the masked model, the mask re-evaluated on the current weights (a
        kept weight that fell below the threshold in the last step drops out, set to zero), and
        the straight-through gradient: ``g * mask``, times ``1 + 2 theta |w| / (|w| + theta)^2``
        with ``gradient: surrogate`` (the same numbers as ``ThresholdMask``, in place)."""
        theta = self._theta(task)
        masks = self._keep(model, theta)
        loss = loss_fn(model(x), y)
        loss.backward()
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, mask in masks.items():
                grad = params[key].grad
                if grad is None or theta <= 0.0:
                    continue
                grad.mul_(mask)
                if self.surrogate:
                    a = params[key].abs()
                    grad.mul_(a.div(a.add(theta).square_()).mul_(2.0 * theta).add_(1.0))
        return float(loss.detach())

    def upload(self, task: Task, model: nn.Module) -> Update:
        """The values each maskable tensor kept at the end of the round, with the mask; the rest
        (BN) whole."""
        update = super().upload(task, model)
        theta = self._theta(task)
        for key in self.maskable:
            value = update.tensors[key]
            mask = keep_mask(value, theta)
            update.tensors[key] = value[mask]
            update.masks[key] = mask
        return update

    def eval_widths(self) -> list[float]:
        return list(self.widths)

    def assemble(
        self, width: float, lam: float | None = None, client: int | None = None
    ) -> nn.Module:
        """The global model masked at the width's fraction (zeros where masked), in eval mode;
        ``parameter_masks`` tells the cost counter which elements it holds. Shares the
        persistent eval copy: finish with one model before asking for the next."""
        masks = self.masks(self.fraction(width))
        model = self.eval_model(client)
        state = model.state_dict()
        with torch.no_grad():
            for key, mask in masks.items():
                state[key].mul_(mask)
        model.parameter_masks = masks
        return model

    def storage_nbytes(self, widths: list[float]) -> int:
        """Every element kept at any of the widths' fractions (the largest mask holds the others),
        and every BN tensor."""
        self._require_server()
        union = {k: torch.zeros_like(t, dtype=torch.bool) for k, t in self._server_state.items()}
        for width in widths:
            for key, mask in self.masks(self.fraction(width)).items():
                union[key] |= mask
        return sum(
            (int(union[k].sum()) if k in self.maskable else t.numel()) * t.element_size()
            for k, t in self._server_state.items()
        )

    def describe(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for w in self.client_widths:
            counts[f"{w:g}"] = counts.get(f"{w:g}", 0) + 1
        return {
            **super().describe(),
            "size_axis": "fraction of parameters kept",
            "fraction_per_width": {f"{w:g}": f for w, f in self.fraction_of.items()},
            "maskable_params": sum(self._server_state[k].numel() for k in self.maskable),
            "clients_per_budget": counts,
            "gradient": self.p["gradient"],
        }
