"""Split-Mix (Hong et al., ICLR 2022): federated training of independent narrow bases.

The server holds ``num_base = max_width / atom`` independent dense networks of width ``atom``. A
client whose budget is width R trains ``R / atom`` of them per round; each base is averaged only
over the clients that trained it (docs/paper.md#split-mix); a model of width r at test time is the
logit-mean of the first ``r / atom`` bases (in-situ size customisation). With 0 < adv.lam < 1
every BN is a dual BN, mixed between clean and robust at test time (in-situ robustness).

Base sampling (docs/paper.md#split-mix): each client's FIRST base comes from one persistent cyclic
sampler (a shuffled order of all bases, walked cyclically, re-shuffled when exhausted) so that even
the smallest clients cover every base over time; its other bases are a fresh random subset of the
rest. Re-shuffles draw from the round's ``plan`` stream, so the sampler's state is just (order,
position) and a resumed run redraws exactly what an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from splitmix.config import RunConfig
from splitmix.data.budgets import parse_widths
from splitmix.errors import ConfigError
from splitmix.fl.adversarial import adversarial_loss
from splitmix.fl.algorithm import FederationInfo, LossFn, Task, Update, ValAccuracy, register
from splitmix.fl.base import ServerModelAlgorithm
from splitmix.fl.blocks import Block
from splitmix.models import norm_kind, set_bn_mode
from splitmix.seeding import rng as seeded_rng
from splitmix.splitmix.ensemble import Ensemble, build_ensemble
from splitmix.splitmix.fused import FusedBases, check_fusable

_EPS = 1e-9


def count_bases(width: float, atom: float) -> int:
    """``int(width / atom)`` as in the original, robust to float noise (0.3 / 0.1 -> 3, not 2)."""
    return int(float(width) / float(atom) + _EPS)


class CyclicShuffleSampler:
    """Walks a shuffled order of ``n`` items cyclically, re-shuffling when it reaches the end.

    Over every full pass each item is drawn exactly once, so the first bases of successive
    clients cover all bases evenly (docs/paper.md#split-mix ``shuffle_sampler``).
    """

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n = int(n)
        self.order = [int(i) for i in rng.permutation(self.n)]
        self.pos = 0

    def next(self, rng: np.random.Generator) -> int:
        if self.pos >= self.n:
            self.order = [int(i) for i in rng.permutation(self.n)]
            self.pos = 0
        item = self.order[self.pos]
        self.pos += 1
        return item

    def state(self) -> dict[str, Any]:
        return {"order": list(self.order), "pos": int(self.pos)}

    def load(self, state: dict[str, Any]) -> None:
        order = [int(i) for i in state["order"]]
        if sorted(order) != list(range(self.n)):
            raise ValueError(f"sampler state is not a permutation of {self.n} bases: {order}")
        self.order, self.pos = order, int(state["pos"])


def _loss_temperature(value: Any, atom: float) -> float | None:
    """``loss_temp``: 'none' -> None (plain loss), 'auto' -> atom, a number -> that number."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        return float(atom)
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not t > 0:
        raise ConfigError(f"loss_temp {value!r} is invalid; use 'none', 'auto' or a number > 0")
    return t


@register
class SplitMix(ServerModelAlgorithm):
    """Split-Mix; ``method_params``: atom, rescale_init, rescale_layer, fused, sort_bases,
    loss_temp (see ``params``)."""

    name = "splitmix"
    params = {
        "atom": 0.125,  # width of one base
        "rescale_init": True,  # docs/paper.md#rescaling
        "rescale_layer": True,  # train-time Scaler (divide by atom)
        "fused": False,  # train a client's bases in one batched pass (beyond the paper)
        "sort_bases": False,  # test: ensembles take the bases of best validation accuracy first
        "loss_temp": "none",  # none | auto | number (ablation, docs/paper.md#split-mix)
    }
    param_rules = {
        "atom": {
            "description": "width of one base, at most the smallest budget width",
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
        },
        "loss_temp": {
            "description": "none, auto or a temperature > 0",
            "oneOf": [{"enum": [None, "none", "auto"]}, {"type": "number", "exclusiveMinimum": 0}],
        },
    }

    def __init__(self, cfg: RunConfig, info: FederationInfo) -> None:
        super().__init__(cfg, info)
        self.atom = float(self.p["atom"])
        if not 0.0 < self.atom <= 1.0:
            raise ConfigError(f"splitmix atom {self.p['atom']!r} must lie in (0, 1], e.g. 0.125")
        widths = parse_widths(cfg.budgets)
        self.widths = sorted(set(widths))
        if self.atom > self.widths[0] + _EPS:
            raise ConfigError(
                f"splitmix atom {self.atom:g} exceeds the smallest budget width {self.widths[0]:g} "
                f"of budgets {cfg.budgets!r}; use atom <= {self.widths[0]:g}"
            )
        self.num_base = count_bases(self.widths[-1], self.atom)
        self.client_bases = [count_bases(b, self.atom) for b in np.asarray(info.budgets)]
        bad = [k for k, n in enumerate(self.client_bases) if not 1 <= n <= self.num_base]
        if bad:
            k = bad[0]
            raise ConfigError(
                f"client {k} has budget {float(info.budgets[k]):g}, outside [atom, max width] = "
                f"[{self.atom:g}, {self.widths[-1]:g}] of budgets {cfg.budgets!r}"
            )
        lam = float(cfg.adv.lam)
        self.dual = 0.0 < lam < 1.0  # docs/paper.md#dual-bn: dual BN iff 0 < lambda < 1
        self.adv = lam > 0.0
        self.norm = norm_kind(cfg.bn, self.dual)
        self.temp = _loss_temperature(self.p["loss_temp"], self.atom)
        self.fused = bool(self.p["fused"])
        if self.fused:
            check_fusable(info.arch, lam)
        self.base_order = list(range(self.num_base))
        self.sampler = CyclicShuffleSampler(
            self.num_base, seeded_rng(cfg.seed, "splitmix/first-base")
        )

    # ---- model ----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_ensemble(
            self.info.arch,
            atom=self.atom,
            max_width=self.num_base * self.atom,
            norm=self.norm,
            rescale_init=bool(self.p["rescale_init"]),
            rescale_layer=bool(self.p["rescale_layer"]),
            num_classes=self.info.num_classes,
            input_size=int(self.info.input_shape[-1]),
        )

    def _set_server(self, model: nn.Module) -> None:
        super()._set_server(model)
        assert isinstance(model, Ensemble)
        # server-state keys of each base, in state order (what a client exchanges for that base)
        self._base_keys: list[list[str]] = []
        for s in range(self.num_base):
            prefix = model.base_prefix(s)
            self._base_keys.append([k for k in self._server_state if k.startswith(prefix)])

    # ---- the round ------------------------------------------------------------------------------
    def sample_bases(self, client: int, rng: np.random.Generator) -> tuple[int, ...]:
        """First base from the persistent cyclic sampler, the rest a random distinct subset."""
        n = self.client_bases[client]
        first = self.sampler.next(rng)
        if n == 1:
            return (first,)
        others = np.array([b for b in range(self.num_base) if b != first])
        rest = rng.permutation(others)[: n - 1]
        return (first, *(int(b) for b in rest))

    def plan(self, round_idx: int, clients: list[int], rng: np.random.Generator) -> list[Task]:
        return [Task(client=int(c), bases=self.sample_bases(int(c), rng)) for c in clients]

    def exchange_blocks(self, task: Task) -> dict[str, Block | None]:
        return {key: None for s in task.bases for key in self._base_keys[s]}

    def _selected(self, task: Task) -> list[nn.Module]:
        running = self.running_model(task)
        assert isinstance(running, Ensemble)
        return [running.bases[s] for s in task.bases]

    def download(self, task: Task) -> nn.Module:
        """Only the task's bases, in sampled order: a ModuleList, or one FusedBases if fused."""
        super().download(task)  # loads the bases' server (+ local) tensors into the running copy
        bases = self._selected(task)
        if self.fused:
            return FusedBases(bases).train()
        return nn.ModuleList(bases)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        if self.temp is None:
            return loss_fn(logits, y)
        return loss_fn(logits / self.temp, y) * self.temp

    def train_step(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> float:
        """Each base: its own loss on the batch, backward (gradients accumulate); summed loss.

        With adversarial training each base's loss is (1-lam) CE(clean BN, x) + lam CE(noise BN,
        x_adv), x_adv crafted by PGD against that single base's noise path
        (docs/paper.md#adversarial, #pitfalls). Bases run in sampled order, which fixes the order
        PGD random starts are drawn in.
        """
        if isinstance(model, FusedBases):
            out = model(x)  # (B, k, classes)
            loss = sum(self._loss(out[:, j], y, loss_fn) for j in range(model.k))
            assert isinstance(loss, torch.Tensor)
            loss.backward()
            return float(loss.item())
        if not isinstance(model, nn.ModuleList) or len(model) != len(task.bases):
            raise ValueError("splitmix.train_step expects the module returned by download(task)")
        total = 0.0
        for base in model:
            if self.adv:
                loss = adversarial_loss(
                    base, x, y, self.cfg.adv, lambda o, t: self._loss(o, t, loss_fn)
                )
            else:
                loss = self._loss(base(x), y, loss_fn)
            loss.backward()
            total += float(loss.item())
        return total

    def upload(self, task: Task, model: nn.Module) -> Update:
        """Every non-local tensor of each trained base (keys ``bases.<s>.*``)."""
        if isinstance(model, FusedBases):
            model.write_back(self._selected(task))
        return super().upload(task, self.running_model(task))

    # ---- evaluation -----------------------------------------------------------------------------
    def eval_widths(self) -> list[float]:
        return list(self.widths)

    def bases_for(self, width: float) -> list[int]:
        """Base indices of the model of ``width``: the first int(width/atom) of ``base_order``."""
        n = count_bases(width, self.atom)
        if not 1 <= n <= self.num_base:
            raise ConfigError(
                f"width {width:g} needs {n} bases of width {self.atom:g}; this Split-Mix model "
                f"has {self.num_base} (widths {self.atom:g} .. {self.num_base * self.atom:g})"
            )
        return self.base_order[:n]

    def assemble_bases(
        self, idxs: Sequence[int], lam: float | None = None, client: int | None = None
    ) -> Ensemble:
        """Eval-mode logit-mean of bases ``idxs`` with ``client``'s local tensors; dual BN mixed
        by ``lam`` (None = clean BN). Shares the persistent eval model (see ``eval_model``)."""
        full = self.eval_model(client)
        assert isinstance(full, Ensemble)
        ens = full.select([int(i) for i in idxs])
        ens.eval()
        if self.dual:
            set_bn_mode(ens, 0.0 if lam is None else float(lam))
        return ens

    def assemble(
        self, width: float, lam: float | None = None, client: int | None = None
    ) -> nn.Module:
        return self.assemble_bases(self.bases_for(width), lam, client)

    def deploy_widths(self) -> list[float]:
        """Every multiple of the atom up to the widest model: the ensemble of the first k bases
        is a model of width k * atom, validated or not (in-situ size customisation)."""
        return [k * self.atom for k in range(1, self.num_base + 1)]

    def serving_blocks(self, width: float) -> dict[str, Block | None]:
        """The whole tensors of the width's bases: serving every width stores each base once."""
        return {key: None for s in self.bases_for(width) for key in self._base_keys[s]}

    def prepare_evaluation(self, val_accuracy: ValAccuracy) -> None:
        """``sort_bases``: order the bases by their own mean validation accuracy over clients
        (docs/paper.md#split-mix, test), so ensembles take the best bases first."""
        if not self.p["sort_bases"]:
            return
        lam = 0.0 if self.dual else None
        accs = [
            val_accuracy(lambda k, i=i: self.assemble_bases([i], lam, k))
            for i in range(self.num_base)
        ]
        self.sort_bases_by(accs)

    def inference_model(self, model: nn.Module) -> nn.Module:
        """An ensemble of several bases runs as one grouped network (``inference``)."""
        from splitmix.splitmix.inference import ensemble_inference_model

        return ensemble_inference_model(model)

    def sort_bases_by(self, val_acc_per_base: Sequence[float]) -> list[int]:
        """Order bases by descending validation accuracy (ties: lower index first) for
        ``sort_bases``; ``assemble`` then ensembles the best bases first. Returns the order."""
        acc = [float(a) for a in val_acc_per_base]
        if len(acc) != self.num_base:
            raise ValueError(f"need one accuracy per base ({self.num_base}), got {len(acc)}")
        self.base_order = sorted(range(self.num_base), key=lambda i: -acc[i])
        return list(self.base_order)

    # ---- checkpointing --------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state(), "base_order": list(self.base_order)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "sampler" in state:
            self.sampler.load(state["sampler"])
        if "base_order" in state:
            order = [int(i) for i in state["base_order"]]
            if sorted(order) != list(range(self.num_base)):
                raise ValueError(f"base_order is not a permutation of {self.num_base}: {order}")
            self.base_order = order

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            {
                "num_base": self.num_base,
                "atom": self.atom,
                "bases_per_budget": {f"{w:g}": count_bases(w, self.atom) for w in self.widths},
                "dual_bn": self.dual,
                "norm": self.norm,
                "fused": self.fused,
                "sort_bases": bool(self.p["sort_bases"]),
                "loss_temp": self.p["loss_temp"],
            }
        )
        return out
