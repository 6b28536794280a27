"""A tiny test-only Algorithm and a synthetic federation, so engine tests need no real method/data.

``ToyLinear`` is a linear classifier on flattened pixels. Its "width" ``w`` at evaluation keeps the
first ``ceil(w * D)`` input features, so different widths give different (checkable) results. It
instruments what the engine does: local steps per (round, client), whether the first optimizer step
of every client-round is plain SGD (a fresh optimizer), and the bytes of every upload.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from torch import nn

from splitmix.config import RunConfig, run_config_from_dict
from splitmix.data.clients import Client, Federation
from splitmix.fl.algorithm import Algorithm, FederationInfo, Task, Update, register
from splitmix.fl.schedule import lr_at

TOY = "toy-linear"


class _Masked(nn.Module):
    """Linear layer reading only the first ``keep`` input features."""

    def __init__(self, linear: nn.Linear, keep: int) -> None:
        super().__init__()
        self.linear = linear
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        mask = torch.zeros(flat.shape[1], dtype=flat.dtype)
        mask[: self.keep] = 1
        return self.linear(flat * mask)


@register
class ToyLinear(Algorithm):
    name = TOY
    params = {"noise": 0.05, "widths": (0.25, 1.0)}
    last: ToyLinear | None = None

    def __init__(self, cfg: RunConfig, info: FederationInfo) -> None:
        super().__init__(cfg, info)
        self.dim = int(np.prod(info.input_shape))
        self.round = -1
        self.steps: Counter[tuple[int, int]] = Counter()
        self.first_step_plain: list[bool] = []
        self.upload_bytes: dict[tuple[int, int], int] = {}
        self.aggregated_rounds = 0
        self.assembled: list[tuple[float, float | None, int | None]] = []
        ToyLinear.last = self  # the engine builds the instance; tests read its instrumentation

    def init_global(self, generator: torch.Generator) -> None:
        k = self.info.num_classes
        self.weight = torch.randn(k, self.dim, generator=generator) * 0.01
        self.bias = torch.zeros(k)

    def plan(self, round_idx: int, clients: list[int], rng: np.random.Generator) -> list[Task]:
        self.round = round_idx
        return [Task(client=k, widths=(1.0,)) for k in clients]

    def _linear(self) -> nn.Linear:
        lin = nn.Linear(self.dim, self.info.num_classes)
        with torch.no_grad():
            lin.weight.copy_(self.weight)
            lin.bias.copy_(self.bias)
        return lin

    def download(self, task: Task) -> nn.Module:
        model = self._linear().train()
        model.n_steps = 0  # instrumentation: steps taken on this download
        return model

    def _check_first_step(self, model: nn.Module) -> None:
        """After the first optimizer step of a fresh SGD: p1 = p0 - lr (g + wd p0) exactly."""
        p0, g0 = model.first
        lr, wd = lr_at(self.cfg, self.round), self.cfg.weight_decay
        expected = p0 - lr * (g0 + wd * p0)
        self.first_step_plain.append(torch.allclose(model.weight.detach(), expected, atol=1e-7))

    def train_step(self, model, task, x, y, loss_fn) -> float:
        if model.n_steps == 1:
            self._check_first_step(model)
        # torch global RNG: reproducible only if the engine seeds per (round, client)
        x = x + self.p["noise"] * torch.randn_like(x)
        loss = loss_fn(model(x.flatten(1)), y)
        loss.backward()
        if model.n_steps == 0:
            model.first = (model.weight.detach().clone(), model.weight.grad.detach().clone())
        model.n_steps += 1
        self.steps[(self.round, task.client)] += 1
        return loss.item()

    def upload(self, task: Task, model: nn.Module) -> Update:
        if model.n_steps == 1:
            self._check_first_step(model)
        up = Update({"weight": model.weight.detach().clone(), "bias": model.bias.detach().clone()})
        self.upload_bytes[(self.round, task.client)] = up.nbytes()
        return up

    def aggregate(self, updates: list[tuple[Task, Update, float]]) -> None:
        total = sum(w for _, _, w in updates)
        self.weight = sum(u.tensors["weight"] * (w / total) for _, u, w in updates)
        self.bias = sum(u.tensors["bias"] * (w / total) for _, u, w in updates)
        self.aggregated_rounds += 1

    def eval_widths(self) -> list[float]:
        return list(self.p["widths"])

    def assemble(self, width: float, lam: float | None = None, client: int | None = None):
        self.assembled.append((width, lam, client))
        return _Masked(self._linear(), math.ceil(width * self.dim)).eval()

    def state_dict(self) -> dict:
        return {
            "weight": self.weight.clone(),
            "bias": self.bias.clone(),
            "aggregated_rounds": self.aggregated_rounds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.weight = state["weight"].clone()
        self.bias = state["bias"].clone()
        self.aggregated_rounds = state["aggregated_rounds"]

    def describe(self) -> dict:
        return {"toy": True}


def toy_federation(
    num_clients: int = 4,
    n_train: tuple[int, ...] = (37, 20, 50, 9),
    n_val: int = 16,
    num_classes: int = 4,
    shape: tuple[int, int, int] = (3, 4, 4),
    seed: int = 0,
) -> Federation:
    """Random uint8 images with a learnable signal: each class has its own mean pattern."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(40, 216, (num_classes, *shape), generator=g).float()

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = protos[y] + 25 * torch.randn(n, *shape, generator=g)
        return x.clamp(0, 255).to(torch.uint8), y

    sizes = [n_train[i % len(n_train)] for i in range(num_clients)]
    clients = []
    for i, n in enumerate(sizes):
        tx, ty = draw(n)
        vx, vy = draw(n_val)
        sx, sy = draw(n_val)
        clients.append(
            Client(
                index=i,
                name=f"toy-{i}",
                domain="toy",
                train_x=tx,
                train_y=ty,
                val_x=vx,
                val_y=vy,
                test_x=sx,
                test_y=sy,
                budget=1.0,
                weight=n / sum(sizes),
            )
        )
    return Federation(
        dataset="toy",
        split="toy",
        domains=("toy",),
        num_classes=num_classes,
        input_shape=shape,
        clients=clients,
    )


def toy_config(**overrides) -> RunConfig:
    """A RunConfig for the toy: a few fast rounds, no augmentation, explicit arch; its method
    parameters resolved over the toy's defaults, as a run resolved from a config file is."""
    values = {
        "dataset": "toy",
        "split": "toy",
        "method": "toy",
        "algorithm": TOY,
        "arch": "toy",
        "augment": "none",
        "rounds": 6,
        "batch_size": 8,
        "test_batch_size": 16,
        "lr": 0.1,
        "lr_schedule": "cos",
        "checkpoint_every": 2,
        "threads": 1,
        "split_config": {"kind": "iid"},
    }
    values.update(overrides)
    from splitmix.methods import resolve_params

    return resolve_params(run_config_from_dict(values))


def accept_toy_runs(monkeypatch) -> None:
    """Let the CLI resolve runs of the toy dataset and model: those are test-only names that
    run-config validation rightly refuses (tests elsewhere check that validation)."""
    import splitmix.experiment as experiment

    monkeypatch.setattr(experiment, "validate_run", lambda cfg, source="", check_device=True: cfg)
