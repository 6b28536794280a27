"""DepthFL (Kim et al., ICLR 2023; docs/methods.md#depthfl-baselinesdepthflpy): depth-scaled
sub-models with mutual self-distillation among the classifiers of a local model.

The global model is cut into ``D = 4`` stages with a classifier ("exit") after each; the last
exit is the model's own head. A client whose budget maps to depth ``d`` trains the first ``d``
stages and their ``d`` exits (and never computes the deeper stages), minimising

    L = sum_i CE(z_i, y) + kd(round) * T^2 / (d-1) * sum_i sum_{j != i} KL(p_j || p_i)

over its exits' logits ``z_1..z_d`` (``p = softmax(z / T)``, the target ``p_j`` detached), and
uploads the whole tensors of its stages and exits; the server averages every tensor over the
clients that hold it (``MaskedAverage`` keeps tensors nobody held). The model of depth ``d``
predicts with the mean of its ``d`` exits' logits.

Budgets map to depths by rank: the distinct widths of the budget string, ascending, take the
depths ``D-k+1 .. D`` (k distinct widths), so the widest budget always trains the full model and
8-4-2-1 gives 1/8 -> 1, 1/4 -> 2, 1/2 -> 3, 1 -> 4. The widths stay the labels of the depths in
evaluation (``eval_widths``/``assemble``), so every table and figure places a depth where the
width methods put their budget level. The mapping is ordinal, not cost-matched: the FLOPs of each
depth are measured by the evaluation, as for widths.

The depth split of each architecture reuses that architecture's own layers (built by
``splitmix.models.build_model`` at width 1) so the full-depth model's last exit computes exactly
the plain model; only the auxiliary exits are new (``_aux_exit``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.fedavg import check_bn
from splitmix.config import RunConfig
from splitmix.data.budgets import BudgetWidths
from splitmix.errors import ConfigError
from splitmix.fl.algorithm import FederationInfo, LossFn, Task, register
from splitmix.fl.base import ServerModelAlgorithm
from splitmix.models import build_model, make_norm

NUM_STAGES = 4
SUPPORTED_ARCHS = ("digit", "preresnet18", "alexnet")


# ---- the model -----------------------------------------------------------------------------------
class DepthNet(nn.Module):
    """``stages[i]`` then ``exits[i]`` gives classifier i's logits; the module's output is the mean
    of the logits of all its exits (the DepthFL ensemble). ``truncated(d)`` is the depth-``d``
    model: a module holding (sharing, not copying) the first ``d`` stages and exits, whose state
    keys are the server's keys of those layers."""

    def __init__(
        self,
        stages: Sequence[nn.Module],
        exits: Sequence[nn.Module],
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
    ) -> None:
        super().__init__()
        if len(stages) != len(exits) or not stages:
            raise ValueError(f"need one exit per stage, got {len(stages)} and {len(exits)}")
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(exits)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(input_shape)
        self.slimmable = False  # the cost counter then counts every parameter the module holds

    @property
    def depth(self) -> int:
        return len(self.stages)

    def exit_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits of every exit, shallowest first (one pass through the stages)."""
        outs = []
        for stage, head in zip(self.stages, self.exits, strict=True):
            x = stage(x)
            outs.append(head(x))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble(self.exit_logits(x))

    def truncated(self, depth: int) -> DepthNet:
        if not 1 <= depth <= self.depth:
            raise ValueError(f"depth {depth} is outside 1..{self.depth}")
        return DepthNet(
            list(self.stages[:depth]),
            list(self.exits[:depth]),
            num_classes=self.num_classes,
            input_shape=self.input_shape,
        )


def ensemble(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """DepthFL's prediction: the mean of the exits' logits (Flower's ``test``: sum / count)."""
    return logits[0] if len(logits) == 1 else torch.stack(list(logits)).mean(0)


def _sep_conv(cin: int, cout: int, norm: str) -> nn.Sequential:
    """The bottleneck block of the auxiliary exits (Be-Your-Own-Teacher's SepConv, as in
    Flower's DepthFL ResNet): depthwise 3x3 stride 2, pointwise, norm, ReLU, depthwise 3x3,
    pointwise to ``cout``, norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False),
        nn.Conv2d(cin, cin, 1, bias=False),
        make_norm(norm, cin, 2),
        nn.ReLU(),
        nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
        make_norm(norm, cout, 2),
        nn.ReLU(),
    )


def _aux_exit(
    channels: Sequence[int], num_classes: int, norm: str, *, pre_act: bool = False
) -> nn.Sequential:
    """An auxiliary classifier: one SepConv per step of ``channels`` (its first entry is the
    stage's output channels), global average pooling, a linear layer. ``pre_act``: the stage
    output is a pre-activation (PreResNet), so the exit starts with norm + ReLU as the model's
    own head does."""
    layers: list[nn.Module] = []
    if pre_act:
        layers += [make_norm(norm, channels[0], 2), nn.ReLU()]
    for cin, cout in zip(channels[:-1], channels[1:], strict=True):
        layers.append(_sep_conv(cin, cout, norm))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], num_classes)]
    return nn.Sequential(*layers)


def _digit_split(m: nn.Module, norm: str, k: int) -> tuple[list[nn.Module], list[nn.Module]]:
    """DigitModel: conv1 | conv2 | conv3 | fc1, fc2 -> exit fc3 (docs/methods.md#depthfl)."""
    stages = [
        nn.Sequential(m.conv1, m.bn1, nn.ReLU(), nn.MaxPool2d(2)),  # 64 x 14 x 14
        nn.Sequential(m.conv2, m.bn2, nn.ReLU(), nn.MaxPool2d(2)),  # 64 x 7 x 7
        nn.Sequential(m.conv3, m.bn3, nn.ReLU()),  # 128 x 7 x 7
        nn.Sequential(nn.Flatten(), m.fc1, m.bn4, nn.ReLU(), m.fc2, m.bn5, nn.ReLU()),
    ]
    exits = [
        _aux_exit((64, 128), k, norm),
        _aux_exit((64, 128), k, norm),
        _aux_exit((128, 128), k, norm),
        m.fc3,
    ]
    return stages, exits


def _preresnet_split(m: nn.Module, norm: str, k: int) -> tuple[list[nn.Module], list[nn.Module]]:
    """PreResNet-18: stem + layer1 | layer2 | layer3 | layer4 -> exit bn4, pool, linear. Aux exits
    raise the channels to 512 with one SepConv per remaining stage, as Flower's DepthFL ResNet."""
    stages = [nn.Sequential(m.conv1, *m.layer1), m.layer2, m.layer3, m.layer4]
    final = nn.Sequential(m.bn4, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), m.linear)
    exits = [
        _aux_exit((64, 128, 256, 512), k, norm, pre_act=True),
        _aux_exit((128, 256, 512), k, norm, pre_act=True),
        _aux_exit((256, 512), k, norm, pre_act=True),
        final,
    ]
    for head in exits[:-1]:  # the PreResNet init: linear bias 0 (BN weight 1 / bias 0: default)
        nn.init.zeros_(head[-1].bias)
    return stages, exits


def _alexnet_split(m: nn.Module, norm: str, k: int) -> tuple[list[nn.Module], list[nn.Module]]:
    """AlexNet: conv1, conv2 | conv3, conv4 | conv5 | pool, fc1, fc2 -> exit fc3."""
    f, c = m.features, m.classifier
    stages = [
        f[0:10],  # conv1 .. maxpool2: 192 channels
        f[10:18],  # conv3, conv4: 256
        f[18:23],  # conv5, maxpool5: 256
        nn.Sequential(m.avgpool, nn.Flatten(), c[0:8]),  # fc1 .. relu7: 4096
    ]
    exits = [
        _aux_exit((192, 256), k, norm),
        _aux_exit((256, 256), k, norm),
        _aux_exit((256, 256), k, norm),
        c.fc3,
    ]
    return stages, exits


_SPLITS = {"digit": _digit_split, "preresnet18": _preresnet_split, "alexnet": _alexnet_split}


def build_depth_net(
    arch: str, *, norm: str, num_classes: int, input_shape: tuple[int, int, int]
) -> DepthNet:
    """The full-depth DepthFL model of ``arch`` (init from torch's global RNG)."""
    if arch not in _SPLITS:
        raise ConfigError(
            f"depthfl has no depth split of arch {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}"
        )
    plain = build_model(
        arch, width=1.0, norm=norm, num_classes=num_classes, input_size=input_shape[-1]
    )
    stages, exits = _SPLITS[arch](plain, norm, num_classes)
    return DepthNet(stages, exits, num_classes=num_classes, input_shape=input_shape)


# ---- the loss ------------------------------------------------------------------------------------
def mutual_distillation(logits: Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """``T^2 / (n-1) * sum_i sum_{j != i} KL(p_j || p_i)`` with ``p = softmax(z / T)``, batch
    mean; each target ``p_j`` is detached (Flower's ``KLLoss``), so exit i only learns from the
    others. Zero for a single exit or when all exits agree."""
    n = len(logits)
    if n < 2:
        return logits[0].new_zeros(())
    t = float(temperature)
    logp = [F.log_softmax(z / t, dim=1) for z in logits]
    targets = [lp.detach() for lp in logp]
    total = logits[0].new_zeros(())
    for i in range(n):
        for j in range(n):
            if i != j:
                kl = F.kl_div(logp[i], targets[j], reduction="batchmean", log_target=True)
                total = total + kl
    return total * (t * t / (n - 1))


def depthfl_loss(
    logits: Sequence[torch.Tensor],
    y: torch.Tensor,
    loss_fn: LossFn,
    kd_weight: float,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Sum over exits of the task loss, plus ``kd_weight`` times the mutual distillation."""
    loss = sum((loss_fn(z, y) for z in logits), logits[0].new_zeros(()))
    if kd_weight > 0.0 and len(logits) > 1:
        loss = loss + kd_weight * mutual_distillation(logits, temperature)
    return loss


def consistency_weight(round_idx: int, rampup_rounds: float, weight: float) -> float:
    """Flower's ramp-up of the distillation weight: ``weight * exp(-5 (1 - r/R)^2)`` for round
    ``r < R`` (0-based), ``weight`` from round R on (R <= 0: no ramp)."""
    if rampup_rounds <= 0:
        return float(weight)
    phase = 1.0 - min(float(round_idx), rampup_rounds) / rampup_rounds
    return float(weight) * math.exp(-5.0 * phase * phase)


def depths_for_widths(widths: Sequence[float], num_stages: int = NUM_STAGES) -> dict[float, int]:
    """Distinct widths, ascending, -> depths ``num_stages - k + 1 .. num_stages``."""
    ws = sorted(set(float(w) for w in widths))
    if len(ws) > num_stages:
        raise ConfigError(
            f"depthfl maps each distinct budget width to a depth, but the budgets have {len(ws)} "
            f"widths and the model {num_stages} stages; use at most {num_stages} widths "
            "(e.g. budgets 8-4-2-1)"
        )
    return {w: num_stages - len(ws) + 1 + i for i, w in enumerate(ws)}


# ---- the method ----------------------------------------------------------------------------------
@register
class DepthFL(ServerModelAlgorithm):
    """DepthFL: client k trains the first depth(R_k) stages and exits (see module docstring)."""

    name = "depthfl"
    params: ClassVar[dict[str, Any]] = {
        "kd_weight": 1.0,  # distillation weight after the ramp-up (0: no self-distillation)
        "kd_rampup": 0.3,  # ramp-up length as a fraction of the run's rounds (Flower: 300/1000)
        "temperature": 1.0,  # softmax temperature of the distillation (Flower: 1)
    }
    # checked with every config before any job (splitmix.config); __init__ checks the same for
    # callers that build the method directly
    param_rules: ClassVar[dict[str, dict[str, Any]]] = {
        "kd_weight": {"description": "distillation weight, >= 0", "type": "number", "minimum": 0},
        "kd_rampup": {
            "description": "ramp-up length as a fraction of the rounds, >= 0",
            "type": "number",
            "minimum": 0,
        },
        "temperature": {
            "description": "distillation temperature, > 0",
            "type": "number",
            "exclusiveMinimum": 0,
        },
    }

    def __init__(self, cfg: RunConfig, info: FederationInfo) -> None:
        super().__init__(cfg, info)
        check_bn(cfg.bn)
        if cfg.adv.lam > 0.0:
            raise ConfigError("depthfl has no adversarial training; set adv.lam to 0")
        if info.arch not in SUPPORTED_ARCHS:
            raise ConfigError(
                f"depthfl has no depth split of arch {info.arch!r}; supported: "
                f"{', '.join(SUPPORTED_ARCHS)}"
            )
        self.kd_weight = self._number("kd_weight", minimum=0.0)
        self.kd_rampup = self._number("kd_rampup", minimum=0.0)
        self.temperature = self._number("temperature", minimum=0.0, strict=True)
        self.budget = BudgetWidths(cfg.budgets, "depthfl")
        self.depth_of: dict[float, int] = depths_for_widths(self.budget.widths)
        self.widths: list[float] = self.budget.widths
        self.client_widths: list[float] = [
            self.budget.of_client(k, float(b)) for k, b in enumerate(np.asarray(info.budgets))
        ]
        self.client_depths: list[int] = [self.depth_of[w] for w in self.client_widths]

    def _number(self, key: str, *, minimum: float, strict: bool = False) -> float:
        value = self.p[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not (value > minimum if strict else value >= minimum):
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise ConfigError(f"depthfl parameter {key}={value!r} must be a number {bound}")
        return float(value)

    def depth_for_width(self, width: float) -> int:
        """The depth a budget width labels (evaluation's "width")."""
        return self.depth_of[self.budget.label(width, f"labels of depths 1..{NUM_STAGES}")]

    # ---- model -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_depth_net(
            self.info.arch,
            norm=self.cfg.bn,
            num_classes=self.info.num_classes,
            input_shape=tuple(self.info.input_shape),
        )

    def _set_server(self, model: nn.Module) -> None:
        super()._set_server(model)
        # caches derived from the server's architecture (rebuilt if init_global runs again)
        self._depth_keys: dict[int, dict[str, None]] = {}
        self._running_views: dict[int, DepthNet] = {}

    def depth_blocks(self, depth: int) -> dict[str, None]:
        """The server keys of the depth-``depth`` model, whole tensors (its stages and exits)."""
        keys = self._depth_keys.get(depth)
        if keys is None:
            keys = dict.fromkeys(self.server.truncated(depth).state_dict())
            self._depth_keys[depth] = keys
        return keys

    def task_depth(self, task: Task) -> int:
        """``payload["depth"]`` as ``plan`` sets it; else the depth its width labels."""
        depth = task.payload.get("depth")
        return int(depth) if depth is not None else self.depth_for_width(task.widths[0])

    def exchange_blocks(self, task: Task) -> dict[str, None]:
        return self.depth_blocks(self.task_depth(task))

    def running_model(self, task: Task) -> nn.Module:
        """The depth-d view of the one persistent running copy: its parameters are exactly the
        trained ones (the optimizer sees no others) and its forward stops at stage d."""
        full = super().running_model(task)
        depth = self.task_depth(task)
        view = self._running_views.get(depth)
        if view is None:
            view = self._running_views[depth] = full.truncated(depth)
        return view

    # ---- the verbs ---------------------------------------------------------------------------
    def plan(self, round_idx: int, clients: list[int], rng: np.random.Generator) -> list[Task]:
        # the width is the client's budget, the label of its depth (comm logs, evaluation)
        return [
            Task(
                client=int(k),
                widths=(self.client_widths[k],),
                round=int(round_idx),
                payload={"depth": self.client_depths[k]},
            )
            for k in clients
        ]

    def kd_weight_at(self, round_idx: int) -> float:
        return consistency_weight(round_idx, self.kd_rampup * self.cfg.rounds, self.kd_weight)

    def train_step(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> float:
        logits = model.exit_logits(x)
        loss = depthfl_loss(logits, y, loss_fn, self.kd_weight_at(task.round), self.temperature)
        loss.backward()
        return float(loss.detach())

    def eval_widths(self) -> list[float]:
        return list(self.widths)

    def assemble(
        self, width: float, lam: float | None = None, client: int | None = None
    ) -> nn.Module:
        """The depth model ``width`` labels, in eval mode, with ``client``'s local BN (``lam``:
        no dual BN here, every lambda gives the same model). Shares one persistent eval copy:
        finish with one assembled model before asking for the next."""
        self._require_server()
        depth = self.depth_for_width(width)
        if self._eval is None:
            self._eval = copy.deepcopy(self.server)
        self.load_client_state(self._eval, client, self.depth_blocks(depth))
        return self._eval.truncated(depth).eval()

    def serving_blocks(self, width: float) -> dict[str, None]:
        """The stages and exits of the depth ``width`` labels: serving every depth stores the
        deepest model."""
        return self.depth_blocks(self.depth_for_width(width))

    def describe(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for d in self.client_depths:
            counts[str(d)] = counts.get(str(d), 0) + 1
        state = self._server_state
        return {
            **super().describe(),
            "size_axis": "depth",
            "num_stages": NUM_STAGES,
            "width_to_depth": {f"{w:g}": d for w, d in self.depth_of.items()},
            "clients_per_depth": counts,
            "state_numel_per_depth": {
                f"{w:g}": sum(state[k].numel() for k in self.depth_blocks(d))
                for w, d in self.depth_of.items()
            },
            "kd_weight": self.kd_weight,
            "kd_rampup_rounds": self.kd_rampup * self.cfg.rounds,
            "temperature": self.temperature,
        }
