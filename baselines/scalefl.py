"""ScaleFL (Ilhan, Su, Liu, CVPR 2023; docs/methods.md#scalefl-baselinesscaleflpy): sub-models
scaled jointly in width and depth, with early-exit classifiers and self-distillation among them.

The global model is the architecture at full width cut into ``NUM_STAGES = 4`` stages with an
exit classifier after each (the last is the model's own head). A client of level k trains the
model at width ``level_widths[k]`` (every hidden layer keeps its first ``int(w * C)`` channels,
the prefix rule of the authors' code) and depth ``level_depths[k]`` (its first d stages and d
exits). An auxiliary exit is the authors' ``Classifier``: ``exit_convs`` times [3x3 conv of the
stage's width, BN, ReLU], global average pooling, a linear layer. On a client with exits
``z_1..z_L`` (its deepest exit ``z_L`` is the teacher) the loss is

    [ sum_{j<L} j * (CE(z_j) + kd(round) * T^2 * KL(softmax(z_L/T) || softmax(z_j/T)))
      + L * CE(z_L) ] / (L (L+1) / 2)

with ``kd(round) = kd_weight`` after the first ``kd_start`` of the rounds and 0 before, the KL
averaged over batch and classes (``nn.KLDivLoss``'s default) and the teacher not detached, all
as the authors' ``train.py`` does. A client uploads the prefix block of every tensor its sub-model
holds; the server averages each element over the clients that covered it (``MaskedAverage``). The
model of a level predicts with its deepest exit alone.

Budgets map to levels by rank, as DepthFL's depths: the k distinct budget widths, ascending, take
the last k levels, so 8-4-2-1 gives 1/8 -> level 1 ... 1 -> level 4 (the authors' levels 0.7/1,
0.7/2, 0.75/3, 1/4). The widths stay the labels of the levels in evaluation.

A level's model is a dense model of the level's width whose every tensor is the top-left block of
the global tensor of the same name (channel-major flatten keeps a linear layer's first inputs
those of the first channels), so a client runs, and is timed and exported as, a small model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.fedavg import check_bn
from splitmix.config import RunConfig
from splitmix.data.budgets import BudgetWidths, parse_widths
from splitmix.errors import ConfigError
from splitmix.fl.algorithm import FederationInfo, LossFn, Task, register
from splitmix.fl.base import ServerModelAlgorithm
from splitmix.fl.blocks import Block
from splitmix.models import build_model, make_norm
from splitmix.models.factory import seeded_init

NUM_STAGES = 4
SUPPORTED_ARCHS = ("digit", "preresnet18", "alexnet")


# ---- the model -----------------------------------------------------------------------------------
class ScaleNet(nn.Module):
    """``stages[i]`` then ``exits[i]`` gives exit i's logits; ``forward`` is the deepest exit's
    prediction (the early-exit model at this depth). State keys: ``stages.<i>.*``,
    ``exits.<i>.*``, those of the global model for the same layers."""

    def __init__(self, stages: Sequence[nn.Module], exits: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(stages) != len(exits) or not stages:
            raise ValueError(f"need one exit per stage, got {len(stages)} and {len(exits)}")
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(exits)
        self.slimmable = False  # a dense model: the cost counter counts what it holds

    @property
    def depth(self) -> int:
        return len(self.stages)

    def exit_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage, head in zip(self.stages, self.exits, strict=True):
            x = stage(x)
            outs.append(head(x))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.exits[-1](x)

    def truncated(self, depth: int) -> ScaleNet:
        """The first ``depth`` stages and exits (shared modules, no copy)."""
        if not 1 <= depth <= self.depth:
            raise ValueError(f"depth {depth} is outside 1..{self.depth}")
        return ScaleNet(list(self.stages[:depth]), list(self.exits[:depth]))


class ExitModel(nn.Module):
    """A deployed level: its stages and its deepest exit only, nothing it does not run. State
    keys ``stages.<i>.*`` and ``exit.*`` (``ScaleFL.state_view`` maps the latter)."""

    def __init__(self, stages: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.exit = head
        self.slimmable = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.exit(x)


def _stages(arch: str, m: nn.Module) -> tuple[list[nn.Module], nn.Module, bool]:
    """(the 4 stages, the model's own head, whether stage outputs are pre-activations) of a
    dense model of ``arch`` (the same cut as DepthFL's, docs/methods.md)."""
    if arch == "digit":
        stages = [
            nn.Sequential(m.conv1, m.bn1, nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(m.conv2, m.bn2, nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(m.conv3, m.bn3, nn.ReLU()),
            nn.Sequential(nn.Flatten(), m.fc1, m.bn4, nn.ReLU(), m.fc2, m.bn5, nn.ReLU()),
        ]
        return stages, m.fc3, False
    if arch == "preresnet18":
        stages = [nn.Sequential(m.conv1, *m.layer1), m.layer2, m.layer3, m.layer4]
        head = nn.Sequential(m.bn4, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), m.linear)
        return stages, head, True
    f, c = m.features, m.classifier
    stages = [f[0:10], f[10:18], f[18:23], nn.Sequential(m.avgpool, nn.Flatten(), c[0:8])]
    return stages, c.fc3, False


def exit_classifier(
    channels: int, num_classes: int, norm: str, convs: int, pre_act: bool
) -> nn.Sequential:
    """The authors' early-exit ``Classifier``: ``convs`` x [3x3 conv (no bias), BN, ReLU] at the
    stage's width and stride 1, global average pooling, a linear layer (after BN + ReLU first
    when the stage hands over a pre-activation)."""
    layers: list[nn.Module] = [make_norm(norm, channels, 2), nn.ReLU()] if pre_act else []
    for _ in range(convs):
        layers += [
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            make_norm(norm, channels, 2),
            nn.ReLU(),
        ]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


def build_scale_net(
    arch: str,
    width: float,
    *,
    norm: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    exit_convs: int,
    seed: int | None = None,
) -> ScaleNet:
    """The full-depth ScaleFL model of ``arch`` at ``width`` (init from torch's global RNG, or
    from ``seed`` without touching it)."""
    if arch not in SUPPORTED_ARCHS:
        raise ConfigError(
            f"scalefl has no stage split of arch {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}"
        )
    dense = build_model(
        arch, width=width, norm=norm, num_classes=num_classes, input_size=input_shape[-1],
        seed=seed,
    ).eval()  # fmt: skip
    stages, head, pre_act = _stages(arch, dense)
    channels = []  # what each stage hands its exit, read off a probe (eval: no statistics move)
    with torch.no_grad():
        x = torch.zeros((2, *input_shape))
        for stage in stages[:-1]:
            x = stage(x)
            channels.append(int(x.shape[1]))
    exits = seeded_init(
        None if seed is None else seed + 1,
        lambda: nn.ModuleList(
            exit_classifier(c, num_classes, norm, exit_convs, pre_act) for c in channels
        ),
    )
    dense.train()
    return ScaleNet(stages, [*exits, head])


# ---- the loss ------------------------------------------------------------------------------------
def self_distillation(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over batch and classes
    (``nn.KLDivLoss()``'s default, as the authors' code); the teacher is not detached. Zero when
    the two exits predict the same distribution."""
    t = float(temperature)
    log_student = F.log_softmax(student / t, dim=1)
    target = F.softmax(teacher / t, dim=1)
    # "mean" over every element, as nn.KLDivLoss()'s default (written out: torch warns on it)
    return F.kl_div(log_student, target, reduction="sum") / student.numel() * t * t


def scalefl_loss(
    logits: Sequence[torch.Tensor],
    y: torch.Tensor,
    loss_fn: LossFn,
    kd_weight: float,
    temperature: float,
) -> torch.Tensor:
    """Exit j (1-based) weighs j; the intermediate exits add ``kd_weight`` times their
    distillation from the deepest exit; the sum is divided by ``L (L+1) / 2``."""
    n = len(logits)
    teacher = logits[-1]
    loss = n * loss_fn(teacher, y)
    for j, z in enumerate(logits[:-1], start=1):
        term = loss_fn(z, y)
        if kd_weight > 0.0:
            term = term + kd_weight * self_distillation(z, teacher, temperature)
        loss = loss + j * term
    return loss / (n * (n + 1) / 2)


def levels_for_widths(widths: Sequence[float], num_levels: int) -> dict[float, int]:
    """Distinct budget widths, ascending, -> levels ``num_levels - k .. num_levels - 1``
    (0-based): the widest budget trains the last (full) level."""
    ws = sorted(set(float(w) for w in widths))
    return {w: num_levels - len(ws) + i for i, w in enumerate(ws)}


# ---- the method ----------------------------------------------------------------------------------
@register
class ScaleFL(ServerModelAlgorithm):
    """ScaleFL: client k trains level(R_k)'s width-and-depth sub-model (module docstring)."""

    name = "scalefl"
    params: ClassVar[dict[str, Any]] = {
        "level_widths": [0.7, 0.7, 0.75, 1.0],  # width of each level (the authors' defaults)
        "level_depths": [1, 2, 3, 4],  # exits (stages) of each level
        "kd_weight": 0.05,  # gamma of the distillation (authors: 0 by default, 0.05 where used)
        "temperature": 3.0,  # T of the distillation (authors' default)
        "kd_start": 0.25,  # distillation from this fraction of the rounds on (authors: 25%)
        "exit_convs": 3,  # conv layers of an auxiliary exit (authors' Classifier: 3)
    }
    param_rules: ClassVar[dict[str, dict[str, Any]]] = {
        "level_widths": {
            "description": "one width in (0, 1] per level",
            "type": "array",
            "minItems": 1,
            "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        },
        "level_depths": {
            "description": f"one depth (exits kept) in 1..{NUM_STAGES} per level",
            "type": "array",
            "minItems": 1,
            "items": {"type": "integer", "minimum": 1, "maximum": NUM_STAGES},
        },
        "kd_weight": {"description": "distillation weight, >= 0", "type": "number", "minimum": 0},
        "temperature": {
            "description": "distillation temperature, > 0",
            "type": "number",
            "exclusiveMinimum": 0,
        },
        "kd_start": {
            "description": "fraction of the rounds before distillation starts, in [0, 1]",
            "type": "number",
            "minimum": 0,
            "maximum": 1,
        },
        "exit_convs": {
            "description": "conv layers of an auxiliary exit, >= 0",
            "type": "integer",
            "minimum": 0,
        },
    }

    @classmethod
    def check_config(cls, cfg: RunConfig) -> str | None:
        p = cls.resolved_params(cfg.method_params)
        widths, depths = list(p["level_widths"]), list(p["level_depths"])
        if len(widths) != len(depths):
            return (
                f"level_widths has {len(widths)} entries and level_depths {len(depths)}; give one "
                "width and one depth per level"
            )
        try:
            budgets = sorted(set(parse_widths(cfg.budgets)))
        except ConfigError:
            return None  # the budget string's own check names it
        if len(budgets) > len(widths):
            return (
                f"budgets {cfg.budgets!r} have {len(budgets)} distinct widths but there are "
                f"{len(widths)} levels; give at least one level per budget width"
            )
        return None

    def __init__(self, cfg: RunConfig, info: FederationInfo) -> None:
        super().__init__(cfg, info)
        check_bn(cfg.bn)
        if cfg.adv.lam > 0.0:
            raise ConfigError("scalefl has no adversarial training; set adv.lam to 0")
        problem = self.check_config(cfg)
        if problem:
            raise ConfigError(f"methods.{cfg.method}.params: {problem}")
        if info.arch not in SUPPORTED_ARCHS:
            raise ConfigError(
                f"scalefl has no stage split of arch {info.arch!r}; supported: "
                f"{', '.join(SUPPORTED_ARCHS)}"
            )
        self.level_widths = [float(w) for w in self.p["level_widths"]]
        self.level_depths = [int(d) for d in self.p["level_depths"]]
        self.kd_weight = float(self.p["kd_weight"])
        self.temperature = float(self.p["temperature"])
        self.kd_start = float(self.p["kd_start"])
        self.budget = BudgetWidths(cfg.budgets, "scalefl")
        self.level_of = levels_for_widths(self.budget.widths, len(self.level_widths))
        self.widths = self.budget.widths
        self.client_widths = [
            self.budget.of_client(k, float(b)) for k, b in enumerate(info.budgets)
        ]
        self.client_levels = [self.level_of[w] for w in self.client_widths]

    def level_for_width(self, width: float) -> int:
        """The level (0-based) a budget width labels."""
        return self.level_of[self.budget.label(width, "labels of its levels")]

    # ---- models ------------------------------------------------------------------------------
    def _net(self, width: float, seed: int | None = None) -> ScaleNet:
        return build_scale_net(
            self.info.arch,
            width,
            norm=self.cfg.bn,
            num_classes=self.info.num_classes,
            input_shape=tuple(self.info.input_shape),
            exit_convs=int(self.p["exit_convs"]),
            seed=seed,
        )

    def build_model(self) -> nn.Module:
        return self._net(1.0)

    def _set_server(self, model: nn.Module) -> None:
        super()._set_server(model)
        self._level_nets: dict[int, ScaleNet] = {}  # one persistent running model per level
        self._level_blocks: dict[int, dict[str, Block]] = {}
        self._eval_models: dict[int, ExitModel] = {}

    def level_net(self, level: int) -> ScaleNet:
        """The persistent running model of ``level``: its width, truncated to its depth. Built
        with a fixed seed: its values are always overwritten from the server's blocks, and a lazy
        build must not move torch's global stream (exact resume)."""
        net = self._level_nets.get(level)
        if net is None:
            full = self._net(self.level_widths[level], seed=0).to(self.device)
            net = self._level_nets[level] = full.truncated(self.level_depths[level])
        return net

    def level_blocks(self, level: int) -> dict[str, Block]:
        """Server key -> the top-left block the level's model holds of it."""
        found = self._level_blocks.get(level)
        if found is None:
            state = self.level_net(level).state_dict()
            found = {k: tuple(slice(0, s) for s in t.shape) for k, t in state.items()}
            for key, block in found.items():
                full = self._server_state[key].shape
                shape_ok = len(full) == len(block)
                if not shape_ok or any(b.stop > n for b, n in zip(block, full, strict=True)):
                    raise ValueError(f"level {level} tensor {key!r} is not a block of {full}")
            self._level_blocks[level] = found
        return found

    def _task_level(self, task: Task) -> int:
        return int(task.payload["level"])

    def exchange_blocks(self, task: Task) -> dict[str, Block]:
        return self.level_blocks(self._task_level(task))

    def running_model(self, task: Task) -> nn.Module:
        return self.level_net(self._task_level(task))

    def state_view(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = model.state_dict()
        if isinstance(model, ExitModel):  # its one exit is the deepest exit of its level
            last = f"exits.{len(model.stages) - 1}."
            return {(last + k[5:] if k.startswith("exit.") else k): v for k, v in state.items()}
        return state

    # ---- the verbs -------------------------------------------------------------------------------
    def plan(self, round_idx: int, clients: list[int], rng: np.random.Generator) -> list[Task]:
        # the width is the client's budget, the label of its level (comm logs, evaluation)
        return [
            Task(
                client=int(k),
                widths=(self.client_widths[k],),
                round=int(round_idx),
                payload={"level": self.client_levels[k]},
            )
            for k in clients
        ]

    def kd_weight_at(self, round_idx: int) -> float:
        """The authors' switch: distillation only after the first ``kd_start`` of the rounds."""
        return self.kd_weight if round_idx > self.kd_start * self.cfg.rounds else 0.0

    def train_step(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> float:
        logits = model.exit_logits(x)
        loss = scalefl_loss(logits, y, loss_fn, self.kd_weight_at(task.round), self.temperature)
        loss.backward()
        return float(loss.detach())

    def eval_widths(self) -> list[float]:
        return list(self.widths)

    def _eval_model(self, level: int) -> ExitModel:
        model = self._eval_models.get(level)
        if model is None:
            net = copy.deepcopy(self.level_net(level))
            model = self._eval_models[level] = ExitModel(list(net.stages), net.exits[-1])
        return model

    def serving_blocks(self, width: float) -> dict[str, Block]:
        """The level's stages and its deepest exit: what its deployed model holds."""
        model = self._eval_model(self.level_for_width(width))
        blocks_ = self.level_blocks(self.level_for_width(width))
        return {k: blocks_[k] for k in self.state_view(model)}

    def assemble(
        self, width: float, lam: float | None = None, client: int | None = None
    ) -> nn.Module:
        """The level ``width`` labels: its stages and deepest exit at the level's width, in eval
        mode, with ``client``'s local BN (no dual BN: every lambda gives the same model). One
        persistent model per level: finish with one before asking for the same level again."""
        self._require_server()
        model = self._eval_model(self.level_for_width(width))
        self.load_client_state(model, client, self.serving_blocks(width))
        return model.eval()

    def describe(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for lv in self.client_levels:
            counts[str(lv + 1)] = counts.get(str(lv + 1), 0) + 1
        return {
            **super().describe(),
            "size_axis": "width x depth",
            "levels": [
                {"width": w, "depth": d}
                for w, d in zip(self.level_widths, self.level_depths, strict=True)
            ],
            "width_to_level": {f"{w:g}": lv + 1 for w, lv in self.level_of.items()},
            "clients_per_level": counts,
            "kd_weight": self.kd_weight,
            "kd_start_round": self.kd_start * self.cfg.rounds,
            "temperature": self.temperature,
        }
