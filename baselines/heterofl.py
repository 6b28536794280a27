"""HeteroFL and SHeteroFL (docs/paper.md#heterofl): one slimmable model whose width-r sub-network is
the prefix ``[:ceil(r*C)]`` of every layer.

* ``heterofl``: client k trains only its budget width R_k;
* ``sheterofl``: client k trains every width <= R_k each step, ascending, one backward per width
  (gradients accumulate into the shared weights; the engine then takes one step).

A client uploads the prefix blocks of width R_k (plus, with tracked/local BN, the private BN of
every width it trained); the server averages each entry over the clients that covered it, so wider
clients alone shape the outer channels. Train and eval widths are the distinct widths of the
budget string.

Aggregation weight (``sheterofl``'s ``weighting`` parameter, docs/methods.md):

* ``per_width`` (default, the original's): the original accumulator adds a client's upload once
  per width it trained (``fed_hfl.py`` passes one zero shift per width, and every pass adds the
  whole width-R_k prefix with weight w_k), so client k weighs ``w_k * len(widths)`` on every
  entry it uploads. Wide clients dominate the shared inner channels; the paper's numbers come
  from this rule.
* ``per_client``: client k weighs ``w_k`` (HeteroFL's parameter-wise average).

Either way the upload is one model on the wire: bytes count each entry once.

Speed: a client that trains ONE width runs a dense model of that width holding exactly its blocks
(HeteroFL's sub-model extraction). Training the full slimmable model at width 1/8 would compute
full-size gradients and optimizer updates (zeros outside the block) - about 10x slower on a CPU.
The dense stand-in is used only where it is checked once to compute the same function as the
slimmable sub-network (every paper width); otherwise the slimmable model is used. A client that
trains SEVERAL widths (SHeteroFL, FjORD) below the widest runs the slimmable model cut to its
budget prefix (``shrink_to_prefix``, checked the same way): before, its gradients and SGD steps
covered the whole 14M-parameter model (SHeteroFL trained 1.78x slower than a bare loop,
``benchmarks/bench_reference.py``).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from baselines.fedavg import check_bn
from splitmix.config import RunConfig
from splitmix.data.budgets import parse_widths
from splitmix.errors import ConfigError
from splitmix.fl.adversarial import adversarial_loss
from splitmix.fl.aggregate import Block
from splitmix.fl.algorithm import FederationInfo, LossFn, Task, Update, register
from splitmix.fl.base import ServerModelAlgorithm
from splitmix.models import build_model, dense_state, prefix_blocks

_TOL = 1e-9
WEIGHTINGS = ("per_width", "per_client")


def _match(width: float, widths: list[float]) -> float | None:
    for w in widths:
        if abs(w - width) < 1e-6:
            return w
    return None


def shrink_to_prefix(model: nn.Module, width: float) -> nn.Module:
    """In place: cut every tensor of slimmable ``model`` that the width-``width`` network slices
    to that prefix block, and return ``model``.

    The layers keep their full-width channel counts (``ceil(p*C)`` of the FULL ``C``) and only
    read ``weight[:ceil(p*C), ...]``, so every width ``p <= width`` still computes the global
    model's width-p function; wider widths no longer fit. Tensors of other widths' private BN
    (tracked BN) are not in the block map and stay as they are, unused.
    """
    for key, block in prefix_blocks(model, width).items():
        owner_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_name)
        tensor = getattr(owner, attr)
        part = tensor.detach()[block]
        if part.shape == tensor.shape:
            continue
        if isinstance(tensor, nn.Parameter):
            setattr(owner, attr, nn.Parameter(part.clone(), requires_grad=tensor.requires_grad))
        else:
            owner.register_buffer(attr, part.clone())
    return model


class _Dense:
    """A dense model standing in for the width-``w`` prefix sub-network, with its key map."""

    def __init__(self, model: nn.Module, keymap: dict[str, str]) -> None:
        self.model = model
        self.keymap = keymap  # server (slimmable) key -> dense key


@register
class HeteroFL(ServerModelAlgorithm):
    """HeteroFL: each client trains its budget width only (see module docstring)."""

    name = "heterofl"
    params: ClassVar[dict[str, Any]] = {}
    train_all_widths: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, info: FederationInfo) -> None:
        super().__init__(cfg, info)
        check_bn(cfg.bn)
        self.widths: list[float] = sorted(set(parse_widths(cfg.budgets)))
        self.client_widths: list[tuple[float, ...]] = [
            self._widths_for(k, float(b)) for k, b in enumerate(np.asarray(info.budgets))
        ]
        self._blocks: dict[tuple[float, ...], dict[str, Block]] = {}
        self._dense: dict[float, _Dense | None] = {}
        self._budget_models: dict[float, nn.Module | None] = {}
        self.weighting: str = self._check_weighting(self.p.get("weighting", "per_client"))

    def _check_weighting(self, value: Any) -> str:
        if value not in WEIGHTINGS:
            raise ConfigError(
                f"method {self.cfg.method!r}: weighting={value!r} is not one of "
                f"{', '.join(WEIGHTINGS)}; use per_width (the original's) or per_client"
            )
        return str(value)

    def contribution_weight(self, task: Task, weight: float) -> float:
        """Aggregation weight of ``task``'s upload: the client weight, times the number of widths
        it trained under ``per_width`` (the original adds the upload once per trained width)."""
        return weight * len(task.widths) if self.weighting == "per_width" else weight

    def _widths_for(self, client: int, budget: float) -> tuple[float, ...]:
        top = _match(budget, self.widths)
        if top is None:
            raise ConfigError(
                f"client {client} has budget {budget:g}, not one of the widths of budgets="
                f"{self.cfg.budgets!r} ({', '.join(f'{w:g}' for w in self.widths)})"
            )
        if not self.train_all_widths:
            return (top,)
        return tuple(w for w in self.widths if w <= top + _TOL)

    # ---- model -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_model(
            self.info.arch,
            slimmable=True,
            widths=tuple(self.widths),
            norm=self.cfg.bn,
            num_classes=self.info.num_classes,
            input_size=self.info.input_shape[-1],
        )

    def _set_server(self, model: nn.Module) -> None:
        super()._set_server(model)
        # caches derived from the server's architecture (rebuilt if init_global runs again)
        self._blocks = {}
        self._dense = {}
        self._budget_models = {}

    def exchange_blocks(self, task: Task) -> dict[str, Block]:
        return self.width_blocks(task.widths)

    def width_blocks(self, widths: tuple[float, ...]) -> dict[str, Block]:
        """Union of the prefix blocks of ``widths``; a shared tensor gets the widest block."""
        blocks = self._blocks.get(widths)
        if blocks is None:
            blocks = {}
            for w in sorted(widths):  # later (wider) blocks contain earlier ones
                blocks.update(prefix_blocks(self.server, w))
            self._blocks[widths] = blocks
        return blocks

    def dense_for(self, width: float) -> _Dense | None:
        """The verified dense stand-in of width ``width``, or None where none computes the same
        function as the slimmable sub-network."""
        if width not in self._dense:
            self._dense[width] = self._make_dense(width)
        return self._dense[width]

    def _make_dense(self, width: float) -> _Dense | None:
        # seed=0: building must not consume the global RNG (the engine seeds it per client; a
        # lazily built model would otherwise shift one client's stream and break exact resume).
        try:
            dense = build_model(
                self.info.arch,
                width=width,
                slimmable=False,
                norm=self.cfg.bn,
                rescale_init=False,
                rescale_layer=True,  # the Scaler (/width in training) of the slimmable layers
                num_classes=self.info.num_classes,
                input_size=self.info.input_shape[-1],
                seed=0,
            ).to(self.device)
        except ConfigError:
            return None
        blocks = prefix_blocks(self.server, width)
        dkeys = list(dense_state(self.server, width))
        dstate = dense.state_dict()
        if len(dkeys) != len(blocks) or set(dkeys) != set(dstate):
            return None
        keymap = dict(zip(blocks, dkeys, strict=True))
        for key, block in blocks.items():
            if dstate[keymap[key]].shape != self._server_state[key][block].shape:
                return None
        stand_in = _Dense(dense, keymap)
        return stand_in if self._same_function(stand_in, width) else None

    def _same_function(self, stand_in: _Dense, width: float) -> bool:
        """One-off check on copies: train- and eval-mode outputs of the dense model equal those
        of the slimmable sub-network (catches a Scaler placed differently in some arch)."""
        slim = copy.deepcopy(self.server)
        slim.set_width(width)
        dense = copy.deepcopy(stand_in.model)
        dstate = dense.state_dict()
        sstate = slim.state_dict()
        with torch.no_grad():
            for key, block in prefix_blocks(slim, width).items():
                dstate[stand_in.keymap[key]].copy_(sstate[key][block])
        g = torch.Generator().manual_seed(0)
        x = torch.rand((4, *self.info.input_shape), generator=g).to(self.device)
        with torch.no_grad():
            for train in (True, False):
                slim.train(train)
                dense.train(train)
                if not torch.allclose(slim(x), dense(x), rtol=1e-4, atol=1e-5):
                    return False
        return True

    def running_model(self, task: Task) -> nn.Module:
        """One width: the dense stand-in; several widths below the widest: the slimmable model
        cut to the budget prefix (gradients and SGD touch only the client's blocks, ~3x faster
        for a 1/4 or 1/2 client than the full model); else the full persistent copy."""
        if len(task.widths) == 1:
            stand_in = self.dense_for(task.widths[0])
            if stand_in is not None:
                return stand_in.model
        elif task.widths:
            model = self.budget_model(max(task.widths))
            if model is not None:
                return model
        return super().running_model(task)

    def budget_model(self, budget: float) -> nn.Module | None:
        """The persistent slimmable model cut to the width-``budget`` prefix, or None where the
        full model is needed (the widest budget) or the cut model fails its one-off check."""
        if budget >= self.widths[-1] - _TOL:
            return None
        if budget not in self._budget_models:
            model = shrink_to_prefix(copy.deepcopy(self.server), budget)
            allowed = tuple(w for w in self.widths if w <= budget + _TOL)
            self._budget_models[budget] = model if self._same_as_server(model, allowed) else None
        return self._budget_models[budget]

    def _same_as_server(self, model: nn.Module, widths: tuple[float, ...]) -> bool:
        """One-off check on copies: at every width, train- and eval-mode outputs of ``model``
        equal the server's sub-network (guards an architecture that reads a tensor's own shape)."""
        server, cut = copy.deepcopy(self.server), copy.deepcopy(model)
        g = torch.Generator().manual_seed(0)
        dtype = next(server.parameters()).dtype  # float64 in the tests that need exact maths
        x = torch.rand((4, *self.info.input_shape), generator=g).to(self.device, dtype)
        with torch.no_grad():
            for w in widths:
                server.set_width(w)
                cut.set_width(w)
                for train in (True, False):
                    server.train(train)
                    cut.train(train)
                    try:
                        same = torch.allclose(server(x), cut(x), rtol=1e-4, atol=1e-5)
                    except RuntimeError:  # a shape mismatch inside the cut model
                        same = False
                    if not same:
                        return False
        return True

    def state_view(self, model: nn.Module) -> dict[str, torch.Tensor]:
        for stand_in in self._dense.values():
            if stand_in is not None and stand_in.model is model:
                dstate = model.state_dict()
                return {k: dstate[dk] for k, dk in stand_in.keymap.items()}
        return model.state_dict()

    # ---- the verbs ---------------------------------------------------------------------------
    def accumulate(self, task: Task, update: Update, weight: float) -> None:
        super().accumulate(task, update, self.contribution_weight(task, weight))

    def plan(self, round_idx: int, clients: list[int], rng: np.random.Generator) -> list[Task]:
        return [Task(client=int(k), widths=self.client_widths[k]) for k in clients]

    def train_step(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> float:
        slimmable = getattr(model, "slimmable", False)
        total = 0.0
        for w in task.widths:  # ascending; gradients of all widths accumulate
            if slimmable:
                model.set_width(w)
            if self.cfg.adv.lam > 0.0:
                loss = adversarial_loss(model, x, y, self.cfg.adv, loss_fn)
            else:
                loss = loss_fn(model(x), y)
            loss.backward()
            total += float(loss.detach())
        return total

    def batchable(self, task: Task) -> bool:
        """A one-width task on its dense stand-in steps plainly (SHeteroFL's smallest-budget
        clients too); the slimmable model needs ``set_width`` first, several widths several
        losses, adversarial training PGD."""
        if len(task.widths) != 1 or self.cfg.adv.lam != 0.0:
            return False
        return self.dense_for(task.widths[0]) is not None

    def eval_widths(self) -> list[float]:
        return list(self.widths)

    def assemble(
        self, width: float, lam: float | None = None, client: int | None = None
    ) -> nn.Module:
        """The width-``width`` sub-network in eval mode with ``client``'s local BN (``lam``:
        no dual BN in slimmable models, so every lambda gives the same model)."""
        self._require_server()
        w = _match(width, self.widths) or float(width)
        stand_in = self.dense_for(w)
        if stand_in is not None:
            self.load_client_state(stand_in.model, client, prefix_blocks(self.server, w))
            return stand_in.model.eval()
        model = self.eval_model(client)
        model.set_width(w)
        return model

    def deploy(
        self, width: float, lam: float | None = None, client: int | None = None
    ) -> nn.Module:
        """A copy of the width-``width`` prefix sub-network: the dense stand-in where one exists,
        else the slimmable model cut to that prefix (``shrink_to_prefix``)."""
        model = copy.deepcopy(self.assemble(width, lam, client))
        if getattr(model, "slimmable", False):
            shrink_to_prefix(model, float(model.width))
        return model.eval()

    def serving_blocks(self, width: float) -> dict[str, Block]:
        """The width's prefix blocks: serving every width stores the widest model (with tracked
        BN, also each width's private BN)."""
        self._require_server()
        return prefix_blocks(self.server, _match(width, self.widths) or float(width))

    def describe(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for ws in self.client_widths:
            counts[f"{max(ws):g}"] = counts.get(f"{max(ws):g}", 0) + 1
        return {
            **super().describe(),
            "widths": list(self.widths),
            "train_all_widths": self.train_all_widths,
            "weighting": self.weighting,
            "clients_per_budget": counts,
            "dense_stand_ins": sorted(w for w, d in self._dense.items() if d is not None),
        }


@register
class SHeteroFL(HeteroFL):
    """SHeteroFL: each client trains every width up to its budget, losses summed."""

    name = "sheterofl"
    params: ClassVar[dict[str, Any]] = {"weighting": "per_width"}
    param_rules: ClassVar[dict[str, dict[str, Any]]] = {
        "weighting": {
            "description": "per_width (the original's accumulator) or per_client",
            "enum": list(WEIGHTINGS),
        }
    }
    train_all_widths = True
