"""The one interface every federated method implements, and the registry of methods by name.

The engine owns the order of a round (sample clients -> plan -> for each client: download, local
steps, upload -> aggregate -> validate) and knows no method by name. A method answers a few verbs,
in the spirit of Flower's ``Strategy``, plus the one this field needs: ``assemble`` a model of a
requested width (and dual-BN mixing lambda) for evaluation.

Contract of the verbs, in the order the engine calls them each round:

``init_global(generator)``
    Build the global (server) model(s) once; ``generator`` seeds parameter init.
``plan(round, clients, rng)``
    Say what each sampled client trains this round: a ``Task`` with widths (HeteroFL/SHeteroFL/
    FedAvg) or base indices (Split-Mix). ``rng`` is this round's stream; any persistent sampler
    state (e.g. Split-Mix's cyclic base sampler) lives in the method and is checkpointed by
    ``extra_state``.
``download(task)``
    Return the module the client trains, holding the server's tensors plus the client's local
    (never averaged) tensors, in train mode. Only the parameters that will be trained should
    require grad so the engine's optimizer touches exactly those.
``train_step(model, task, x, y, loss_fn)``
    Forward and backward for ONE batch (all widths/bases of the task, gradients summed); return
    the loss value. The engine zeroes gradients before and takes one optimizer step after.
``upload(task, model)``
    The tensors that go up, as an ``Update`` (keys of the global state, with the prefix block
    they cover when they are slices). Local tensors are kept client-side, not uploaded.
``begin_aggregate(round)``, ``accumulate(task, update, weight)`` per client, ``end_aggregate()``
    Merge the round's uploads into the server state, one upload at a time as it arrives: the
    server holds the global state, its running sums and the one update being folded, never the
    whole round (100 full-width PreResNet-18 updates are 4.5 GB). ``weight`` is the client's
    aggregation weight. ``ServerModelAlgorithm`` folds into ``fl.aggregate.MaskedAverage`` (the
    masked weighted average; entries nobody trained keep their value).
``aggregate(updates)``
    The same merge given the round's ``(task, update, weight)`` triples as one list. A method
    implements EITHER form: the defaults of each are written in terms of the other. A method
    (or a subclass of a streaming method) that overrides only ``aggregate`` is fed by
    ``RoundMerge`` through the default verbs, which buffer the round and call ``aggregate`` once.
``eval_widths()`` / ``assemble(width, lam, client)``
    The widths validated every round, and an eval-mode model of width ``width`` (dual BN mixed by
    ``lam``) carrying ``client``'s local tensors. A method whose sizes are not widths (DepthFL's
    depths) labels each size by the budget width it serves, so tables place it beside the others.

Optional hooks, declared below with defaults; generic code calls nothing else:
``download_bytes(task, model)`` (bytes sent), ``prepare_evaluation(val_accuracy)`` (choices made
on validation before testing, e.g. Split-Mix's base order), ``inference_model(model)`` (a faster
equivalent module for evaluation), ``batchable(task)`` (the task's step is plain, so the engine
may train it batched with others, ``splitmix.fl.batched``), the class attribute
``one_run_per_width`` (the report's capability flag), and the three verbs of in-situ
customisation after training (``splitmix.deploy``, docs/deploy.md): ``deploy_widths()`` (every
width a trained run offers), ``deploy(width, lam, client)`` (a standalone module of that width)
and ``storage_nbytes(widths)`` (bytes stored to serve all those widths). The registry lookup
lives above this package, in ``splitmix.methods``, so that ``fl/`` never imports a method.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from splitmix.config import RunConfig
from splitmix.data.clients import Federation
from splitmix.errors import ConfigError
from splitmix.models import default_arch
from splitmix.models.fast import inference_model


@dataclass(frozen=True)
class FederationInfo:
    """What a method may know about the federation (never the data itself)."""

    num_clients: int
    budgets: np.ndarray  # max width per client, e.g. 0.125 .. 1.0
    weights: np.ndarray  # client weights n_k / sum n_j (post-split train sizes)
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    arch: str  # model family: digit | alexnet | preresnet18
    client_domains: tuple[str, ...] = ()


def federation_info(cfg: RunConfig, fed: Federation) -> FederationInfo:
    """What a method of ``cfg`` is told of ``fed``: sizes, budgets, weights and the model family
    (the dataset's default architecture unless ``cfg.arch`` names one)."""
    return FederationInfo(
        num_clients=len(fed.clients),
        budgets=fed.budgets,
        weights=fed.weights,
        num_classes=fed.num_classes,
        input_shape=tuple(fed.input_shape),
        arch=cfg.arch if cfg.arch is not None else default_arch(cfg.dataset),
        client_domains=tuple(c.domain for c in fed.clients),
    )


@dataclass(frozen=True)
class Task:
    """What one client trains in one round.

    ``widths`` and ``bases`` are the common vocabularies (sub-network widths; indices of
    independent bases); a method that needs anything else (a window offset, a depth, a random
    channel subset) puts it in ``payload``, which only that method reads. ``round`` is the round
    index (the engine sets it on every task ``plan`` returns), so ``download``/``upload`` may
    depend on it, as FedRolex's rolling window does.
    """

    client: int
    widths: tuple[float, ...] = ()
    bases: tuple[int, ...] = ()
    round: int = 0
    payload: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Update:
    """Tensors a client sends to the server.

    ``tensors[key]`` is what goes over the wire; ``blocks[key]`` (optional) is the block of the
    global tensor it covers (``splitmix.fl.blocks``: per dimension a slice, as HeteroFL's top-left
    block, or a set of indices, as FedRolex's wrapping window). Absent means the whole tensor.

    ``masks[key]`` (optional, instead of a block) is a bool tensor of the global tensor's shape
    naming any set of elements the upload covers (an importance mask, say): ``tensors[key]``
    then holds exactly those elements, in row-major order (``t[mask]``), and the mask travels as
    one bit per element.
    """

    tensors: dict[str, torch.Tensor]
    blocks: dict[str, tuple[slice | torch.Tensor, ...]] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        values = sum(t.numel() * t.element_size() for t in self.tensors.values())
        return values + sum(mask_nbytes(m) for m in self.masks.values())


def mask_nbytes(mask: torch.Tensor) -> int:
    """Bytes of an element mask on the wire: one bit per element."""
    return (mask.numel() + 7) // 8


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``val_accuracy(build)``: mean validation accuracy over clients of ``build(client)`` models.
ValAccuracy = Callable[[Callable[[int | None], nn.Module]], float]


class Algorithm(ABC):
    """Base class of every federated method. Subclasses register with ``@register``."""

    name: ClassVar[str] = ""
    #: method_params keys this algorithm accepts, with their defaults.
    params: ClassVar[dict[str, Any]] = {}
    #: JSON-schema rules of some params' values (``{"atom": {"type": "number", "maximum": 1}}``),
    #: checked with every config before any job starts; keys and types already follow ``params``.
    param_rules: ClassVar[dict[str, dict[str, Any]]] = {}
    #: A run trains one width; each width is its own run (FedAvg). Recorded in run.json.
    one_run_per_width: ClassVar[bool] = False

    @classmethod
    def check_config(cls, cfg: RunConfig) -> str | None:
        """What is wrong with ``cfg``'s method parameters that no per-value rule can see (a list
        that needs one entry per budget width, ...), as one phrase; None when nothing is. Called
        with the config check, before any job starts, so it must not build anything."""
        del cfg
        return None

    @classmethod
    def resolved_params(cls, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` method parameters over the declared defaults (``params``): what a run of
        this method uses, recorded in full in run.json and hashed, so that a changed default is a
        changed run. Applying it again changes nothing."""
        return {**cls.params, **given}

    def __init__(self, cfg: RunConfig, info: FederationInfo) -> None:
        unknown = set(cfg.method_params) - set(self.params)
        if unknown:
            raise ConfigError(
                f"method {cfg.method!r} (algorithm {self.name!r}) got unknown parameter(s) "
                f"{', '.join(sorted(unknown))}; allowed: {', '.join(sorted(self.params)) or 'none'}"
            )
        if type(self).aggregate is Algorithm.aggregate and not streams(type(self)):
            # each default is written in terms of the other: with neither overridden they
            # would call each other forever
            raise TypeError(
                f"{type(self).__qualname__} must override aggregate(updates) or the streaming "
                "verbs accumulate() and end_aggregate()"
            )
        self.cfg = cfg
        self.info = info
        self.p: dict[str, Any] = self.resolved_params(cfg.method_params)

    # ---- the verbs -------------------------------------------------------------------------
    @abstractmethod
    def init_global(self, generator: torch.Generator) -> None: ...

    @abstractmethod
    def plan(self, round_idx: int, clients: list[int], rng: np.random.Generator) -> list[Task]: ...

    @abstractmethod
    def download(self, task: Task) -> nn.Module: ...

    @abstractmethod
    def train_step(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> float: ...

    @abstractmethod
    def upload(self, task: Task, model: nn.Module) -> Update: ...

    # ---- aggregation: streaming verbs, or one list (see the module docstring) -----------------
    def begin_aggregate(self, round_idx: int | None = None) -> None:
        """Start merging a round (``round_idx``; None outside the engine). The default starts a
        buffer for a method that merges lists (only ``aggregate`` overridden)."""
        del round_idx
        self._pending: list[tuple[Task, Update, float]] | None = []

    def accumulate(self, task: Task, update: Update, weight: float) -> None:
        """Fold one client's upload (client weight ``weight``) into the round's merge. The
        default buffers it for ``aggregate``; a streaming method folds it into running sums and
        keeps no reference to ``update``."""
        pending = getattr(self, "_pending", None)
        if pending is None:
            raise RuntimeError(f"{self.name}: accumulate() called before begin_aggregate()")
        pending.append((task, update, weight))

    def end_aggregate(self) -> None:
        """Write the round's merge into the server state. The default hands the buffer to
        ``aggregate``."""
        pending = getattr(self, "_pending", None)
        if pending is None:
            raise RuntimeError(f"{self.name}: end_aggregate() called before begin_aggregate()")
        self._pending = None
        self.aggregate(pending)

    def aggregate(self, updates: list[tuple[Task, Update, float]]) -> None:
        """Merge a whole round given as a list. The default streams it through the verbs, so a
        streaming method answers callers that hold a list (tests, tools) with the same result."""
        self.begin_aggregate(None)
        for task, update, weight in updates:
            self.accumulate(task, update, weight)
        self.end_aggregate()

    @abstractmethod
    def eval_widths(self) -> list[float]: ...

    @abstractmethod
    def assemble(
        self, width: float, lam: float | None = None, client: int | None = None
    ) -> nn.Module: ...

    # ---- checkpointing -----------------------------------------------------------------------
    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: server tensors, local tensors, sampler state."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def describe(self) -> dict[str, Any]:
        """Facts recorded in the run record (e.g. which clients a width's budget violates)."""
        return {}

    # ---- optional hooks: generic code calls these, a method overrides what it needs ----------
    def download_bytes(self, task: Task, model: nn.Module) -> int:
        """Bytes the server sent ``task``'s client, which received ``model``.

        The default counts the whole state of ``model`` (each storage once). A method whose
        downloaded module holds tensors the server never sent (the client's local BN, bases it
        does not train) counts only what it sent.
        """
        return module_state_nbytes(model)

    def prepare_evaluation(self, val_accuracy: ValAccuracy) -> None:
        """Called once before test evaluation of a finished run, with the best state loaded.

        ``val_accuracy(build)`` is the mean validation accuracy over clients of the models
        ``build(client_index)`` returns (``build(None)`` is asked once when BN is shared). A method
        that picks something by validation (Split-Mix's base order) does it here; the default does
        nothing.
        """
        del val_accuracy

    def batchable(self, task: Task) -> bool:
        """Whether ``task``'s ``train_step`` is exactly ``loss_fn(model(x), y).backward()`` on
        the module ``download`` returned, and nothing else: no draw from torch's RNG, no other
        loss term, no state set on the module, every trainable parameter used by the forward.

        Then the engine may train it together with other tasks whose downloads are the same
        module (``client_batching``, ``splitmix.fl.batched``), with the same mathematics. The
        default, False, keeps every task on the sequential reference loop; adversarial steps,
        several widths or bases per step stay there.
        """
        del task
        return False

    def deploy_widths(self) -> list[float]:
        """Every width a user may ask a trained run for (``splitmix.load_run``, ``export``),
        ascending. The default is ``eval_widths()``; a method whose models come in more sizes
        than it validates (Split-Mix: any multiple of its atom) lists them all."""
        return sorted(float(w) for w in self.eval_widths())

    def deploy(
        self, width: float, lam: float | None = None, client: int | None = None
    ) -> nn.Module:
        """A standalone eval-mode module computing the model of ``width`` (dual BN mixed by
        ``lam``) with ``client``'s local tensors: it shares no tensor with the method and holds
        only the tensors that model uses, so it can be exported, timed and stored on its own.

        The default copies what ``assemble`` returns, which suits a method whose assembled
        model already holds only its width's tensors (a dense model, a subset of bases, a
        truncated depth). A method whose assembled model carries more (a slimmable model run at
        a prefix) cuts it down here.
        """
        return copy.deepcopy(self.assemble(width, lam, client)).eval()

    def storage_nbytes(self, widths: list[float]) -> int | None:
        """Bytes of tensors a server (or a device) must store to deploy every width of
        ``widths``: each tensor element that any of those models uses, counted once. None when
        the method cannot say (the default); ``ServerModelAlgorithm`` counts it from
        ``serving_blocks``."""
        del widths
        return None

    def inference_model(self, model: nn.Module) -> nn.Module:
        """An equivalent, faster module for evaluation and attacks on the eval-mode ``model``
        ``assemble`` returned (default: the generic channels-last conversion). A method whose
        models have exploitable structure (Split-Mix's ensembles fuse into one grouped pass)
        returns its own; the numbers must stay those of ``model`` up to float summation order."""
        return inference_model(model)


def _defined_by(cls: type, name: str) -> type:
    """The most derived class of ``cls``'s MRO that defines attribute ``name`` itself."""
    return next(c for c in cls.__mro__ if name in c.__dict__)


def streams(cls: type[Algorithm]) -> bool:
    """Whether ``cls`` merges by its streaming verbs rather than by ``aggregate(list)``.

    True when ``accumulate`` and ``end_aggregate`` are overridden (below ``Algorithm``) no higher
    in the class tree than ``aggregate``: a subclass that overrides ``aggregate`` under a
    streaming base (say, to re-weight the list, then call ``super().aggregate``) merges lists,
    and must see its override called.
    """
    mro = cls.__mro__
    fold, end = _defined_by(cls, "accumulate"), _defined_by(cls, "end_aggregate")
    if fold is Algorithm or end is Algorithm:
        return False
    return mro.index(_defined_by(cls, "aggregate")) >= max(mro.index(fold), mro.index(end))


class RoundMerge:
    """How the engine feeds one round's uploads to a method, one at a time.

    A streaming method gets ``begin_aggregate``/``accumulate``/``end_aggregate`` directly, so the
    caller can drop each update right after ``add``. A method that merges lists (see ``streams``)
    gets the base class's buffering verbs, which end in one call of its own ``aggregate``: it
    holds the round as before, and keeps working unchanged.
    """

    def __init__(self, algorithm: Algorithm, round_idx: int) -> None:
        self.algorithm = algorithm
        self._verbs: type[Algorithm] = type(algorithm) if streams(type(algorithm)) else Algorithm
        self._verbs.begin_aggregate(algorithm, round_idx)

    def add(self, task: Task, update: Update, weight: float) -> None:
        self._verbs.accumulate(self.algorithm, task, update, weight)

    def finish(self) -> None:
        self._verbs.end_aggregate(self.algorithm)


_REGISTRY: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make ``cls`` available by ``cls.name`` in configs (``splitmix.methods``
    finds the modules that hold such classes and looks names up)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} must set a non-empty class attribute 'name'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"algorithm name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Algorithm]]:
    """The classes registered so far, by name (a copy)."""
    return dict(_REGISTRY)


def module_state_nbytes(module: nn.Module) -> int:
    """Bytes of a module's state tensors (parameters and buffers), each storage counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in module.state_dict(keep_vars=True).values():
        key = (t.data_ptr(), t.numel())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total
